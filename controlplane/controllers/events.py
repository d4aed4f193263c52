"""Events a controller reports about the objects it acts on, as client-go's EventRecorder writes them (core/v1).

``kubectl describe`` shows them, and they are how a user learns why a claim stays Pending or a pod was evicted.
Recording never blocks or fails a reconcile: writes run in the background, and repeats of the same event (same
object, reason and message) bump ``count`` and ``lastTimestamp`` of the first one instead of piling up, as
client-go's correlator does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import OrderedDict
from typing import Any

from controlplane.client import ApiClient, NotFound
from controlplane.client.resources import EVENTS

log = logging.getLogger(__name__)

NORMAL = "Normal"
WARNING = "Warning"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, client: ApiClient, component: str, *, cache_size: int = 4096) -> None:
        self.client = client
        self.component = component
        self._seen: OrderedDict[tuple[str, str, str, str], tuple[str, str, int]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.cache_size = cache_size

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an event about ``obj`` (fire and forget)."""
        try:
            task = asyncio.get_running_loop().create_task(self._write(obj, type_, reason, message))
        except RuntimeError:
            return  # no loop (a controller used outside the manager): nothing to record with
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid") or meta.get("name", ""), type_, reason, message)
        now = _now()
        try:
            seen = self._seen.get(key)
            if seen is not None:
                name, ns, count = seen
                try:
                    await self.client.patch(EVENTS, name, {"count": count + 1, "lastTimestamp": now}, ns)
                    self._seen[key] = (name, ns, count + 1)
                    self._seen.move_to_end(key)
                    return
                except NotFound:
                    pass  # the event expired; write a new one
            involved = {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"), "name": meta.get("name"),
                        "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")}
            if meta.get("namespace"):
                involved["namespace"] = meta["namespace"]
            name = f"{meta.get('name', 'object')}.{time.time_ns():x}"
            body = {"apiVersion": "v1", "kind": "Event",
                    "metadata": {"name": name, "namespace": namespace},
                    "involvedObject": {k: v for k, v in involved.items() if v is not None},
                    "reason": reason, "message": message, "type": type_,
                    "source": {"component": self.component}, "reportingComponent": self.component,
                    "firstTimestamp": now, "lastTimestamp": now, "count": 1}
            await self.client.create(EVENTS, body, namespace)
            self._seen[key] = (name, namespace, 1)
            while len(self._seen) > self.cache_size:
                self._seen.popitem(last=False)
        except Exception as exc:  # noqa: BLE001 - an event that cannot be written is dropped, as client-go does
            log.debug("event %s for %s not recorded: %r", reason, meta.get("name"), exc)

    async def aclose(self) -> None:
        """Wait for events being written (bounded), e.g. before the client closes."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
