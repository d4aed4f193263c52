"""The scheduler as a running component: informers feed the snapshot and the queue, a loop schedules, bindings go out.

This is kube-scheduler's wiring around the pure core (``core.Scheduler``): shared informers for nodes, pods and the
objects plugins read (PVs, PVCs, StorageClasses, PriorityClasses, PDBs, namespaces) apply every change to the
``Cache`` and turn it into the queue's cluster events; a loop pops pods and runs scheduling cycles; each pod that
fits is assumed and bound in its own task (upstream's asynchronous binding cycle) so the next cycle starts at once.
A pod that does not fit is requeued, gets a ``FailedScheduling`` event and PodScheduled=False/Unschedulable, and may
preempt lower-priority pods (nominatedNodeName). Everything runs on one event loop: the cache is not thread-safe,
and informer handlers and cycles interleave only at awaits.

Unassigned pods are queued only when their ``spec.schedulerName`` is one of this scheduler's profiles, so several
schedulers (or one scheduler with several profiles) share a cluster; every scheduler accounts every assigned pod.
With leader election (the controller manager's Lease elector), only the leader schedules; each leadership term
builds a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from controlplane.client import (
    ApiClient,
    ClientConfig,
    Informer,
    SharedInformerFactory,
    component_user_agent,
)
from controlplane.client.resources import (
    NAMESPACES,
    NODES,
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODDISRUPTIONBUDGETS,
    PODS,
    PRIORITYCLASSES,
    STORAGECLASSES,
)

from .apicalls import ApiCalls
from .cache import Cache
from .config import SchedulerConfiguration, default_configuration
from .core import BindingCycle, Scheduler, ScheduleResult
from controlplane.client.events import NORMAL, WARNING, EventRecorder
from .extender import extenders_from_config
from .framework import ClusterEvent, CycleState, Status
from .metrics import ERROR, SCHEDULED, UNSCHEDULABLE, MetricsServer, SchedulerMetrics
from .podinfo import PodInfo
from .preemption import execute_preemption
from .queue import (
    EVENT_ASSIGNED_POD_ADD,
    EVENT_ASSIGNED_POD_DELETE,
    EVENT_NODE_ADD,
    EVENT_PV_ADD,
    EVENT_PV_UPDATE,
    EVENT_PVC_ADD,
    EVENT_PVC_UPDATE,
    EVENT_STORAGE_CLASS_ADD,
    EVENT_STORAGE_CLASS_UPDATE,
    QueuedPodInfo,
    assigned_pod_update_event,
    node_update_event,
)

if TYPE_CHECKING:  # the elector lives with the controller manager; imported only when election is on
    from controlplane.controllers.leader_election import (
        LeaderElectionConfig,
        LeaderElector,
    )

__all__ = [
    "REASON_SCHEDULER_ERROR",
    "REASON_UNSCHEDULABLE",
    "SchedulerOptions",
    "SchedulerService",
    "component_factory",
]

log = logging.getLogger(__name__)

REASON_UNSCHEDULABLE = "Unschedulable"
REASON_SCHEDULER_ERROR = "SchedulerError"
_NO_NODES = "no nodes available to schedule pods"  # core's message when the snapshot has no node at all

Obj = dict[str, Any]


@dataclass
class SchedulerOptions:
    """What ``ccmkit scheduler`` flags configure besides the KubeSchedulerConfiguration."""

    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # serve /metrics and /healthz here; 0 picks a free port; None: no endpoint
    leader_election: LeaderElectionConfig | None = None  # None: schedule at once, alone
    sync_timeout: float = 60.0  # how long start() waits for the informers' first lists
    event_workers: int = 4
    max_binding_requests: int = 8  # binding POSTs in flight at once (more only cost client CPU, not speed)
    seed: int | None = None  # for the tie-breaking RNG (tests)


class _Session:
    """One run of the scheduler (the whole process without leader election, else one leadership term): informers,
    snapshot, queue, the scheduling loop and the bindings in flight."""

    def __init__(self, svc: SchedulerService) -> None:
        self.svc = svc
        cfg = svc.config
        client = svc.client
        self.metrics = svc.metrics
        # Writes (bindings, events, status) get their own small connection pool: httpx scans every pooled
        # connection on each request, and the informers' long-lived watch connections would be scanned too.
        n = svc.options.max_binding_requests + svc.options.event_workers + 4
        self.writer = ApiClient(client.config, limits=httpx.Limits(max_connections=n, max_keepalive_connections=n),
                                user_agent=component_user_agent("kube-scheduler"))
        self.recorder = EventRecorder(self.writer, workers=svc.options.event_workers)
        self.factory = SharedInformerFactory(client)
        f = self.factory
        self.pods = f.informer(PODS)
        self.nodes = f.informer(NODES)
        self.pvs = f.informer(PERSISTENTVOLUMES)
        self.pvcs = f.informer(PERSISTENTVOLUMECLAIMS)
        self.storage_classes = f.informer(STORAGECLASSES)
        self.priority_classes = f.informer(PRIORITYCLASSES)
        self.pdbs = f.informer(PODDISRUPTIONBUDGETS)
        self.namespaces = f.informer(NAMESPACES)
        self.calls = ApiCalls(self.writer, self.recorder, get_pvc=self.pvcs.get,
                              max_binding_requests=svc.options.max_binding_requests)
        self.cache = Cache(initial_capacity=256)
        self.extenders = extenders_from_config(cfg.extenders)
        rng = random.Random(svc.options.seed) if svc.options.seed is not None else None
        self.sched = Scheduler(self.cache, config=cfg, extenders=self.extenders, pod_binder=self.calls,
                               volume_api=self.calls, rng=rng)
        self.queue = self.sched.new_queue()
        self.profiles = set(self.sched.frameworks)
        self._applied: dict[str, int] = {}  # per informer: adds minus deletes its handlers have applied
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.bindings_in_flight = 0
        self._register_handlers()

    # -- informer handlers --------------------------------------------------------------------------------------

    def _register_handlers(self) -> None:
        self._counted(self.nodes, "nodes", self._node_add, self._node_update, self._node_delete)
        self._counted(self.pods, "pods", self._pod_add, self._pod_update, self._pod_delete)
        for inf, name, kind, add_ev, upd_ev in (
            (self.pvs, "pvs", "PersistentVolume", EVENT_PV_ADD, EVENT_PV_UPDATE),
            (self.pvcs, "pvcs", "PersistentVolumeClaim", EVENT_PVC_ADD, EVENT_PVC_UPDATE),
            (self.storage_classes, "storageclasses", "StorageClass", EVENT_STORAGE_CLASS_ADD,
             EVENT_STORAGE_CLASS_UPDATE),
            (self.priority_classes, "priorityclasses", "PriorityClass", None, None),
            (self.pdbs, "pdbs", "PodDisruptionBudget", None, None),
            (self.namespaces, "namespaces", "Namespace", None, None),
        ):
            add, upd, dele = self._object_handlers(kind, add_ev, upd_ev)
            self._counted(inf, name, add, upd, dele)

    def _counted(self, inf: Informer, name: str, add: Callable[[Obj], None], update: Callable[[Obj, Obj], None],
                 delete: Callable[[Obj], None]) -> None:
        """Register handlers that also count what they applied, so start-up can wait until the snapshot holds
        everything the first lists returned (not just until the informers' caches do)."""
        self._applied[name] = 0

        def on_add(obj: Obj) -> None:
            self._applied[name] += 1
            add(obj)

        def on_delete(obj: Obj) -> None:
            self._applied[name] -= 1
            delete(obj)
        inf.add_handler(on_add, update, on_delete)

    def _move(self, event: ClusterEvent, old: Any, new: Any) -> None:
        self.queue.move_all_to_active_or_backoff(event, old, new)

    def _node_add(self, node: Obj) -> None:
        self.cache.add_node(node)
        self._move(EVENT_NODE_ADD, None, node)

    def _node_update(self, old: Obj, new: Obj) -> None:
        self.cache.update_node(old, new)
        ev = node_update_event(old, new)
        if ev is not None:
            self._move(ev, old, new)

    def _node_delete(self, node: Obj) -> None:
        self.cache.remove_node(node)

    def _object_handlers(self, kind: str, add_ev: ClusterEvent | None, upd_ev: ClusterEvent | None
                         ) -> tuple[Callable[[Obj], None], Callable[[Obj, Obj], None], Callable[[Obj], None]]:
        claims = kind in ("PersistentVolumeClaim", "PersistentVolume")

        def add(obj: Obj) -> None:
            self.cache.upsert_object(kind, obj)
            if claims:
                self.calls.notify_claims_changed()
            if add_ev is not None:
                self._move(add_ev, None, obj)

        def update(old: Obj, new: Obj) -> None:
            self.cache.upsert_object(kind, new)
            if claims:
                self.calls.notify_claims_changed()
            if upd_ev is not None:
                self._move(upd_ev, old, new)

        def delete(obj: Obj) -> None:
            self.cache.delete_object(kind, obj)
            if claims:
                self.calls.notify_claims_changed()
        return add, update, delete

    def pod_info(self, pod: Obj) -> PodInfo:
        """PodInfo with the priority of the pod's PriorityClass when it names one that exists. A real API server's
        Priority admission has already copied that value into spec.priority (PriorityClass values are immutable),
        so this only matters for API servers without that admission plugin."""
        spec = pod.get("spec") or {}
        name = spec.get("priorityClassName")
        if name:
            pc = self.cache.get_object("PriorityClass", name)
            if pc is not None:
                value = int(pc.get("value") or 0)
                if value != spec.get("priority"):
                    return PodInfo(pod, priority=value)
        return self.sched.pod_info(pod)

    def _responsible(self, pod: Obj) -> bool:
        return ((pod.get("spec") or {}).get("schedulerName") or "default-scheduler") in self.profiles

    @staticmethod
    def _assigned(pod: Obj) -> bool:
        return bool((pod.get("spec") or {}).get("nodeName"))

    @staticmethod
    def _terminal(pod: Obj) -> bool:
        return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")

    def _pod_add(self, pod: Obj) -> None:
        if self._assigned(pod):
            pi = self.cache.add_pod(self.pod_info(pod))
            if pi is not None:
                self._move(EVENT_ASSIGNED_POD_ADD, None, pi)
        elif self._responsible(pod) and not self._terminal(pod):
            self.queue.add(self.pod_info(pod))

    def _pod_update(self, old: Obj, new: Obj) -> None:
        if self._assigned(new):
            if not self._assigned(old):
                self.queue.delete(PodInfo(old))  # bound (by us or anyone): no longer ours to schedule
            before = self.cache.get_pod(self._uid(new))
            pi = self.cache.update_pod(old, self.pod_info(new))
            if pi is None:  # became terminal: it frees its resources like a delete
                if before is not None:
                    self._move(EVENT_ASSIGNED_POD_DELETE, before, None)
            elif before is None or before.node_name != pi.node_name or not self._assigned(old):
                # Newly bound (even if we had assumed it): pods waiting for it, e.g. for pod affinity, may fit.
                self._move(EVENT_ASSIGNED_POD_ADD, None, pi)
            else:
                ev = assigned_pod_update_event(before, pi)
                if ev is not None:
                    self._move(ev, before, pi)
        elif self._responsible(new):
            if self._terminal(new):
                self.queue.delete(PodInfo(new))
            else:
                self.queue.update(old, self.pod_info(new))

    def _pod_delete(self, pod: Obj) -> None:
        if self._assigned(pod):
            removed = self.cache.remove_pod(pod)
            if removed is not None:
                self._move(EVENT_ASSIGNED_POD_DELETE, removed, None)
        else:
            pi = PodInfo(pod)
            self.queue.delete(pi)
            if self.cache.is_assumed(pi.uid):
                # Deleted while its binding is in flight: the binding fails and forgets it; reject a Permit wait.
                fwk = self.sched.frameworks.get(pi.scheduler_name)
                waiting = fwk.waiting_pods.get(pi.uid) if fwk is not None else None
                if waiting is not None:
                    waiting.reject("", "pod deleted")

    @staticmethod
    def _uid(pod: Obj) -> str:
        md = pod.get("metadata") or {}
        return md.get("uid") or f"{md.get('namespace') or 'default'}/{md.get('name', '')}"

    def current_pod(self, pi: PodInfo) -> Obj | None:
        """The informer's latest version of ``pi``'s pod, if it is still the same pod."""
        cur = self.pods.get(pi.key)
        if cur is None or self._uid(cur) != pi.uid:
            return None
        return cur

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self, sync_timeout: float) -> None:
        self.factory.start_all()
        if not await self.factory.wait_for_sync(sync_timeout):
            raise RuntimeError(f"scheduler informers did not sync within {sync_timeout}s")
        # The informers' caches are full; wait (briefly) until the handlers have applied the same to the snapshot,
        # so the first cycles do not fail for nodes that are merely not applied yet.
        deadline = time.monotonic() + min(sync_timeout, 10.0)
        informers = {"nodes": self.nodes, "pods": self.pods, "pvs": self.pvs, "pvcs": self.pvcs,
                     "storageclasses": self.storage_classes, "priorityclasses": self.priority_classes,
                     "pdbs": self.pdbs, "namespaces": self.namespaces}
        while any(self._applied[n] < len(inf) for n, inf in informers.items()) and time.monotonic() < deadline:
            await asyncio.sleep(0.002)  # polling the handlers' progress, bounded by the deadline
        loop = asyncio.get_running_loop()
        self._loop_task = loop.create_task(self._run(), name="scheduler-loop")
        self.spawn(self.queue.run(self._stop))
        self.spawn(self._housekeeping())

    async def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        await self.factory.stop_all()
        await self.recorder.aclose()
        for ext in self.extenders:
            with contextlib.suppress(Exception):
                await ext.aclose()
        await self.writer.close()

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("scheduler task failed", exc_info=task.exception())

    async def _housekeeping(self) -> None:
        while not self._stop.is_set():
            self.refresh_pending_metrics()
            for pi in self.cache.cleanup_assumed_pods():
                log.warning("assumed pod %s expired without its binding being confirmed", pi.key)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stop.wait()

    def pending_counts(self) -> dict[str, int]:
        q = self.queue
        gated = sum(1 for x in q.unschedulable.values() if x.gated)
        return {"active": len(q.active_q), "backoff": len(q.backoff_q),
                "unschedulable": len(q.unschedulable) - gated, "gated": gated}

    def refresh_pending_metrics(self) -> None:
        self.metrics.set_pending(self.pending_counts())

    # -- the scheduling loop ------------------------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self.queue
        while True:
            q = await queue.pop()
            if q is None:
                return
            try:
                await self._schedule(q)
            except Exception:
                log.exception("scheduling %s failed", q.pod_info.key)
                if self.cache.is_assumed(q.uid):
                    self.cache.forget_pod(q.uid)
                queue.add_unschedulable_if_not_present(q)
            # Let informer handlers, bindings and event writes run between cycles.
            await asyncio.sleep(0)

    async def _schedule(self, q: QueuedPodInfo) -> None:
        queue, sched, cache = self.queue, self.sched, self.cache
        cycle = queue.scheduling_cycle
        pi = q.pod_info
        if pi.deleting or cache.has_pod(pi.uid) or pi.scheduler_name not in sched.frameworks:
            queue.done(pi.uid)
            return
        start = time.perf_counter()
        try:
            if self.extenders:
                res = await sched.schedule_one_async(pi)
                if cache.has_pod(pi.uid) or self.current_pod(pi) is None:
                    queue.done(pi.uid)  # bound elsewhere or deleted while the extenders answered
                    return
            else:
                res = sched.schedule_one(pi)
        except Exception as e:  # noqa: BLE001 - an internal error is reported on the pod, as upstream
            res = ScheduleResult(pi, sched.framework_for(pi), CycleState(), error=e)
        if res.suggested_host is None:
            self._failed(q, res, None, cycle, start)
            return
        bc, s = sched.assume(res, q)
        if bc is None:
            self._failed(q, res, s, cycle, start)
            return
        bc.cycle = cycle
        self.bindings_in_flight += 1
        self.spawn(self._binding_cycle(bc, start))

    def _failed(self, q: QueuedPodInfo, res: ScheduleResult | None, status: Status | None, cycle: int,
                start: float) -> None:
        pi = q.pod_info
        profile = pi.scheduler_name
        if status is not None and not status.is_success():
            message = status.message()
            reason = REASON_UNSCHEDULABLE if status.is_rejected() else REASON_SCHEDULER_ERROR
        elif res is not None and res.fit_error is not None:
            message, reason = str(res.fit_error), REASON_UNSCHEDULABLE
        else:
            message = str(res.error) if res is not None and res.error is not None else "scheduling failed"
            reason = REASON_UNSCHEDULABLE if message == _NO_NODES else REASON_SCHEDULER_ERROR
        self.metrics.observe_attempt(UNSCHEDULABLE if reason == REASON_UNSCHEDULABLE else ERROR, profile,
                                     time.perf_counter() - start)
        current = self.current_pod(pi)
        if current is None or self._assigned(current):
            self.queue.done(pi.uid)  # deleted or bound meanwhile: nothing to retry or report
            return
        self.sched.handle_failure(self.queue, q, res, status, cycle=cycle)
        self.recorder.event(current, WARNING, "FailedScheduling", message, action="Scheduling", component=profile)
        pf = res.post_filter if res is not None else None
        self.spawn(self._write_failure(current, pi, reason, message, pf))

    async def _write_failure(self, pod: Obj, pi: PodInfo, reason: str, message: str, pf: Any) -> None:
        if pf is not None and (pf.nominated_node_name or pf.clear_own_nomination):
            if pf.nominated_node_name:
                self.metrics.preemption_attempts.inc()
                self.metrics.preemption_victims.observe(len(pf.victims))
            await execute_preemption(pi, pf, self.calls)
        await self.calls.set_pod_condition(pod, "False", reason, message)

    async def _binding_cycle(self, bc: BindingCycle, start: float) -> None:
        pi = bc.pod
        profile = pi.scheduler_name
        try:
            try:
                s = await self.sched.bind(bc)
            except Exception as e:  # noqa: BLE001 - bind() reports through its status; be safe anyway
                self.cache.forget_pod(pi.uid)
                s = Status.as_error(e)
        finally:
            self.bindings_in_flight -= 1
        if s is None or s.is_success():
            self.queue.done(pi.uid)
            self.metrics.observe_attempt(SCHEDULED, profile, time.perf_counter() - start)
            self.recorder.event(bc.assumed.pod, NORMAL, "Scheduled",
                                f"Successfully assigned {pi.namespace}/{pi.name} to {bc.node_name}",
                                action="Binding", component=profile)
            return
        log.info("binding %s to %s failed: %s", pi.key, bc.node_name, s.message())
        # The assumed pod's room is free again: pods waiting for room may fit now (upstream does the same).
        self.queue.move_all_to_active_or_backoff(EVENT_ASSIGNED_POD_DELETE, bc.assumed, None,
                                                 precheck=lambda x: x.uid != pi.uid)
        q = bc.queued or QueuedPodInfo(pi, time.monotonic())
        self._failed(q, None, s, bc.cycle, start)


class SchedulerService:
    """``await SchedulerService(url, config).start()`` schedules pods until ``stop()``.

    ``server`` is an API server URL, a ClientConfig (e.g. from a kubeconfig) or an ApiClient (not closed on stop).
    """

    def __init__(self, server: str | ClientConfig | ApiClient, config: SchedulerConfiguration | None = None,
                 options: SchedulerOptions | None = None) -> None:
        self.config = config if config is not None else default_configuration()
        self.options = options or SchedulerOptions()
        if isinstance(server, ApiClient):
            self.client, self._own_client = server, False
        else:
            self.client, self._own_client = ApiClient(server, user_agent=component_user_agent("kube-scheduler")), True
        self.metrics = SchedulerMetrics()
        self.profiles = [p.scheduler_name for p in self.config.profiles]
        self._session: _Session | None = None
        self._session_lock = asyncio.Lock()
        self._http: MetricsServer | None = None
        self.elector: LeaderElector | None = None
        self._elector_task: asyncio.Task[None] | None = None
        self._term_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Without leader election: start scheduling and return once the informers have synced. With it: start
        campaigning and return at once (scheduling starts when the lease is won)."""
        o = self.options
        if o.metrics_port is not None:
            self._http = MetricsServer(self.metrics_text, self.healthy, o.metrics_host, o.metrics_port)
            await self._http.start()
        le = o.leader_election
        if le is None:
            await self._start_session()
            return
        from controlplane.controllers.leader_election import LeaderElector

        self.metrics.leader.labels(le.name).set(0)
        self.elector = LeaderElector(self.client, le, on_started_leading=self._started_leading,
                                     on_stopped_leading=self._stopped_leading)
        self._elector_task = asyncio.get_running_loop().create_task(self.elector.run(), name="scheduler-election")

    async def stop(self) -> None:
        if self._elector_task is not None:
            self._elector_task.cancel()
            await asyncio.gather(self._elector_task, return_exceptions=True)
            self._elector_task = None
        await self._stop_session()
        if self._http is not None:
            await self._http.stop()
            self._http = None
        if self._own_client and not self._closed:
            self._closed = True
            await self.client.close()

    async def _start_session(self) -> None:
        async with self._session_lock:
            if self._session is not None:
                return
            session = _Session(self)
            try:
                await session.start(self.options.sync_timeout)
            except BaseException:
                await session.stop()
                raise
            self._session = session
            log.info("scheduler started: profiles %s", ", ".join(self.profiles))

    async def _stop_session(self) -> None:
        async with self._session_lock:
            session, self._session = self._session, None
            if session is not None:
                await session.stop()

    async def _started_leading(self) -> None:
        assert self.options.leader_election is not None
        self.metrics.leader.labels(self.options.leader_election.name).set(1)
        # Start in the background: the elector renews only after this returns, and a first sync of a big cluster
        # may take longer than the lease lasts.
        self._term_task = asyncio.get_running_loop().create_task(self._start_term(), name="scheduler-term")

    async def _start_term(self) -> None:
        try:
            await self._start_session()
        except Exception:
            log.exception("scheduler could not start its leadership term")

    async def _stopped_leading(self) -> None:
        assert self.options.leader_election is not None
        self.metrics.leader.labels(self.options.leader_election.name).set(0)
        if self._term_task is not None:
            self._term_task.cancel()
            await asyncio.gather(self._term_task, return_exceptions=True)
            self._term_task = None
        await self._stop_session()

    async def wait_running(self, timeout: float | None = None) -> bool:
        """True once this instance schedules (immediately without leader election); False after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.running:
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)  # polling a state flag, bounded by the deadline
        return True

    # -- introspection ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._session is not None and self._session.running

    @property
    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector is not None else self.running

    @property
    def session(self) -> _Session | None:
        return self._session

    @property
    def cache(self) -> Cache | None:
        return self._session.cache if self._session is not None else None

    @property
    def scheduler(self) -> Scheduler | None:
        return self._session.sched if self._session is not None else None

    @property
    def metrics_url(self) -> str | None:
        return self._http.url if self._http is not None else None

    def healthy(self) -> bool:
        if self.elector is not None:
            return self.elector.healthy() and (self._session is None or self._session.running)
        return self.running

    def metrics_text(self) -> bytes:
        if self._session is not None:
            self._session.refresh_pending_metrics()
        return self.metrics.exposition()


ComponentFactory = Callable[[str, Path], Awaitable[SchedulerService]]


def component_factory(config: SchedulerConfiguration | None = None,
                      options: SchedulerOptions | None = None) -> ComponentFactory:
    """A ``ClusterConfig.components`` entry: a scheduler against the cluster's API server (``ccmkit up``)."""

    async def make(api_url: str, data_dir: Path) -> SchedulerService:
        return SchedulerService(api_url, config, options)

    return make
