"""The scheduler's Prometheus metrics, under upstream kube-scheduler's names, and a tiny HTTP endpoint serving them.

Dashboards and alerts written for kube-scheduler read ``scheduler_schedule_attempts_total{result,profile}``,
``scheduler_scheduling_attempt_duration_seconds`` and ``scheduler_pending_pods{queue}``, so the same names and labels
are kept. Each service owns its registry, so several schedulers in one process (tests, side-by-side profiles) never
collide in the global one. The endpoint is a few lines over ``asyncio.start_server``: scrapes are rare and small,
and a web framework would cost more start-up time than it saves code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["ERROR", "SCHEDULED", "UNSCHEDULABLE", "MetricsServer", "SchedulerMetrics"]

SCHEDULED, UNSCHEDULABLE, ERROR = "scheduled", "unschedulable", "error"
# upstream: metrics.ExponentialBuckets(0.001, 2, 15)
_ATTEMPT_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))


class SchedulerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.schedule_attempts = Counter(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, "
            "while 'error' means an internal scheduler problem.", ["result", "profile"], registry=r)
        self.attempt_duration = Histogram(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)", ["result", "profile"],
            buckets=_ATTEMPT_BUCKETS, registry=r)
        self.pending_pods = Gauge(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means "
            "number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods that the "
            "scheduler attempted to schedule and failed; 'gated' is the number of unschedulable pods that the "
            "scheduler never attempted to schedule because they are gated.", ["queue"], registry=r)
        self.preemption_attempts = Counter(
            "scheduler_preemption_attempts", "Total preemption attempts in the cluster till now", registry=r)
        self.preemption_victims = Histogram(
            "scheduler_preemption_victims", "Number of selected preemption victims",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.leader = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates "
            "master. 'name' is the string used to identify the lease.", ["name"], registry=r)
        for q in ("active", "backoff", "unschedulable", "gated"):
            self.pending_pods.labels(q).set(0)

    def observe_attempt(self, result: str, profile: str, seconds: float) -> None:
        self.schedule_attempts.labels(result, profile).inc()
        self.attempt_duration.labels(result, profile).observe(seconds)

    def set_pending(self, counts: Mapping[str, int]) -> None:
        for q, n in counts.items():
            self.pending_pods.labels(q).set(n)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """GET /metrics (Prometheus text format) and /healthz, /livez, /readyz on their own port (0 picks one)."""

    def __init__(self, metrics: Callable[[], bytes], healthy: Callable[[], bool], host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self._metrics = metrics
        self._healthy = healthy
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10.0):
                request = await reader.readline()
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: nothing here needs them
            parts = request.decode("latin-1").split()
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"404 page not found\n"
            if method not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", b"method not allowed\n"
            elif path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, self._metrics()
            elif path in ("/healthz", "/livez", "/readyz"):
                ok = self._healthy()
                status, body = ("200 OK", b"ok") if ok else ("500 Internal Server Error", b"unhealthy")
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"Connection: close\r\n\r\n").encode("latin-1")
            writer.write(head + (body if method != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
