"""The in-memory Store: the whole revisioned key space in a dict plus a sorted key list, and a bounded event history
for watch replay and reads at older revisions.

It is the test backend, and (with a Journal plugged in) the live state of the SQLite backend, so compare-and-swap,
listing and watch fan-out are written once. Everything runs on the event loop without awaiting between a check and
the write it guards, which is what makes compare-and-swap atomic here.

Behaviour every user of this module should know:

- Revisions: an empty store is at revision 1 (as etcd is); the first write gets revision 2 and every write after
  it the next integer, across all keys. ``current_revision()`` is the revision of the latest write.
- History: the newest ``history_limit`` changes (10 000 by default) are kept, less what ``compact(revision)``
  dropped (changes up to and including ``revision``). ``watch`` and ``list`` accept any revision whose later
  changes are all still kept; older ones raise ExpiredError. ``list`` at an older revision rebuilds that snapshot
  from the history (so paginated lists stay on one revision); ``list`` at a revision newer than the current one
  raises UnavailableError (the apiserver's "too large resource version": the caller may retry).
- Watch: ``watch(prefix, 0)`` starts at the revision current when ``watch()`` is *called*, not when iteration
  starts. Each watcher has its own queue, so a slow consumer never blocks a writer; a watcher with more than
  ``watch_backlog`` undelivered events (10 000 by default) is ended with ExpiredError, exactly as if its position
  had been compacted: the client relists and watches again, as it would after a 410 Gone.
- With a journal, a write returns and its event is published only once the journal says it is durable, and reads
  only ever see durable writes (so no client can see a revision that a crash could take back and reuse).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Protocol

from controlplane.storage.interface import (
    ConflictError,
    ExpiredError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    ListResult,
    UnavailableError,
    WatchEvent,
)

FIRST_REVISION = 1  # the revision of an empty store; the first write gets FIRST_REVISION + 1
DEFAULT_HISTORY_LIMIT = 10_000
DEFAULT_WATCH_BACKLOG = 10_000


@dataclass(frozen=True, slots=True)
class Change:
    """One write: the event watchers see, plus the key's full state after and before it (a journal persists these,
    and ``list`` at an older revision undoes them)."""

    event: WatchEvent
    kv: KeyValue | None  # the key after the change; None after a delete
    prev: KeyValue | None  # the key before the change; None before a create

    @property
    def revision(self) -> int:
        return self.event.revision

    @property
    def key(self) -> str:
        return self.event.key


class Journal(Protocol):
    """Durable storage behind a MemoryStore (SqliteLog is the one we have).

    ``persist`` is deliberately synchronous and returns a future instead of being a coroutine: the store hands over
    each change in the same step that decided it, so the journal receives changes in revision order, and a caller
    that gets cancelled while waiting cannot withdraw a change that is already in the index.
    """

    def persist(self, change: Change) -> asyncio.Future[None]:
        """Queue ``change``; the future resolves once it is durable, or fails with UnavailableError. Changes become
        durable in the order they were given, and after one fails every later one fails too."""
        ...

    async def compact(self, revision: int) -> None:
        """Drop what is no longer needed to rebuild the state, up to ``revision``."""
        ...

    async def close(self) -> None:
        """Make every change already given durable, then release the storage."""
        ...


class _Watcher:
    """One watch's queue. The store pushes into it synchronously; only the watch's own iterator awaits it."""

    __slots__ = ("prefix", "last", "backlog", "events", "waiter", "ended", "error")

    def __init__(self, prefix: str, after: int, backlog: int) -> None:
        self.prefix = prefix
        self.last = after  # the newest revision queued; anything at or below it is a duplicate
        self.backlog = backlog
        self.events: deque[WatchEvent] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False
        self.error: ExpiredError | None = None

    def push(self, event: WatchEvent) -> bool:
        """Queue ``event``; False if the watcher just fell too far behind and has been ended."""
        if event.revision <= self.last or self.ended:
            return True
        if len(self.events) >= self.backlog:
            # The consumer is `backlog` events behind: treat its position as compacted so it relists.
            position = self.events[0].revision - 1 if self.events else self.last
            self.end(ExpiredError(position, event.revision))
            return False
        self.last = event.revision
        self.events.append(event)
        self._wake()
        return True

    def end(self, error: ExpiredError | None = None) -> None:
        self.ended = True
        if error is not None:
            self.error = error
            self.events.clear()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> WatchEvent | None:
        """The next event; None once the watch has ended cleanly (queued events are still delivered first)."""
        while not self.events:
            if self.error is not None:
                raise self.error
            if self.ended:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.events.popleft()


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (None: no bound)."""
    while prefix and prefix[-1] == "\U0010ffff":
        prefix = prefix[:-1]
    if not prefix:
        return None
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class MemoryStore:
    """A Store held in memory; optionally made durable by a Journal (see the module docstring)."""

    def __init__(
        self,
        *,
        journal: Journal | None = None,
        items: Iterable[KeyValue] = (),
        revision: int = FIRST_REVISION,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        watch_backlog: int = DEFAULT_WATCH_BACKLOG,
    ) -> None:
        """``items`` and ``revision`` seed the state (a journal's recovered contents); the history starts empty at
        ``revision``, so watches from before it raise ExpiredError."""
        self._data: dict[str, KeyValue] = {kv.key: kv for kv in items}
        self._keys: list[str] = sorted(self._data)  # kept sorted for prefix ranges and pagination
        self._revision = revision  # the newest durable, published revision: what readers see
        self._applied = revision  # the newest revision handed out (ahead of _revision only while a journal writes)
        self._compacted = revision  # events after this revision are all in _history
        self._history: deque[Change] = deque()
        self._history_limit = history_limit
        self._watch_backlog = watch_backlog
        # Watchers grouped by exact prefix, plus how many groups have each prefix length: an event is matched with
        # one dict lookup per distinct length rather than one comparison per watcher.
        self._watchers: dict[str, set[_Watcher]] = {}
        self._prefix_lengths: dict[int, int] = {}
        self._journal = journal
        # Writes applied but not yet durable: the newest state of each such key, and the order they must publish in.
        self._pending: dict[str, tuple[KeyValue | None, asyncio.Future[None]]] = {}
        self._inflight: deque[tuple[Change, asyncio.Future[None]]] = deque()
        self._closed = False
        self._failure: UnavailableError | None = None

    # -- writes -------------------------------------------------------------------------------------------------

    async def create(self, key: str, value: bytes) -> KeyValue:
        self._check_open(writing=True)
        if self._latest(key) is not None:
            raise KeyExistsError(key)
        revision = self._next_revision()
        kv = KeyValue(key, value, revision, revision)
        await self._commit(Change(WatchEvent("ADDED", key, value, revision), kv, None))
        return kv

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        self._check_open(writing=True)
        prev = self._latest(key)
        if prev is None:
            raise KeyNotFoundError(key)
        if prev.revision != expected_revision:
            raise ConflictError(key, expected_revision, prev.revision)
        revision = self._next_revision()
        kv = KeyValue(key, value, revision, prev.create_revision)
        await self._commit(Change(WatchEvent("MODIFIED", key, value, revision, prev.value), kv, prev))
        return kv

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        self._check_open(writing=True)
        prev = self._latest(key)
        if prev is None:
            raise KeyNotFoundError(key)
        if expected_revision is not None and prev.revision != expected_revision:
            raise ConflictError(key, expected_revision, prev.revision)
        revision = self._next_revision()
        await self._commit(Change(WatchEvent("DELETED", key, prev.value, revision, prev.value), None, prev))
        return KeyValue(key, prev.value, revision, prev.create_revision)

    def _latest(self, key: str) -> KeyValue | None:
        """The key as writes must see it: including writes still on their way to the journal."""
        pending = self._pending.get(key)
        return pending[0] if pending is not None else self._data.get(key)

    def _next_revision(self) -> int:
        self._applied += 1
        return self._applied

    async def _commit(self, change: Change) -> None:
        if self._journal is None:
            self._publish(change)
            return
        durable = self._journal.persist(change)
        self._pending[change.key] = (change.kv, durable)
        self._inflight.append((change, durable))
        durable.add_done_callback(self._publish_durable)
        try:
            # shield: a cancelled caller must not cancel a write that later writes may already build on.
            await asyncio.shield(durable)
        finally:
            self._publish_durable()  # so the event is out before we return, whatever order callbacks ran in

    def _publish_durable(self, _: object = None) -> None:
        """Publish, in revision order, every write at the head of the queue whose journal entry has settled."""
        while self._inflight and self._inflight[0][1].done():
            change, durable = self._inflight.popleft()
            pending = self._pending.get(change.key)
            if pending is not None and pending[1] is durable:
                del self._pending[change.key]
            error = durable.exception()
            if error is None:
                self._publish(change)
            elif self._failure is None:
                # Later writes were decided on top of this one, and the journal fails them too; the store stays
                # readable (at the last durable revision) but takes no more writes.
                self._failure = error if isinstance(error, UnavailableError) else UnavailableError(str(error))

    def _publish(self, change: Change) -> None:
        key = change.key
        if change.kv is None:
            del self._data[key]
            del self._keys[bisect.bisect_left(self._keys, key)]
        else:
            if key not in self._data:
                bisect.insort(self._keys, key)
            self._data[key] = change.kv
        self._revision = change.revision
        self._history.append(change)
        if len(self._history) > self._history_limit:
            self._compacted = self._history.popleft().revision

        event = change.event
        fallen_behind: list[_Watcher] = []
        for length in self._prefix_lengths:
            group = self._watchers.get(key[:length])
            if group:
                fallen_behind.extend(w for w in group if not w.push(event))
        for watcher in fallen_behind:
            self._remove_watcher(watcher)

    # -- reads --------------------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue:
        self._check_open()
        pending = self._pending.get(key)
        if pending is not None:
            # A write to this key is on its way to the journal. Reading the older value would make a
            # read-modify-write loop (guaranteed_update) conflict on the newer revision again and again without
            # ever yielding, so wait for that write to settle first.
            await asyncio.wait((pending[1],))
        kv = self._data.get(key)
        if kv is None:
            raise KeyNotFoundError(key)
        return kv

    async def list(
        self, prefix: str, *, limit: int = 0, start_after: str | None = None, revision: int = 0
    ) -> ListResult:
        self._check_open()
        if revision and revision != self._revision:
            if revision > self._revision:
                raise UnavailableError(f"revision {revision} is newer than the current revision {self._revision}")
            if revision < self._compacted:
                raise ExpiredError(revision, self._compacted)
            return self._list_at(prefix, limit, start_after, revision)

        lo, hi = self._range(prefix)
        start = self._start(lo, hi, start_after)
        end = hi if limit <= 0 else min(hi, start + limit)
        items = [self._data[k] for k in self._keys[start:end]]
        more = end < hi
        return ListResult(items, self._revision, items[-1].key if more else None, hi - end)

    def _list_at(self, prefix: str, limit: int, start_after: str | None, revision: int) -> ListResult:
        """A page of the snapshot at an older ``revision``: the current keys, with every key changed since then
        put back the way it was (so a paginated list stays at one revision while writes go on)."""
        past: dict[str, KeyValue | None] = {}
        for change in self._changes_after(revision):
            past.setdefault(change.key, change.prev)  # the first change after `revision` knows the old state
        lo, hi = self._range(prefix)
        start = self._start(lo, hi, start_after)
        changed = sorted(
            k for k in past if k.startswith(prefix) and (start_after is None or k > start_after)
        )
        total = (
            (hi - start)
            - sum(1 for k in changed if k in self._data)
            + sum(1 for k in changed if past[k] is not None)
        )
        items: list[KeyValue] = []
        previous: str | None = None
        current_keys = (self._keys[i] for i in range(start, hi))
        for key in heapq.merge(current_keys, changed):
            if key == previous:
                continue
            previous = key
            kv = past[key] if key in past else self._data[key]
            if kv is None:
                continue
            if limit > 0 and len(items) == limit:
                break
            items.append(kv)
        remaining = total - len(items)
        return ListResult(items, revision, items[-1].key if remaining else None, remaining)

    def _range(self, prefix: str) -> tuple[int, int]:
        """Positions in the sorted key list of the first key under ``prefix`` and of the first key after them."""
        lo = bisect.bisect_left(self._keys, prefix)
        end = _prefix_end(prefix)
        hi = len(self._keys) if end is None else bisect.bisect_left(self._keys, end, lo)
        return lo, hi

    def _start(self, lo: int, hi: int, start_after: str | None) -> int:
        if start_after is None:
            return lo
        return min(hi, max(lo, bisect.bisect_right(self._keys, start_after)))

    async def count(self, prefix: str) -> int:
        self._check_open()
        lo, hi = self._range(prefix)
        return hi - lo

    async def current_revision(self) -> int:
        self._check_open()
        return self._revision

    # -- watch --------------------------------------------------------------------------------------------------

    def watch(self, prefix: str, revision: int = 0) -> AsyncIterator[WatchEvent]:
        # "From now on" is fixed here, at the call, so writes made between watch() and the first iteration are seen.
        return self._watch(prefix, revision or self._revision)

    async def _watch(self, prefix: str, after: int) -> AsyncIterator[WatchEvent]:
        self._check_open()
        if after < self._compacted:
            raise ExpiredError(after, self._compacted)
        watcher = _Watcher(prefix, after, self._watch_backlog)
        # Replay and registration happen with no await in between, so no event can fall between them or arrive
        # twice (the watcher also drops anything at or below the newest revision it holds).
        for change in self._changes_after(after):
            if change.key.startswith(prefix):
                watcher.push(change.event)
        self._add_watcher(watcher)
        try:
            while (event := await watcher.next()) is not None:
                yield event
        finally:
            self._remove_watcher(watcher)

    def _changes_after(self, revision: int) -> list[Change]:
        # Walk back from the newest: watches and paginated lists usually start from a recent revision.
        changes: list[Change] = []
        for change in reversed(self._history):
            if change.revision <= revision:
                break
            changes.append(change)
        changes.reverse()
        return changes

    def _add_watcher(self, watcher: _Watcher) -> None:
        group = self._watchers.setdefault(watcher.prefix, set())
        if not group:
            length = len(watcher.prefix)
            self._prefix_lengths[length] = self._prefix_lengths.get(length, 0) + 1
        group.add(watcher)

    def _remove_watcher(self, watcher: _Watcher) -> None:
        group = self._watchers.get(watcher.prefix)
        if group is None or watcher not in group:
            return
        group.remove(watcher)
        if not group:
            del self._watchers[watcher.prefix]
            length = len(watcher.prefix)
            self._prefix_lengths[length] -= 1
            if not self._prefix_lengths[length]:
                del self._prefix_lengths[length]

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def compact(self, revision: int) -> None:
        self._check_open()
        revision = min(revision, self._revision)  # compacting the future would refuse every watch from now
        while self._history and self._history[0].revision <= revision:
            self._history.popleft()
        self._compacted = max(self._compacted, revision)
        if self._journal is not None:
            await self._journal.compact(revision)

    async def close(self) -> None:
        """Finish the writes in flight, then end every watch (after it has delivered what it holds)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._journal is not None:
                await self._journal.close()
                self._publish_durable()
        finally:
            for group in self._watchers.values():
                for watcher in group:
                    watcher.end()
            self._watchers.clear()
            self._prefix_lengths.clear()

    def _check_open(self, *, writing: bool = False) -> None:
        if self._closed:
            raise UnavailableError("the store is closed")
        if writing and self._failure is not None:
            raise UnavailableError(f"the store takes no more writes after a storage failure: {self._failure}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(revision={self._revision}, keys={len(self._data)})"
