"""The watch cache: one store watch per resource, fanned out to every HTTP watcher of that resource.

As kube-apiserver's cacher does, each resource has a single upstream watch on the store and a bounded window of
recent events. A client watch starting inside that window is replayed from memory and then fed live; one starting
before it gets its own store watch (which answers 410 Expired when the revision has been compacted). Each event is
decoded and serialised once and the same bytes go to every unfiltered watcher; watchers pinned to one node by a
`spec.nodeName=` field selector are indexed by that node, so an event costs O(watchers of that node), not
O(all watchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.apiserver import jsonutil
from controlplane.apiserver.selectors import FieldSelector, LabelSelector
from controlplane.storage import ExpiredError, Store, WatchEvent

log = logging.getLogger(__name__)

Decode = Callable[[bytes, int], dict[str, Any]]
Transform = Callable[[str, dict[str, Any]], bytes]  # (event type, object) -> one frame without the newline

INDEXED_FIELD = "spec.nodeName"


class CachedEvent:
    """One event of the window. The object is decoded, and the frame serialised, when a watcher first needs them
    (then once for all watchers): a resource whose watch cache runs with nobody watching, or with only watchers
    whose filters rule the event out by key, pays for neither on every write."""

    __slots__ = ("_decode", "_frame", "_obj", "_prev", "key", "prev_value", "revision", "type", "value")

    def __init__(self, type: str, revision: int, key: str, value: bytes, prev_value: bytes | None,
                 decode: Decode) -> None:
        self.type = type
        self.revision = revision
        self.key = key
        self.value = value
        self.prev_value = prev_value
        self._decode = decode
        self._obj: dict[str, Any] | None = None
        self._frame: bytes | None = None
        self._prev: dict[str, Any] | None = None

    @property
    def obj(self) -> dict[str, Any]:
        obj = self._obj
        if obj is None:
            obj = self._obj = self._decode(self.value, self.revision)
        return obj

    @property
    def frame(self) -> bytes:
        """The serialised WatchEvent for unfiltered, untransformed watchers."""
        frame = self._frame
        if frame is None:
            frame = self._frame = jsonutil.dumps({"type": self.type, "object": self.obj})
        return frame

    def prev(self, decode: Decode) -> dict[str, Any] | None:
        if self._prev is None and self.prev_value is not None:
            self._prev = decode(self.prev_value, self.revision)
        return self._prev


class WatchClosed(Exception):
    """The watcher was ended by the server (overflow or shutdown); the client should re-watch."""


class Watcher:
    """One client watch: a filter and an outbox of frames the HTTP response drains."""

    def __init__(
        self,
        key_prefix: str,
        labels: LabelSelector,
        fields: FieldSelector,
        getters: Mapping[str, Callable[[dict[str, Any]], str]],
        min_revision: int,
        transform: Transform | None,
        decode: Decode,
        max_pending: int,
    ) -> None:
        self.key_prefix = key_prefix
        self.labels = labels
        self.fields = fields
        self.getters = getters
        self.min_revision = min_revision  # events at or below this revision were already seen by the client
        self.transform = transform
        self.decode = decode
        self.max_pending = max_pending
        self.unfiltered = labels.empty and fields.empty
        self.pending: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None  # set while next_batch waits
        self._sent_at = float("-inf")  # loop time of the last batch next_batch answered with
        self.closed: BaseException | None = None
        self.last_revision = min_revision
        self.node: str | None = fields.exact(INDEXED_FIELD)

    def _matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        return self.labels.matches((obj.get("metadata") or {}).get("labels")) and self.fields.matches(obj, self.getters)

    def offer(self, ev: CachedEvent) -> None:
        if ev.revision <= self.min_revision or self.closed is not None:
            return
        if not ev.key.startswith(self.key_prefix):
            return
        self.last_revision = ev.revision
        if self.unfiltered:
            self._push(ev.frame if self.transform is None else self.transform(ev.type, ev.obj))
            return
        now = self._matches(ev.obj)
        before = ev.type != "ADDED" and self._matches(ev.prev(self.decode))
        if ev.type == "DELETED":
            # For a delete, obj is the last state; it matched if it (or its previous state) matched.
            if now or before:
                self._push(self._frame("DELETED", ev))
            return
        if now and before:
            self._push(self._frame("MODIFIED", ev))
        elif now:
            self._push(self._frame("ADDED", ev))
        elif before:
            self._push(self._frame("DELETED", ev))

    def _frame(self, type_: str, ev: CachedEvent) -> bytes:
        if self.transform is not None:
            return self.transform(type_, ev.obj)
        if type_ == ev.type:
            return ev.frame
        return jsonutil.dumps({"type": type_, "object": ev.obj})

    def push_raw(self, frame: bytes) -> None:
        self._push(frame)

    def _push(self, frame: bytes) -> None:
        if len(self.pending) >= self.max_pending:
            # A watcher that cannot keep up is ended, as upstream's cacher does; the client re-watches.
            self.close(WatchClosed("watcher fell too far behind"))
            return
        self.pending.append(frame)
        self._wake()

    def close(self, reason: BaseException | None = None) -> None:
        if self.closed is None:
            self.closed = reason or WatchClosed("closed")
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_batch(self, timeout: float | None, linger: float = 0.0) -> list[bytes]:
        """Wait for frames; an empty list means the timeout passed with nothing to send. ``linger``: batches are at
        least this far apart. A frame after a quiet spell goes at once; one that comes within ``linger`` of the
        last batch waits out the rest of it, with whatever else comes meanwhile (see ServerOptions.watch_linger)."""
        loop = asyncio.get_running_loop()
        if not self.pending and self.closed is None:
            # A bare future and a timer rather than wait_for(Event.wait()): on Python 3.11 wait_for wraps the wait
            # in a new Task each call, which was a fifth of the CPU of fanning an event out to 100 watchers.
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _wake_on_timeout, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if not self.pending and self.closed is None:
                return []
        if linger and self.closed is None:
            early = self._sent_at + linger - loop.time()
            if early > 0:
                await asyncio.sleep(early)
        self._sent_at = loop.time()
        batch = list(self.pending)
        self.pending.clear()
        return batch


def _wake_on_timeout(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Cacher:
    """The watch fan-out for one resource's key prefix."""

    def __init__(self, store: Store, prefix: str, decode: Decode, *, window: int = 2048) -> None:
        self.store = store
        self.prefix = prefix
        self.decode = decode
        self.history: deque[CachedEvent] = deque(maxlen=window)
        self.revision = 0  # every event up to this revision has been dispatched
        self.oldest = 0  # watches from revisions >= oldest can be served from history
        self._unindexed: set[Watcher] = set()
        self._by_node: dict[str, set[Watcher]] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._written: dict[str, tuple[int, dict[str, Any]]] = {}  # key -> (revision, object); see written()
        self._start_lock = asyncio.Lock()

    async def ensure_started(self, since: int | None = None) -> None:
        """Start the upstream watch if it is not running. ``since``: the revision of the watch that needs the cache
        (at most the current one). The cache starts there when the store still has the changes after it, so that
        watch, and the others its informers' lists place at about that revision, are served from the cache
        rather than each from a store watch of its own (the cache starts lazily, usually a little after the lists
        its first watchers resume from)."""
        if self._started.is_set():
            return
        async with self._start_lock:
            if self._started.is_set():
                return
            current = await self.store.current_revision()
            start = current
            if since is not None and 0 < since < current:
                try:
                    await self.store.list(self.prefix, limit=1, revision=since + 1)
                    start = since
                except ExpiredError:
                    pass  # compacted: that watch gets its 410 from the store
            self.revision = self.oldest = start
            self._task = asyncio.create_task(self._run(), name=f"cacher {self.prefix}")
            self._started.set()

    async def _run(self) -> None:
        while True:
            try:
                async for ev in self.store.watch(self.prefix, self.revision):
                    self._dispatch(ev)
                return  # the store closed
            except asyncio.CancelledError:
                raise
            except ExpiredError:
                # We fell behind the store's history: every watcher must relist, and the window restarts.
                log.warning("cacher %s: store history expired; ending all watches", self.prefix)
                self._close_all(WatchClosed("cache reset"))
                self.history.clear()
                self.revision = self.oldest = await self.store.current_revision()
            except Exception:  # noqa: BLE001 - a broken store watch must not kill the cacher; retry
                log.exception("cacher %s: store watch failed; restarting", self.prefix)
                await asyncio.sleep(0.2)

    def written(self, key: str, revision: int, obj: dict[str, Any]) -> None:
        """A write through this server stored ``obj`` (as it answers the writer) at ``revision``. Its event usually
        reaches the cacher after the write has returned, and then is served from this object instead of decoding
        the stored value again (a tenth of the API server's JSON decoding). From here on ``obj`` is read only: the
        write's response, the window and every watcher share it."""
        if self._task is None:
            return  # nobody watches this resource
        written = self._written
        if len(written) >= 512:  # events that came before their writes returned (etcd): never looked up
            written.clear()
        written[key] = (revision, obj)

    def _dispatch(self, ev: WatchEvent) -> None:
        cached = CachedEvent(ev.type, ev.revision, ev.key, ev.value, ev.prev_value, self.decode)
        if self._written:
            written = self._written.pop(ev.key, None)
            if written is not None and written[0] == ev.revision and ev.type != "DELETED":
                cached._obj = written[1]
        if len(self.history) == self.history.maxlen:
            self.oldest = self.history[0].revision
        self.history.append(cached)
        self.revision = ev.revision
        for w in tuple(self._unindexed):
            w.offer(cached)
        if self._by_node:
            node = ((cached.obj.get("spec") or {}).get("nodeName")) or ""
            for w in tuple(self._by_node.get(node, ())):
                w.offer(cached)

    def can_serve(self, revision: int) -> bool:
        return revision >= self.oldest

    def register(self, watcher: Watcher) -> None:
        """Replay history after the watcher's revision, then feed it live. No await in between, so nothing is lost."""
        for ev in self.history:
            if ev.revision > watcher.min_revision:
                watcher.offer(ev)
        if watcher.node is not None:
            self._by_node.setdefault(watcher.node, set()).add(watcher)
        else:
            self._unindexed.add(watcher)

    def unregister(self, watcher: Watcher) -> None:
        self._unindexed.discard(watcher)
        if watcher.node is not None:
            group = self._by_node.get(watcher.node)
            if group is not None:
                group.discard(watcher)
                if not group:
                    del self._by_node[watcher.node]

    def watcher_count(self) -> int:
        return len(self._unindexed) + sum(len(g) for g in self._by_node.values())

    def _close_all(self, reason: BaseException) -> None:
        for w in list(self._unindexed):
            w.close(reason)
        for group in list(self._by_node.values()):
            for w in list(group):
                w.close(reason)

    async def stop(self) -> None:
        self._close_all(WatchClosed("server shutting down"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def feed_from_store(store: Store, prefix: str, revision: int, watcher: Watcher, decode: Decode) -> None:
    """Serve a watcher whose revision is older than the cache window straight from the store's history."""
    try:
        async for ev in store.watch(prefix, revision):
            watcher.offer(CachedEvent(ev.type, ev.revision, ev.key, ev.value, ev.prev_value, decode))
            if watcher.closed is not None:
                return
    except ExpiredError as exc:
        watcher.close(exc)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported to the client as the end of its watch
        watcher.close(exc)
