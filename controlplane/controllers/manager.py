"""The controller manager: runs the enabled controllers over one shared informer factory, as kube-controller-manager.

Each controller gets its own rate-limited work queue (client-go semantics) and N workers; a failed reconcile is
logged and retried with per-key exponential backoff, a successful one forgets the key's failures and honours
``requeue_after``. With leader election on, controllers run only while this manager holds the Lease: each term
builds fresh controllers and informers, and losing the lease stops them before another manager can start. Work
queue and reconcile metrics (Prometheus) and health checks are served on an optional port.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from controlplane.client import (
    ApiClient,
    ClientConfig,
    Clock,
    Conflict,
    RateLimiter,
    RateLimitingQueue,
    RealClock,
    SharedInformerFactory,
    component_user_agent,
    default_controller_rate_limiter,
)
from controlplane.controllers import ControllerFactory, load_factory, select
from controlplane.controllers.base import (
    Controller,
    ControllerContext,
    Result,
    RetryLater,
)
from controlplane.controllers.leader_election import LeaderElectionConfig, LeaderElector

log = logging.getLogger(__name__)


@dataclass
class ManagerConfig:
    """What ``ccmkit controller-manager`` flags configure."""

    controllers: str | Sequence[str] = "*"  # --controllers, e.g. "*,-nodeipam"
    options: dict[str, Any] = field(default_factory=dict)  # per-controller settings (ControllerContext.options)
    workers: dict[str, int] = field(default_factory=dict)  # --concurrent-*-syncs by controller name
    leader_election: LeaderElectionConfig | None = None  # None: run at once, alone
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # serve /metrics and /healthz here; 0 picks a free port
    sync_timeout: float = 60.0  # log (and keep waiting) when informers take longer than this to sync
    stop_timeout: float = 5.0  # how long a stop waits for in-flight reconciles before cancelling them
    resync_period: float | None = None  # informer resync, as --min-resync-period (None: never)
    clock: Clock | None = None
    rate_limiter: Callable[[], RateLimiter] | None = None  # per-queue limiter (default: client-go's)


class ManagerMetrics:
    """client-go's workqueue metrics and controller-runtime's reconcile metrics, in a registry of their own (so
    several managers in one process, as in tests, do not collide in the global one)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.depth = Gauge("workqueue_depth", "Current depth of workqueue", ["name"], registry=r)
        self.adds = Counter("workqueue_adds", "Total number of adds handled by workqueue", ["name"], registry=r)
        self.retries = Counter("workqueue_retries", "Total number of retries handled by workqueue", ["name"],
                               registry=r)
        self.work_duration = Histogram("workqueue_work_duration_seconds",
                                       "How long in seconds processing an item from workqueue takes.", ["name"],
                                       registry=r)
        self.reconciles = Counter("controller_reconcile", "Total number of reconciliations per controller",
                                  ["controller", "result"], registry=r)
        self.reconcile_errors = Counter("controller_reconcile_errors",
                                        "Total number of reconciliation errors per controller", ["controller"],
                                        registry=r)
        self.reconcile_time = Histogram("controller_reconcile_time_seconds",
                                        "Length of time per reconciliation per controller", ["controller"],
                                        registry=r)
        self.active_workers = Gauge("controller_active_workers",
                                    "Number of currently used workers per controller", ["controller"], registry=r)
        self.leader = Gauge("leader_election_master_status",
                            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, "
                            "1 indicates master. 'name' is the string used to identify the lease.", ["name"],
                            registry=r)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ControllerRunner:
    """One controller's queue and workers for one leadership term."""

    def __init__(self, controller: Controller, workers: int, metrics: ManagerMetrics, *,
                 rate_limiter: RateLimiter | None, clock: Clock | None) -> None:
        self.controller = controller
        self.name = controller.name
        self.workers = max(1, workers)
        self.metrics = metrics
        self.queue: RateLimitingQueue[str] = RateLimitingQueue(rate_limiter or default_controller_rate_limiter(clock),
                                                               clock=clock)
        self._tasks: list[asyncio.Task[None]] = []
        self._run_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._adds = metrics.adds.labels(self.name)
        self._retries = metrics.retries.labels(self.name)
        self._work = metrics.work_duration.labels(self.name)
        self._ok = metrics.reconciles.labels(self.name, "success")
        self._requeue = metrics.reconciles.labels(self.name, "requeue_after")
        self._error = metrics.reconciles.labels(self.name, "error")
        self._errors = metrics.reconcile_errors.labels(self.name)
        self._time = metrics.reconcile_time.labels(self.name)
        self._active = metrics.active_workers.labels(self.name)
        queue = self.queue
        metrics.depth.labels(self.name).set_function(lambda: len(queue))

    def enqueue(self, key: str, after: float | None = None) -> None:
        """The Enqueue the controller's event handlers call."""
        if self._stopping:
            return
        self._adds.inc()
        if after is not None and after > 0:
            self.queue.add_after(key, after)
        else:
            self.queue.add(key)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.workers):
            self._tasks.append(loop.create_task(self._worker(), name=f"controller-{self.name}-{i}"))
        run = getattr(self.controller, "run", None)
        if run is not None and inspect.iscoroutinefunction(run):
            self._run_task = loop.create_task(self._supervise(run), name=f"controller-{self.name}-run")

    @property
    def healthy(self) -> bool:
        if not self._tasks:
            return False
        return all(not t.done() for t in self._tasks) and (self._run_task is None or not self._run_task.done())

    async def _supervise(self, run: Callable[[], Any]) -> None:
        # A periodic loop that crashes is restarted after a pause rather than silently leaving the controller
        # half-working (a goroutine with wait.Until, upstream).
        while not self._stopping:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller %s: run loop failed; restarting in 1s", self.name)
                await asyncio.sleep(1.0)

    async def _worker(self) -> None:
        queue = self.queue
        while not self._stopping:
            key = await queue.get()
            if key is None:
                return
            if self._stopping:
                queue.done(key)
                return
            began = time.perf_counter()
            self._active.inc()
            try:
                result = await self.controller.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._error.inc()
                self._errors.inc()
                self._retries.inc()
                if isinstance(exc, (Conflict, RetryLater)):
                    # Optimistic concurrency at work, or a condition the controller expects to pass: not a bug.
                    log.info("controller %s: %s: %s; will retry", self.name, key, exc)
                else:
                    log.warning("controller %s: error syncing %r: %s; will retry", self.name, key, exc,
                                exc_info=not isinstance(exc, _QUIET_ERRORS))
                queue.add_rate_limited(key)
            else:
                queue.forget(key)
                if isinstance(result, Result) and result.requeue_after is not None:
                    self._requeue.inc()
                    queue.add_after(key, result.requeue_after)
                else:
                    self._ok.inc()
            finally:
                elapsed = time.perf_counter() - began
                self._time.observe(elapsed)
                self._work.observe(elapsed)
                self._active.dec()
                queue.done(key)

    async def stop(self, timeout: float) -> None:
        self._stopping = True
        self.queue.shutdown()
        tasks = list(self._tasks)
        if self._run_task is not None:
            self._run_task.cancel()
            tasks.append(self._run_task)
        if self._tasks:
            # Let in-flight reconciles finish (a half-done multi-step change is worse than a late stop), then cancel.
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        shutdown = getattr(self.controller, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(Exception):
                result = shutdown()
                if inspect.isawaitable(result):
                    await result


try:  # httpx errors are expected while the API server is away; no traceback for them
    import httpx

    _QUIET_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError,)
except ImportError:  # pragma: no cover
    _QUIET_ERRORS = ()


class _Term:
    """The controllers, informers and workers of one leadership term (or of the whole run without election)."""

    def __init__(self, manager: ControllerManager) -> None:
        self.manager = manager
        cfg = manager.config
        self.informers = SharedInformerFactory(manager.client, resync_period=cfg.resync_period, clock=cfg.clock)
        self.runners: list[ControllerRunner] = []
        self.ready = asyncio.Event()
        self._stopped = False

    async def start(self) -> None:
        m = self.manager
        cfg = m.config
        ctx = ControllerContext(options=dict(cfg.options), clock=cfg.clock or RealClock())
        for name, factory in m.factories.items():
            controller = factory(ctx)
            workers = cfg.workers.get(name, getattr(controller, "workers", 1))
            limiter = cfg.rate_limiter() if cfg.rate_limiter is not None else None
            self.runners.append(ControllerRunner(controller, workers, m.metrics, rate_limiter=limiter,
                                                 clock=cfg.clock))
        for runner in self.runners:
            result = runner.controller.setup(m.client, self.informers, runner.enqueue)
            if inspect.isawaitable(result):
                await result
        self.informers.start_all()
        began = time.perf_counter()
        while not await self.informers.wait_for_sync(cfg.sync_timeout):
            if self._stopped:
                return
            waiting = [str(i.resource) for i in self.informers.informers if not i.has_synced]
            log.warning("still waiting for informer caches to sync after %.0fs: %s", time.perf_counter() - began,
                        ", ".join(waiting))
        if self._stopped:
            return
        for runner in self.runners:
            runner.start()
        self.ready.set()
        log.info("started %d controllers: %s", len(self.runners), ", ".join(r.name for r in self.runners))

    @property
    def healthy(self) -> bool:
        return self.ready.is_set() and all(r.healthy for r in self.runners) and all(
            i.running for i in self.informers.informers)

    async def stop(self, timeout: float) -> None:
        self._stopped = True
        await asyncio.gather(*(r.stop(timeout) for r in self.runners))
        await self.informers.stop_all()


class ControllerManager:
    """``await ControllerManager(url, ManagerConfig(...)).start()``; ``await manager.stop()``.

    ``server`` is a URL, a ClientConfig or an ApiClient (the manager closes only a client it made).
    ``factories`` replaces the registry: {name: factory} (or controller instances, for tests), still filtered by
    ``config.controllers``.
    """

    def __init__(self, server: str | ClientConfig | ApiClient, config: ManagerConfig | None = None, *,
                 factories: Mapping[str, ControllerFactory | Controller] | None = None) -> None:
        self.config = config or ManagerConfig()
        if isinstance(server, ApiClient):
            self.client, self._owns_client = server, False
        else:
            agent = component_user_agent("kube-controller-manager")
            self.client, self._owns_client = ApiClient(server, user_agent=agent), True
        if factories is None:
            names = select(self.config.controllers)
            self.factories: dict[str, ControllerFactory] = {n: load_factory(n) for n in names}
        else:
            names = select(self.config.controllers, known=list(factories))
            self.factories = {n: _as_factory(factories[n]) for n in names}
        self.metrics = ManagerMetrics()
        self.elector: LeaderElector | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._term: _Term | None = None
        self._term_task: asyncio.Task[None] | None = None
        self._http: _HttpServer | None = None
        self._started = False
        self._leading = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving metrics and, without leader election, the controllers (returns once their informers have
        synced); with leader election, start campaigning and return at once."""
        self._started = True
        if self.config.metrics_port is not None:
            self._http = _HttpServer(self, self.config.metrics_host, self.config.metrics_port)
            await self._http.start()
        le = self.config.leader_election
        if le is None:
            self._term = _Term(self)
            await self._term.start()
            return
        self.metrics.leader.labels(le.name).set(0)
        self.elector = LeaderElector(self.client, le, on_started_leading=self._started_leading,
                                     on_stopped_leading=self._stopped_leading, on_new_leader=self._new_leader,
                                     clock=self.config.clock)
        self._elector_task = asyncio.get_running_loop().create_task(self.elector.run(), name="leader-election")

    async def stop(self, *, release: bool = True) -> None:
        """Stop controllers and informers. ``release=False`` leaves the lease held, as a killed process would."""
        if self._elector_task is not None:
            if not release and self.elector is not None:
                self.elector.abandon()
            self._elector_task.cancel()
            await asyncio.gather(self._elector_task, return_exceptions=True)
            self._elector_task = None
        await self._stop_term()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._owns_client:
            await self.client.close()
        self._started = False

    async def kill(self) -> None:
        """Stop without releasing the lease: the next leader must wait for it to expire."""
        await self.stop(release=False)

    def _new_leader(self, identity: str) -> None:
        if self.elector is not None and identity != self.elector.identity:
            log.info("new leader elected: %s", identity)

    async def _started_leading(self) -> None:
        assert self.config.leader_election is not None
        self.metrics.leader.labels(self.config.leader_election.name).set(1)
        self._leading.set()
        self._term = _Term(self)
        # Start in the background as upstream's OnStartedLeading goroutine: the elector must keep renewing meanwhile.
        self._term_task = asyncio.get_running_loop().create_task(self._run_term(self._term), name="controllers")

    async def _run_term(self, term: _Term) -> None:
        try:
            await term.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("starting controllers failed")

    async def _stopped_leading(self) -> None:
        if self.config.leader_election is not None:
            self.metrics.leader.labels(self.config.leader_election.name).set(0)
        self._leading.clear()
        await self._stop_term()

    async def _stop_term(self) -> None:
        term, self._term = self._term, None
        task, self._term_task = self._term_task, None
        if term is not None:
            term._stopped = True
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if term is not None:
            await term.stop(self.config.stop_timeout)

    # -- state -------------------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else self._started

    @property
    def running(self) -> bool:
        """Controllers are running (informers synced, workers started) in this process now."""
        return self._term is not None and self._term.ready.is_set()

    @property
    def informers(self) -> SharedInformerFactory | None:
        return self._term.informers if self._term is not None else None

    @property
    def controllers(self) -> dict[str, Controller]:
        return {r.name: r.controller for r in self._term.runners} if self._term is not None else {}

    def runner(self, name: str) -> ControllerRunner | None:
        if self._term is None:
            return None
        return next((r for r in self._term.runners if r.name == name), None)

    async def wait_running(self, timeout: float | None = None) -> bool:
        """True once controllers run in this process (this manager leads and its caches synced)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            term = self._term
            if term is not None and term.ready.is_set():
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if term is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining or 0.05, 0.05)):
                        await term.ready.wait()
            else:
                await asyncio.sleep(0.02)  # polling: no term yet (campaigning); a term object appears on leading

    def health(self) -> dict[str, bool]:
        """Named checks as /healthz reports them."""
        checks = {"ping": self._started}
        if self.elector is not None:
            checks["leaderElection"] = self.elector.healthy()
        if self._term is not None:
            checks["controllers"] = self._term.healthy or not self._term.ready.is_set()
        return checks

    @property
    def healthy(self) -> bool:
        return all(self.health().values())

    @property
    def metrics_url(self) -> str | None:
        return self._http.url if self._http is not None else None


def _as_factory(item: ControllerFactory | Controller) -> ControllerFactory:
    if hasattr(item, "reconcile") and hasattr(item, "setup"):
        instance = cast(Controller, item)
        return lambda ctx: instance
    return item


class _HttpServer:
    """/metrics, /healthz, /livez, /readyz on their own port, as kube-controller-manager's secure port serves."""

    def __init__(self, manager: ControllerManager, host: str, port: int) -> None:
        self.manager = manager
        self.host = host
        self.port = port
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, Response
        from starlette.routing import Route

        manager = self.manager

        async def metrics(request: Request) -> Response:
            return Response(manager.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

        async def healthz(request: Request) -> Response:
            checks = manager.health()
            ok = all(checks.values())
            if "verbose" in request.query_params or not ok:
                lines = [f"[{'+' if v else '-'}]{k} {'ok' if v else 'failed'}" for k, v in checks.items()]
                lines.append("healthz check passed" if ok else "healthz check failed")
                return PlainTextResponse("\n".join(lines) + "\n", status_code=200 if ok else 500)
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz), Route("/livez", healthz),
                                Route("/readyz", healthz)])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        server = uvicorn.Server(config)
        # The process's signals belong to the CLI, not to this side server (uvicorn >= 0.29 captures them in serve()).
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._server = server
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="cm-metrics")
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the metrics server stopped while starting")
            await asyncio.sleep(0.005)  # uvicorn offers no started event to await

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()


def component_factory(config: ManagerConfig) -> Callable[[str, Path], Any]:
    """A ``ClusterConfig.components`` entry: a controller manager against the cluster's API server."""

    async def make(api_url: str, data_dir: Path) -> ControllerManager:
        return ControllerManager(api_url, config)

    return make


__all__ = ["ControllerManager", "ControllerRunner", "ManagerConfig", "ManagerMetrics", "component_factory"]
