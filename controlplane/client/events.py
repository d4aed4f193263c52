"""Events a component reports about the objects it acts on, as core/v1 Event objects (client-go's tools/record).

``kubectl describe`` and ``kubectl get events`` are how a user learns where a pod went, why a claim stays Pending or
why a ReplicaSet cannot create its pods. The scheduler, every controller and any embedding program record them the
same way, through this one recorder:

- ``event()`` never blocks and never fails its caller: it enqueues, and a few workers write in the background (a
  full queue drops the event, as client-go's broadcaster does). Workers start with the first event and end after a
  quiet second, so a recorder needs no start; ``aclose()`` writes what is queued (bounded) and stops them.
- A repeat of an event (same object, type, reason, message and component) bumps ``count`` and ``lastTimestamp``
  of the first one instead of piling up, as client-go's correlator does.
- Names are ``<object>.<hex nanoseconds>``, as client-go names them; times come from the recorder's clock, so a
  controller on a fake clock reports fake times.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from controlplane.client.clock import Clock
from controlplane.client.errors import NotFound
from controlplane.client.resources import EVENTS
from controlplane.client.rest import ApiClient

__all__ = ["MAX_MESSAGE_LENGTH", "NORMAL", "WARNING", "EventRecorder"]

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
MAX_MESSAGE_LENGTH = 1024  # upstream truncates event notes to 1 KiB
_IDLE = 1.0  # seconds a worker waits for the next event before it ends


class EventRecorder:
    """Background writer of core/v1 Events. ``component`` is the reporter (``source.component``) unless an event
    names its own (the scheduler reports under each profile's scheduler name)."""

    def __init__(self, client: ApiClient, component: str = "", clock: Clock | None = None, *, workers: int = 4,
                 queue_size: int = 10_000, cache_size: int = 4096) -> None:
        self.client = client
        self.component = component
        self.clock = clock
        self.host = socket.gethostname()
        self.cache_size = cache_size
        self.dropped = 0
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(queue_size)
        self._max_workers = workers
        self._workers: set[asyncio.Task[None]] = set()
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int]] = OrderedDict()

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *, action: str = "",
              related: Mapping[str, Any] | None = None, component: str | None = None) -> None:
        """Record an event about ``obj`` (fire and forget)."""
        try:
            self._queue.put_nowait((obj, type_, reason, _truncate(message), action, related,
                                    component or self.component))
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if len(self._workers) < min(self._max_workers, self._queue.qsize()):
            try:
                task = asyncio.get_running_loop().create_task(self._work(), name=f"events {self.component}")
            except RuntimeError:
                return  # no loop (a controller used outside one): nothing to write with
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    async def aclose(self, timeout: float = 2.0) -> None:
        """Write what is queued (bounded by ``timeout``), then stop the workers."""
        if self._workers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.join()
        workers = list(self._workers)
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            try:
                async with asyncio.timeout(_IDLE):
                    item = await self._queue.get()
            except TimeoutError:
                return
            try:
                await self._write(*item)
            except Exception as exc:  # noqa: BLE001 - an event that cannot be written is dropped, as client-go does
                log.debug("event %s not recorded: %r", item[2], exc)
            finally:
                self._queue.task_done()

    def _now(self) -> tuple[str, str]:
        """(lastTimestamp, eventTime): seconds and microseconds, RFC 3339."""
        t = dt.datetime.fromtimestamp(self.clock.now() if self.clock is not None else time.time(), dt.UTC)
        micro = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return micro[:19] + "Z", micro

    async def _write(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, action: str,
                     related: Mapping[str, Any] | None, component: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid") or meta.get("name", ""), type_, reason, message, component)
        now, micro = self._now()
        seen = self._seen.get(key)
        if seen is not None:
            name, ns, count = seen
            try:
                await self.client.patch(EVENTS, name, {"count": count + 1, "lastTimestamp": now}, ns)
                self._seen[key] = (name, ns, count + 1)
                self._seen.move_to_end(key)
                return
            except NotFound:
                pass  # the event expired meanwhile: write a new one
        name = f"{meta.get('name', 'object')}.{time.time_ns():x}"
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": _reference(obj),
            "reason": reason, "message": message, "type": type_,
            "source": {"component": component},
            "reportingComponent": component, "reportingInstance": f"{component}-{self.host}",
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": micro, "count": 1,
        }
        if action:
            body["action"] = action
        if related is not None:
            body["related"] = _reference(related)
        await self.client.create(EVENTS, body, namespace)
        self._seen[key] = (name, namespace, 1)
        while len(self._seen) > self.cache_size:
            self._seen.popitem(last=False)


def _truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[:MAX_MESSAGE_LENGTH - 3] + "..."


def _reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    ref = {"kind": obj.get("kind") or "Pod", "apiVersion": obj.get("apiVersion") or "v1",
           "namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid"),
           "resourceVersion": meta.get("resourceVersion")}
    return {k: v for k, v in ref.items() if v is not None}
