"""The storage contract every backend implements, in the spirit of the apiserver's storage.Interface.

Only the API server talks to a Store. A Store is a revisioned key/value space like etcd v3: every write gets a new
global revision (that revision is the object's ``metadata.resourceVersion``), updates are compare-and-swap, and a
watch replays history from a revision until that revision has been compacted. Values are opaque bytes (the
objects' JSON); the store never looks inside them.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One stored value at one revision."""

    key: str
    value: bytes
    revision: int  # the revision of the last write to this key (etcd's mod_revision)
    create_revision: int = 0


@dataclass(frozen=True, slots=True)
class ListResult:
    items: list[KeyValue]
    revision: int  # the store revision the list was read at
    continue_key: str | None = None  # pass as ``start_after`` to read the next page; None on the last page
    remaining: int = 0  # how many items follow this page (only meaningful when continue_key is set)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to one key.

    For DELETED, ``value`` is the last value the key had and ``revision`` is the revision of the delete.
    ``prev_value`` is the value before this change (None for ADDED).
    """

    type: EventType
    key: str
    value: bytes
    revision: int
    prev_value: bytes | None = None


class StorageError(Exception):
    """Base of every error a Store raises on purpose."""


class KeyNotFoundError(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key not found: {key}")
        self.key = key


class KeyExistsError(StorageError):
    def __init__(self, key: str) -> None:
        super().__init__(f"key exists: {key}")
        self.key = key


class ConflictError(StorageError):
    """A compare-and-swap saw a different revision than the caller expected."""

    def __init__(self, key: str, expected: int, actual: int) -> None:
        super().__init__(f"conflict on {key}: expected revision {expected}, found {actual}")
        self.key = key
        self.expected = expected
        self.actual = actual


class ExpiredError(StorageError):
    """The requested revision has been compacted away (HTTP 410 Gone at the API)."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} has been compacted (oldest available is {compacted + 1})")
        self.requested = requested
        self.compacted = compacted


class UnavailableError(StorageError):
    """The backend cannot be reached right now (HTTP 503 at the API); the caller may retry."""


# try_update receives the current value and returns the new value (or an awaitable of it).
# Returning None means "no change": the update is skipped and the current value is returned.
# Any exception it raises aborts the update and propagates to the caller.
TryUpdate = Callable[[KeyValue], "bytes | None | Awaitable[bytes | None]"]


@runtime_checkable
class Store(Protocol):
    """A revisioned key/value store. All methods are coroutines; none blocks the event loop."""

    async def create(self, key: str, value: bytes) -> KeyValue:
        """Store ``value`` at ``key``; KeyExistsError if the key holds a value."""
        ...

    async def get(self, key: str) -> KeyValue:
        """The current value of ``key``; KeyNotFoundError if there is none."""
        ...

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        """Compare-and-swap: write only if the key's current revision is ``expected_revision``.

        KeyNotFoundError if the key is gone, ConflictError if its revision differs.
        """
        ...

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        """Delete ``key`` and return its last value, with ``revision`` set to the delete's revision.

        With ``expected_revision`` the delete is a compare-and-swap (ConflictError on mismatch).
        """
        ...

    async def list(
        self, prefix: str, *, limit: int = 0, start_after: str | None = None, revision: int = 0
    ) -> ListResult:
        """Keys under ``prefix`` in key order, at one consistent revision.

        ``limit`` 0 means all. ``start_after`` is the continue key of a previous page. ``revision`` 0 means the
        current revision; an older revision reads that snapshot, or ExpiredError if it was compacted (backends
        that keep no history may refuse any revision but the current with ExpiredError).
        """
        ...

    async def count(self, prefix: str) -> int:
        ...

    def watch(self, prefix: str, revision: int = 0) -> AsyncIterator[WatchEvent]:
        """Events for keys under ``prefix`` with revisions greater than ``revision``, in revision order.

        ``revision`` 0 means "from now on". ExpiredError (raised when iteration starts) if ``revision`` has been
        compacted. The iterator runs until the consumer stops iterating (``aclose()``) or the store closes.
        """
        ...

    async def current_revision(self) -> int:
        ...

    async def compact(self, revision: int) -> None:
        """Forget history up to and including ``revision``; later watches from there get ExpiredError."""
        ...

    async def close(self) -> None:
        ...


@runtime_checkable
class GuardedCreate(Protocol):
    """An optional capability of a Store: a create that also checks, in the same atomic step, that another key is
    still at the revision the caller read it at.

    The API server creates an object only in a namespace that exists and is not terminating. With this it reads
    the namespace once, remembers it, and lets every later create check the namespace's revision itself, so a
    steady stream of creates costs one store round trip each instead of two, with no staleness: a namespace that
    changed in between fails the guard and is read again. Backends whose reads are in memory need not offer it.
    """

    async def create_guarded(self, key: str, value: bytes, guard_key: str, guard_revision: int) -> KeyValue:
        """``create(key, value)``, applied only while ``guard_key`` holds a value written at ``guard_revision``.

        KeyExistsError if ``key`` holds a value; otherwise ConflictError with ``key`` = ``guard_key`` (``actual``
        0 if it is gone) if the guard has changed.
        """
        ...


async def guaranteed_update(store: Store, key: str, try_update: TryUpdate, *, max_attempts: int = 0,
                            suggestion: KeyValue | None = None) -> KeyValue:
    """The one way to change an existing value: read, let ``try_update`` compute the new value, compare-and-swap;
    on a conflict read again and retry. ``max_attempts`` 0 retries until it succeeds.

    ``suggestion`` is a value of ``key`` the caller saw recently (upstream's cachedExistingObject): the first
    attempt starts from it instead of reading, which saves a round trip on a remote store when it is still current.
    Only a successful compare-and-swap proves that it was, so an attempt on a suggestion that fails, or that writes
    nothing, is repeated on the value read from the store, and only what happens there is returned or raised."""
    attempt = 0
    current = suggestion
    fresh = current is None
    if current is None:
        current = await store.get(key)
    while True:
        if fresh:
            attempt += 1
        try:
            new_value = try_update(current)
            if inspect.isawaitable(new_value):
                new_value = await new_value
        except Exception:
            if fresh:
                raise
            current, fresh = await store.get(key), True
            continue
        if new_value is None or new_value == current.value:
            if fresh:
                return current
            current, fresh = await store.get(key), True
            continue
        try:
            return await store.update(key, new_value, current.revision)
        except ConflictError:
            if fresh and max_attempts and attempt >= max_attempts:
                raise
            current, fresh = await store.get(key), True
