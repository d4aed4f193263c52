"""Events the scheduler reports about pods (Scheduled, FailedScheduling, Preempted), as core/v1 Event objects.

``kubectl describe pod`` and ``kubectl get events`` are how a user learns where a pod went or why it is Pending, so
events carry what kube-scheduler's do: the profile's scheduler name as source and reportingComponent, an
involvedObject with the pod's uid, the action (Scheduling, Binding, Preempting). Writing them must never slow the
scheduling loop: ``event()`` only enqueues, and a few workers write in the background (a full queue drops, as
client-go's broadcaster does). A repeat of the same event for the same pod (a pod failing again with the same
message) bumps ``count`` and ``lastTimestamp`` of the first one instead of piling up, as client-go's correlator does.
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

from controlplane.client import ApiClient, NotFound
from controlplane.client.resources import EVENTS

__all__ = ["MAX_MESSAGE_LENGTH", "NORMAL", "WARNING", "EventRecorder"]

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"
MAX_MESSAGE_LENGTH = 1024  # upstream truncates event notes to 1 KiB


def _now() -> tuple[str, str]:
    t = dt.datetime.now(dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ"), t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE_LENGTH:
        return message
    return message[:MAX_MESSAGE_LENGTH - 3] + "..."


class EventRecorder:
    """Background writer of core/v1 Events; one per service, the reporting component is given per event."""

    def __init__(self, client: ApiClient, *, workers: int = 4, queue_size: int = 10000,
                 cache_size: int = 4096) -> None:
        self.client = client
        self.host = socket.gethostname()
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._n_workers = workers
        self._seen: OrderedDict[tuple[str, ...], tuple[str, str, int]] = OrderedDict()
        self.cache_size = cache_size
        self.dropped = 0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work(), name=f"scheduler-events-{i}") for i in range(self._n_workers)]

    async def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (bounded by ``timeout``), then stop the workers."""
        if self._workers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._queue.join()
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, action: str, message: str, *,
              component: str, related: Mapping[str, Any] | None = None) -> None:
        """Record an event about ``obj`` (fire and forget)."""
        try:
            self._queue.put_nowait((obj, type_, reason, action, _truncate(message), component, related))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            try:
                await self._write(*item)
            except Exception as exc:  # noqa: BLE001 - an event that cannot be written is dropped, as client-go does
                log.debug("event %s not recorded: %r", item[2], exc)
            finally:
                self._queue.task_done()

    async def _write(self, obj: Mapping[str, Any], type_: str, reason: str, action: str, message: str,
                     component: str, related: Mapping[str, Any] | None) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid") or meta.get("name", ""), type_, reason, message, component)
        now, micro = _now()
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
            "reason": reason, "message": message, "type": type_, "action": action,
            "source": {"component": component},
            "reportingComponent": component, "reportingInstance": f"{component}-{self.host}",
            "firstTimestamp": now, "lastTimestamp": now, "eventTime": micro, "count": 1,
        }
        if related is not None:
            body["related"] = _reference(related)
        await self.client.create(EVENTS, body, namespace)
        self._seen[key] = (name, namespace, 1)
        while len(self._seen) > self.cache_size:
            self._seen.popitem(last=False)


def _reference(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    ref = {"kind": obj.get("kind") or "Pod", "apiVersion": obj.get("apiVersion") or "v1",
           "namespace": meta.get("namespace"), "name": meta.get("name"), "uid": meta.get("uid"),
           "resourceVersion": meta.get("resourceVersion")}
    return {k: v for k, v in ref.items() if v is not None}
