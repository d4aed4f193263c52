"""Liveness, readiness and startup probes: one small task per probed container, results the sync loop reads.

As upstream's prober workers, each probe runs on its own period after initialDelaySeconds, flips its result only
after successThreshold/failureThreshold consecutive outcomes, and tells the kubelet when a result changes so the pod
is re-synced (a failed liveness probe restarts the container there; readiness becomes the Ready condition). Until a
startup probe has succeeded, liveness and readiness are not run. Exec probes go through CRI ExecSync, httpGet to
the pod IP, tcpSocket with a plain connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from .cri.api import CRIError, RuntimeService

log = logging.getLogger(__name__)

LIVENESS, READINESS, STARTUP = "livenessProbe", "readinessProbe", "startupProbe"
PROBE_KINDS = (STARTUP, LIVENESS, READINESS)

# What a probe reports before its first run: a container is presumed alive, not yet ready, not yet started.
_INITIAL = {LIVENESS: True, READINESS: False, STARTUP: False}


def _port(value: Any, container: Mapping[str, Any]) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"port {value!r} not found in the container's ports")


async def run_probe(probe: Mapping[str, Any], *, runtime: RuntimeService, container_id: str, pod_ip: str,
                    container: Mapping[str, Any], http: httpx.AsyncClient) -> tuple[bool, str]:
    """One probe run: (success, output or error message)."""
    timeout = float(probe.get("timeoutSeconds") or 1)
    try:
        if "exec" in probe:
            cmd = list((probe["exec"] or {}).get("command") or [])
            stdout, stderr, code = await runtime.exec_sync(container_id, cmd, timeout)
            return code == 0, (stdout + stderr).decode(errors="replace")
        if "httpGet" in probe:
            hg = probe["httpGet"] or {}
            host = hg.get("host") or pod_ip
            scheme = str(hg.get("scheme") or "HTTP").lower()
            url = f"{scheme}://{host}:{_port(hg.get('port'), container)}{hg.get('path') or '/'}"
            headers = {h["name"]: h.get("value", "") for h in hg.get("httpHeaders") or [] if h.get("name")}
            headers.setdefault("User-Agent", "kube-probe/1.32")
            resp = await http.get(url, headers=headers, timeout=timeout)
            # Upstream counts 2xx and 3xx as success.
            return 200 <= resp.status_code < 400, f"HTTP probe failed with statuscode: {resp.status_code}"
        if "tcpSocket" in probe:
            ts = probe["tcpSocket"] or {}
            host = ts.get("host") or pod_ip
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host, _port(ts.get("port"), container))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            return True, ""
        if "grpc" in probe:
            return False, "grpc probes are not supported by this kubelet"
    except (CRIError, httpx.HTTPError, OSError, ValueError, TimeoutError) as e:
        return False, str(e) or type(e).__name__
    return False, "probe has no handler"


class ProbeWorker:
    def __init__(self, manager: ProbeManager, uid: str, container: Mapping[str, Any], kind: str,
                 container_id: str, started_at: float, pod_ip: str) -> None:
        self.manager = manager
        self.uid = uid
        self.container = container
        self.kind = kind
        self.probe: Mapping[str, Any] = container[kind]
        self.container_id = container_id
        self.started_at = started_at
        self.pod_ip = pod_ip
        self.result: bool = _INITIAL[kind]
        self.message = ""
        self._streak = 0  # consecutive outcomes opposite to the current result
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"probe-{self.kind}-{self.uid[:8]}")

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        period = float(self.probe.get("periodSeconds") or 10)
        success_needed = int(self.probe.get("successThreshold") or 1)
        failure_needed = int(self.probe.get("failureThreshold") or 3)
        delay = self.started_at + float(self.probe.get("initialDelaySeconds") or 0) - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while True:
            if self.kind == STARTUP or self.manager.started(self.uid, self.container["name"], self.container_id):
                ok, message = await run_probe(self.probe, runtime=self.manager.runtime,
                                              container_id=self.container_id, pod_ip=self.pod_ip,
                                              container=self.container, http=self.manager.http)
                if ok == self.result:
                    self._streak = 0
                else:
                    self._streak += 1
                    if self._streak >= (success_needed if ok else failure_needed):
                        self._streak = 0
                        self.result, self.message = ok, message
                        self.manager.changed(self.uid)
                if self.kind == STARTUP and self.result:
                    return  # a startup probe stops once it has succeeded
            await asyncio.sleep(period)


class ProbeManager:
    """The probe workers of one node. ``on_change(uid)`` is called whenever a result flips."""

    def __init__(self, runtime: RuntimeService, http: httpx.AsyncClient, on_change: Callable[[str], None]) -> None:
        self.runtime = runtime
        self.http = http
        self.on_change = on_change
        self._workers: dict[tuple[str, str, str], ProbeWorker] = {}
        self._by_pod: dict[str, set[tuple[str, str, str]]] = {}

    def ensure(self, uid: str, container: Mapping[str, Any], container_id: str, started_at: float,
               pod_ip: str) -> None:
        """Probe this running container (idempotent; a new container id replaces the old container's workers)."""
        name = container["name"]
        for kind in PROBE_KINDS:
            if not container.get(kind):
                continue
            key = (uid, name, kind)
            worker = self._workers.get(key)
            if worker is not None and worker.container_id == container_id:
                continue
            if worker is not None:
                worker.stop()
            worker = ProbeWorker(self, uid, container, kind, container_id, started_at, pod_ip)
            self._workers[key] = worker
            self._by_pod.setdefault(uid, set()).add(key)
            worker.start()

    def stop_container(self, uid: str, name: str) -> None:
        for kind in PROBE_KINDS:
            worker = self._workers.pop((uid, name, kind), None)
            if worker is not None:
                worker.stop()
                self._by_pod.get(uid, set()).discard((uid, name, kind))

    def stop_pod(self, uid: str) -> None:
        for key in self._by_pod.pop(uid, set()):
            worker = self._workers.pop(key, None)
            if worker is not None:
                worker.stop()

    def stop_all(self) -> None:
        for uid in list(self._by_pod):
            self.stop_pod(uid)

    def result(self, uid: str, name: str, kind: str, container_id: str) -> bool | None:
        """The probe's result for this container, or None if it has no such probe."""
        worker = self._workers.get((uid, name, kind))
        if worker is None or worker.container_id != container_id:
            return None
        return worker.result

    def started(self, uid: str, name: str, container_id: str) -> bool:
        r = self.result(uid, name, STARTUP, container_id)
        return True if r is None else r

    def liveness_failure(self, uid: str, name: str, container_id: str) -> str | None:
        worker = self._workers.get((uid, name, LIVENESS))
        if worker is None or worker.container_id != container_id or worker.result:
            return None
        return worker.message or "liveness probe failed"

    def changed(self, uid: str) -> None:
        try:
            self.on_change(uid)
        except Exception:
            log.exception("probe result callback failed")
