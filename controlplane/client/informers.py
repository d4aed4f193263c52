"""Informers: a local, always-converging copy of one collection, plus change notifications, from one list + watch.

Controllers read state from an informer's cache instead of asking the API server, and react to its events by
queueing keys. The informer lists (paginated), watches from the list's resourceVersion, and after any failure
(410 Gone, a dropped connection, a server error) backs off, relists and diffs the new list against the cache, so
handlers still see every object's latest state — including deletes that happened while it was not watching.
``SharedInformerFactory`` hands out one informer per collection so several controllers share one watch.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .clock import Clock, RealClock
from .errors import Gone
from .protocol import Selector, selector_string
from .resources import Resource
from .rest import ApiClient
from .watch import ADDED, DELETED, MODIFIED, ResumableWatcher

log = logging.getLogger(__name__)

Obj = dict[str, Any]
AddHandler = Callable[[Obj], "None | Awaitable[None]"]
UpdateHandler = Callable[[Obj, Obj], "None | Awaitable[None]"]
DeleteHandler = Callable[[Obj], "None | Awaitable[None]"]
IndexFunc = Callable[[Obj], "Iterable[str] | str | None"]


def meta_namespace_key(obj: Obj) -> str:
    """``namespace/name``, or ``name`` for a cluster-scoped object: the key controllers queue."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else meta["name"]


def split_key(key: str) -> tuple[str | None, str]:
    """The (namespace, name) of a key; namespace is None for cluster-scoped objects."""
    ns, sep, name = key.partition("/")
    if not sep:
        return None, key
    if not ns or not name or "/" in name:
        raise ValueError(f"malformed key {key!r}")
    return ns, name


def namespace_index(obj: Obj) -> str | None:
    """An index function for ``add_index("namespace", namespace_index)``."""
    return (obj.get("metadata") or {}).get("namespace")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with a cap and jitter, for reconnecting to an API server that is failing."""

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2  # up to this fraction is added, so many informers do not retry in step

    def delay(self, attempt: int) -> float:
        base = min(self.cap, self.initial * self.factor ** min(attempt, 64))
        return base * (1.0 + random.random() * self.jitter)


class _Listener:
    """One handler set with its own queue and task, so a slow handler delays neither the cache nor the others
    (client-go's processorListener).

    The queue is a deque and one future to wake the task: every event of every informer passes through one per
    handler set (a controller manager has a dozen on pods), and an asyncio.Queue's put and get cost several times
    more. Handlers that return nothing run back to back, without a trip through the event loop each."""

    __slots__ = ("handlers", "pending", "task", "_waiter")

    def __init__(self, on_add: AddHandler | None, on_update: UpdateHandler | None, on_delete: DeleteHandler | None):
        self.handlers: dict[str, Callable[..., Any] | None] = {"add": on_add, "update": on_update, "delete": on_delete}
        self.pending: deque[tuple[Callable[..., Any], tuple[Obj, ...]]] = deque()
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def notify(self, kind: str, *args: Obj) -> None:
        handler = self.handlers[kind]
        if handler is not None:
            self.pending.append((handler, args))
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def start(self, name: str) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def _run(self) -> None:
        pending = self.pending
        loop = asyncio.get_running_loop()
        while True:
            if not pending:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
                continue
            handler, args = pending.popleft()
            try:
                result = handler(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except Exception:
                # A handler's bug must not stop the informer or the other handlers.
                log.exception("informer %s handler failed", getattr(handler, "__name__", handler))


class Informer:
    """List + watch one collection into a cache keyed ``namespace/name`` and notify handlers of changes.

    Cached objects are shared, not copied: treat them as read-only (copy before changing one to send an update).
    All methods are for one event loop; reads are consistent between awaits.
    """

    def __init__(
        self,
        client: ApiClient,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        resync_period: float | None = None,
        page_size: int = 500,
        watch_timeout_seconds: int | None = None,
        backoff: Backoff = Backoff(),
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = selector_string(label_selector)
        self.field_selector = selector_string(field_selector)
        self.resync_period = resync_period
        self.page_size = page_size
        self.watch_timeout_seconds = watch_timeout_seconds
        self.backoff = backoff
        self._clock: Clock = clock or RealClock()
        self._cache: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._listeners: builtins.list[_Listener] = []
        self._synced = asyncio.Event()
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._started = False
        self.last_sync_resource_version: str | None = None
        self.relists = 0  # how many lists after the first: a signal for tests and metrics

    # -- handlers and indexes ---------------------------------------------------------------------------------

    def add_handler(
        self,
        on_add: AddHandler | None = None,
        on_update: UpdateHandler | None = None,
        on_delete: DeleteHandler | None = None,
    ) -> None:
        """Register callbacks (plain or async). A handler added late first gets ``on_add`` for every cached
        object, so it starts from the same state as the others."""
        listener = _Listener(on_add, on_update, on_delete)
        self._listeners.append(listener)
        for obj in self._cache.values():
            listener.notify("add", obj)
        if self._started:
            listener.start(f"informer-{self.resource}-handler")

    def add_index(self, name: str, fn: IndexFunc) -> None:
        """Index cached objects by the value(s) ``fn`` returns (a string, several, or None for none).

        Adding the same function under the same name again is a no-op (controllers sharing an informer each ask)."""
        if self._indexers.get(name) is fn:
            return
        self._indexers[name] = fn
        index: dict[str, set[str]] = {}
        self._indices[name] = index
        for key, obj in self._cache.items():
            for value in _index_values(fn, obj):
                index.setdefault(value, set()).add(key)

    def by_index(self, name: str, value: str) -> builtins.list[Obj]:
        return [self._cache[k] for k in self.index_keys(name, value)]

    def index_keys(self, name: str, value: str) -> builtins.list[str]:
        try:
            index = self._indices[name]
        except KeyError:
            raise KeyError(f"no index named {name!r}") from None
        return sorted(index.get(value, ()))

    # -- cache reads ------------------------------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        return self._cache.get(key)

    def get_by_name(self, name: str, namespace: str | None = None) -> Obj | None:
        return self._cache.get(f"{namespace}/{name}" if namespace and self.resource.namespaced else name)

    def list(self) -> builtins.list[Obj]:
        return [*self._cache.values()]

    def keys(self) -> builtins.list[str]:
        return [*self._cache]

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once the first list is in the cache; False if ``timeout`` seconds pass first."""
        try:
            async with asyncio.timeout(timeout):
                await self._synced.wait()
        except TimeoutError:
            return False
        return True

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Launch the list/watch task (and the handler tasks) on the running loop and return at once."""
        if self._started:
            return
        self._started = True
        name = f"informer-{self.resource}"
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            listener.start(f"{name}-handler")
        self._tasks.append(loop.create_task(self._run(), name=name))
        if self.resync_period:
            self._tasks.append(loop.create_task(self._resync_loop(self.resync_period), name=f"{name}-resync"))

    async def stop(self) -> None:
        """Cancel the informer's tasks and wait for them; pending notifications are dropped."""
        tasks = self._tasks + [lst.task for lst in self._listeners if lst.task is not None]
        self._tasks = []
        for lst in self._listeners:
            lst.task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._started = False

    @property
    def running(self) -> bool:
        return self._started

    # -- the reflector ----------------------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            watcher: ResumableWatcher | None = None
            try:
                rv = await self._list_and_replace()
                watcher = ResumableWatcher(
                    self.client,
                    self.resource,
                    self.namespace,
                    resource_version=rv,
                    label_selector=self.label_selector,
                    field_selector=self.field_selector,
                    timeout_seconds=self.watch_timeout_seconds,
                )
                async for event in watcher:
                    failures = 0  # the connection works again: the next failure starts from the short delay
                    self._apply(event.type, event.object)
                    self.last_sync_resource_version = watcher.resource_version
            except Gone as e:
                log.info("watch of %s: %s; relisting", self.resource, e.message or "resourceVersion too old")
            except Exception as e:
                log.warning("list/watch of %s failed: %r; relisting after backoff", self.resource, e)
            finally:
                if watcher is not None:
                    await watcher.aclose()
            # Back off after a 410 too: a server compacting aggressively should not get a relist storm.
            await self._clock.sleep(self.backoff.delay(failures))
            failures += 1

    async def _list_and_replace(self) -> str | None:
        try:
            listing = await self.client.list_all(
                self.resource,
                self.namespace,
                label_selector=self.label_selector,
                field_selector=self.field_selector,
                page_size=self.page_size,
            )
        except Gone:
            # The continue token expired between pages (client-go falls back the same way): one unpaginated list.
            listing = await self.client.list(
                self.resource, self.namespace, label_selector=self.label_selector, field_selector=self.field_selector
            )
        if self._synced.is_set():
            self.relists += 1
        rv = (listing.get("metadata") or {}).get("resourceVersion") or None
        self._replace(listing.get("items") or [])
        self.last_sync_resource_version = rv
        self._synced.set()
        return rv

    def _replace(self, items: builtins.list[Obj]) -> None:
        """Make the cache equal the list, notifying adds, changed objects and tombstone deletes."""
        api_version, kind = self.resource.api_version, self.resource.kind
        fresh: dict[str, Obj] = {}
        for obj in items:
            # List items of built-in kinds come without apiVersion/kind; watch events carry them. Keep the cache
            # uniform so handlers can rely on them.
            if "kind" not in obj:
                obj["kind"] = kind
            if "apiVersion" not in obj:
                obj["apiVersion"] = api_version
            fresh[meta_namespace_key(obj)] = obj
        for key in [k for k in self._cache if k not in fresh]:
            # Deleted while we were not watching: the handler gets the last state we knew.
            self._delete(key, self._cache[key])
        for key, obj in fresh.items():
            old = self._cache.get(key)
            if old is None:
                self._store(key, obj, None)
                self._notify("add", obj)
            elif _rv(old) != _rv(obj):
                self._store(key, obj, old)
                self._notify("update", old, obj)

    def _apply(self, event_type: str, obj: Obj) -> None:
        key = meta_namespace_key(obj)
        if event_type in (ADDED, MODIFIED):
            old = self._cache.get(key)
            self._store(key, obj, old)
            if old is None:
                self._notify("add", obj)
            else:
                self._notify("update", old, obj)
        elif event_type == DELETED:
            old = self._cache.get(key)
            if old is not None:
                self._unindex(key, old)
                del self._cache[key]
            self._notify("delete", obj)
        else:
            log.warning("watch of %s: ignoring event type %r", self.resource, event_type)

    def _store(self, key: str, obj: Obj, old: Obj | None) -> None:
        if old is not None:
            self._unindex(key, old)
        self._cache[key] = obj
        for name, fn in self._indexers.items():
            index = self._indices[name]
            for value in _index_values(fn, obj):
                index.setdefault(value, set()).add(key)

    def _delete(self, key: str, old: Obj) -> None:
        self._unindex(key, old)
        del self._cache[key]
        self._notify("delete", old)

    def _unindex(self, key: str, old: Obj) -> None:
        for name, fn in self._indexers.items():
            index = self._indices[name]
            for value in _index_values(fn, old):
                keys = index.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del index[value]

    def _notify(self, kind: str, *args: Obj) -> None:
        for listener in self._listeners:
            listener.notify(kind, *args)

    async def _resync_loop(self, period: float) -> None:
        # Resync re-delivers the cache, not the server: it lets controllers re-check state they do not watch.
        while True:
            await self._clock.sleep(period)
            if self._synced.is_set():
                for obj in self._cache.values():
                    self._notify("update", obj, obj)


def _rv(obj: Obj) -> str | None:
    return (obj.get("metadata") or {}).get("resourceVersion")


def _index_values(fn: IndexFunc, obj: Obj) -> Iterable[str]:
    values = fn(obj)
    if values is None:
        return ()
    if isinstance(values, str):
        return (values,)
    return values


InformerKey = tuple[Resource, str | None, str | None, str | None]


class SharedInformerFactory:
    """One informer per (resource, namespace, label selector, field selector), shared by every caller asking.

    Ask for informers first, then ``start_all()``; informers asked for later are started by the next call.
    """

    def __init__(
        self,
        client: ApiClient,
        *,
        resync_period: float | None = None,
        watch_timeout_seconds: int | None = None,
        backoff: Backoff = Backoff(),
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.resync_period = resync_period
        self.watch_timeout_seconds = watch_timeout_seconds
        self.backoff = backoff
        self.clock = clock
        self._informers: dict[InformerKey, Informer] = {}

    def informer(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
    ) -> Informer:
        key: InformerKey = (
            resource, namespace or None, selector_string(label_selector), selector_string(field_selector)
        )
        informer = self._informers.get(key)
        if informer is None:
            informer = Informer(
                self.client,
                resource,
                key[1],
                label_selector=key[2],
                field_selector=key[3],
                resync_period=self.resync_period,
                watch_timeout_seconds=self.watch_timeout_seconds,
                backoff=self.backoff,
                clock=self.clock,
            )
            self._informers[key] = informer
        return informer

    @property
    def informers(self) -> list[Informer]:
        return [*self._informers.values()]

    def start_all(self) -> None:
        for informer in self._informers.values():
            informer.start()

    async def wait_for_sync(self, timeout: float | None = None) -> bool:
        """True once every informer asked for so far has synced; False on timeout."""
        informers = self._informers.values()
        return all(await asyncio.gather(*(i.wait_for_sync(timeout) for i in informers)))

    async def stop_all(self) -> None:
        await asyncio.gather(*(i.stop() for i in self._informers.values()))

