"""The scheduling algorithm: one pod in, a node (or an upstream-style FitError) out.

``Scheduler.schedule_one`` is upstream's schedulingCycle minus the I/O: PreFilter, Filter over the snapshot (vector
plugins over every node at once, per-node plugins lazily from a rotating start index until percentageOfNodesToScore
feasible nodes are found), PostFilter (preemption) on failure, PreScore/Score/NormalizeScore on the feasible nodes
and a random pick among the best. It needs only the snapshot, the profiles and -- for the pieces that do talk to
the API server (binding, preemption, volume binding, extenders) -- callbacks, so the control plane wires it to its
client later and benchmarks feed it in-process.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .cache import Cache
from .config import SchedulerConfiguration, default_configuration
from .framework import (
    Code,
    CycleState,
    Diagnosis,
    Framework,
    Handle,
    NodeList,
    NodeToStatus,
    PodBinder,
    PostFilterResult,
    Status,
)
from .podinfo import PodInfo
from .queue import Nominator, PriorityQueue, QueuedPodInfo

__all__ = ["Scheduler", "ScheduleResult", "FitError", "num_feasible_nodes_to_find", "build_frameworks",
           "NO_NODE_AVAILABLE_MSG", "BindingCycle"]

NO_NODE_AVAILABLE_MSG = "0/{} nodes are available"
MIN_FEASIBLE_NODES_TO_FIND = 100
MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND = 5
EXTENDER_NAME = "Extender"


def _as_exception(s: Status) -> Exception:
    return s.error if isinstance(s.error, Exception) else RuntimeError(s.message())


class FitError(Exception):
    """No node fits the pod; ``str()`` is upstream's FitError message."""

    def __init__(self, pod: PodInfo, num_all_nodes: int, statuses: NodeToStatus | None = None,
                 diagnosis: Diagnosis | None = None) -> None:
        self.pod = pod
        self.num_all_nodes = num_all_nodes
        self.diagnosis = diagnosis if diagnosis is not None else Diagnosis(statuses or NodeToStatus())
        super().__init__(self.message())

    def message(self) -> str:
        d = self.diagnosis
        msg = NO_NODE_AVAILABLE_MSG.format(self.num_all_nodes) + ":"
        if d.pre_filter_msg:
            msg += f" {d.pre_filter_msg}."
        else:
            reasons: dict[str, int] = {}
            nts = d.node_to_status
            for st in nts.statuses.values():
                for r in st.reasons:
                    reasons[r] = reasons.get(r, 0) + 1
            absent = self.num_all_nodes - len(nts)
            if absent > 0:
                for r in nts.absent.reasons:
                    reasons[r] = reasons.get(r, 0) + absent
            hist = sorted(f"{n} {r}" for r, n in reasons.items())
            if hist:
                msg += f" {', '.join(hist)}."
        if d.post_filter_msg:
            msg += f" {d.post_filter_msg}."
        return msg

    def __str__(self) -> str:
        return self.message()


@dataclass
class ScheduleResult:
    """The outcome of one scheduling cycle. ``suggested_host`` is None when the pod did not fit (``error``)."""

    pod: PodInfo
    framework: Framework
    state: CycleState
    suggested_host: str | None = None
    evaluated_nodes: int = 0
    feasible_nodes: int = 0
    error: Exception | None = None
    post_filter: PostFilterResult | None = None
    scores: dict[str, int] = field(default_factory=dict)

    @property
    def fit_error(self) -> FitError | None:
        return self.error if isinstance(self.error, FitError) else None


def num_feasible_nodes_to_find(percentage: int | None, global_percentage: int, num_all_nodes: int) -> int:
    """How many feasible nodes to find before scoring: adaptive 50 - nodes/125 percent, at least 5% and 100."""
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND:
        return num_all_nodes
    pct = percentage if percentage is not None else global_percentage
    if pct == 0:
        pct = 50 - num_all_nodes // 125
        if pct < MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND:
            pct = MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND
    n = num_all_nodes * pct // 100
    return max(n, MIN_FEASIBLE_NODES_TO_FIND)


def build_frameworks(config: SchedulerConfiguration, handle_factory: Callable[[], Handle],
                     registry: Mapping[str, Any] | None = None) -> dict[str, Framework]:
    """One Framework per profile, each with its own Handle (plugins keep per-profile memos)."""
    from .plugins import DEFAULT_ARGS, REGISTRY

    reg = registry if registry is not None else REGISTRY
    return {p.scheduler_name: Framework.from_config(p, reg, handle_factory(), DEFAULT_ARGS) for p in config.profiles}


@dataclass
class BindingCycle:
    """A pod assumed on a node, waiting for its (async) binding cycle."""

    pod: PodInfo
    assumed: PodInfo
    node_name: str
    framework: Framework
    state: CycleState
    queued: QueuedPodInfo | None = None
    cycle: int = 0


class Scheduler:
    """Runs scheduling cycles for a set of profiles over one snapshot."""

    def __init__(self, cache: Cache, *, config: SchedulerConfiguration | None = None,
                 frameworks: Mapping[str, Framework] | None = None, extenders: Sequence[Any] = (),
                 nominator: Nominator | None = None, rng: random.Random | None = None,
                 pod_binder: PodBinder | None = None, volume_api: Any = None,
                 namespace_labels: Callable[[], Mapping[str, Mapping[str, str]]] | None = None,
                 clock: Callable[[], float] | None = None, registry: Mapping[str, Any] | None = None) -> None:
        self.cache = cache
        self.config = config if config is not None else default_configuration()
        self.rng = rng if rng is not None else random.Random()
        self.nominator = nominator if nominator is not None else Nominator()
        self.extenders = list(extenders)
        self.clock = clock or cache.clock

        def handle() -> Handle:
            return Handle(cache=cache, nominator=self.nominator, namespace_labels=namespace_labels,
                          pod_binder=pod_binder, volume_api=volume_api, rng=self.rng, clock=self.clock,
                          extenders=self.extenders)
        self.frameworks: dict[str, Framework] = dict(frameworks) if frameworks is not None else \
            build_frameworks(self.config, handle, registry)
        self.next_start_node_index = 0

    # -- wiring helpers -----------------------------------------------------------------------------------------

    def framework_for(self, pod: PodInfo) -> Framework:
        fwk = self.frameworks.get(pod.scheduler_name)
        if fwk is None:
            raise KeyError(f"profile not found for scheduler name {pod.scheduler_name!r}")
        return fwk

    def new_queue(self, **kwargs: Any) -> PriorityQueue:
        """A PriorityQueue configured from the first profile's QueueSort/PreEnqueue and all plugins' events."""
        fwk = next(iter(self.frameworks.values()))
        qs = fwk.queue_sort_plugin
        events: dict[str, list[Any]] = {}
        for f in self.frameworks.values():
            for k, v in f.events_to_register().items():
                events.setdefault(k, v)

        def pre_enqueue(pi: PodInfo) -> Status | None:
            f = self.frameworks.get(pi.scheduler_name)
            return f.run_pre_enqueue(pi) if f is not None else None
        kwargs.setdefault("pod_initial_backoff", self.config.pod_initial_backoff_seconds)
        kwargs.setdefault("pod_max_backoff", self.config.pod_max_backoff_seconds)
        kwargs.setdefault("clock", self.clock)
        return PriorityQueue(sort_key=getattr(qs, "sort_key", None), less=None if hasattr(qs, "sort_key") else
                             (qs.less if qs is not None else None), pre_enqueue=pre_enqueue, events=events,
                             nominator=self.nominator, **kwargs)

    def pod_info(self, pod: Mapping[str, Any]) -> PodInfo:
        """PodInfo for a pod from the informer. spec.priority is normally set by the Priority admission plugin;
        when it is missing, resolve it from the PriorityClass objects in the snapshot (named class, else the
        globalDefault one, else 0) so an API server without that admission still gets priorities right."""
        spec = pod.get("spec") or {}
        if spec.get("priority") is not None:
            return PodInfo(pod)
        classes = self.cache.objects.get("PriorityClass", {})
        name = spec.get("priorityClassName")
        prio = 0
        if name and name in classes:
            prio = int(classes[name].get("value") or 0)
        elif not name:
            default = next((c for c in classes.values() if c.get("globalDefault")), None)
            if default is not None:
                prio = int(default.get("value") or 0)
        return PodInfo(pod, priority=prio)

    # -- the cycle ----------------------------------------------------------------------------------------------

    def schedule_one(self, pod: Mapping[str, Any] | PodInfo, *, run_post_filter: bool = True) -> ScheduleResult:
        """Find a node for ``pod`` (pure: nothing is assumed or written). Extenders are not consulted here; use
        ``schedule_one_async`` when extenders are configured."""
        pi = pod if isinstance(pod, PodInfo) else PodInfo(pod)
        fwk = self.framework_for(pi)
        state = CycleState()
        res = ScheduleResult(pi, fwk, state)
        feasible, diagnosis, err = self._find_nodes_that_fit(fwk, state, pi)
        if err is not None:
            res.error = err
            return res
        return self._finish(res, feasible, diagnosis, run_post_filter)

    def _finish(self, res: ScheduleResult, feasible: NodeList, diagnosis: Diagnosis, run_post_filter: bool,
                extender_scores: np.ndarray | None = None) -> ScheduleResult:
        pi, fwk, state = res.pod, res.framework, res.state
        n_all = self.cache.num_nodes
        res.evaluated_nodes = len(feasible) + len(diagnosis.node_to_status)
        res.feasible_nodes = len(feasible)
        if len(feasible) == 0:
            fe = FitError(pi, n_all, diagnosis=diagnosis)
            if run_post_filter and fwk.post_filter_plugins:
                r, s = fwk.run_post_filter(state, pi, diagnosis.node_to_status)
                res.post_filter = r
                diagnosis.post_filter_msg = s.message() if s is not None else ""
                fe = FitError(pi, n_all, diagnosis=diagnosis)
            res.error = fe
            return res
        if len(feasible) == 1:
            res.suggested_host = self.cache.names[int(feasible.slots[0])]
            return res
        total = self._prioritize(fwk, state, pi, feasible)
        if extender_scores is not None:
            total = total + extender_scores
        idx = self._select_host(total)
        host = self.cache.names[int(feasible.slots[idx])]
        res.suggested_host = host
        res.scores = {host: int(total[idx])}  # type: ignore[dict-item]
        return res

    def _find_nodes_that_fit(self, fwk: Framework, state: CycleState,
                             pi: PodInfo) -> tuple[NodeList, Diagnosis, Exception | None]:
        cache = self.cache
        diagnosis = Diagnosis()
        n_all = cache.num_nodes
        empty = NodeList(cache, np.zeros(0, np.int64))
        if n_all == 0:
            return empty, diagnosis, RuntimeError("no nodes available to schedule pods")
        pre_res, s, plugins = fwk.run_pre_filter(state, pi)
        diagnosis.unschedulable_plugins = set(plugins)
        if s is not None and not s.is_success():
            if not s.is_rejected():
                return empty, diagnosis, _as_exception(s)
            diagnosis.node_to_status = NodeToStatus(absent=s)
            diagnosis.pre_filter_msg = s.message()
            if s.plugin:
                diagnosis.unschedulable_plugins.add(s.plugin)
            return empty, diagnosis, None

        # A nominated node (from an earlier preemption) is tried first: it's likely the only one that fits.
        if pi.nominated_node_name:
            info = cache.node_info(pi.nominated_node_name)
            if info is not None and (pre_res is None or pre_res.node_names is None or info.name in pre_res.node_names):
                st = fwk.run_filter_with_nominated_pods(state, pi, info)
                if st is None or st.is_success():
                    return NodeList.from_infos(cache, [info]), diagnosis, None

        order = cache.node_order()
        if pre_res is not None and not pre_res.all_nodes():
            wanted = np.zeros(cache.capacity, bool)
            for name in pre_res.node_names or ():
                slot = cache.slot_of.get(name)
                if slot is not None and cache.live[slot]:
                    wanted[slot] = True
            order = order[wanted[order]]
            msg = f"node(s) didn't satisfy plugin(s) [{' '.join(sorted(plugins))}]"
            diagnosis.node_to_status = NodeToStatus(absent=Status.unresolvable(msg))
        feasible, processed, err = self._find_nodes_that_pass_filters(fwk, state, pi, order, n_all, diagnosis)
        if n_all:
            self.next_start_node_index = (self.next_start_node_index + processed) % n_all
        if err is not None:
            return empty, diagnosis, err
        return feasible, diagnosis, None

    def _find_nodes_that_pass_filters(self, fwk: Framework, state: CycleState, pi: PodInfo, order: np.ndarray,
                                      n_all: int, diagnosis: Diagnosis) -> tuple[NodeList, int, Exception | None]:
        cache = self.cache
        n = int(order.shape[0])
        if n == 0:
            return NodeList(cache, order), 0, None
        to_find = num_feasible_nodes_to_find(fwk.percentage_of_nodes_to_score,
                                             self.config.percentage_of_nodes_to_score, n)
        filters = fwk.active_filters(state)
        start = self.next_start_node_index % n
        if not filters:
            idx = (start + np.arange(min(to_find, n))) % n
            return NodeList(cache, order[idx]), len(idx), None
        mask = cache.live.copy()
        scalar: list[Any] = []
        try:
            for p in filters:
                fv = getattr(p, "filter_vector", None)
                if fv is not None:
                    mask &= fv(state, pi)
                else:
                    scalar.append(p)
        except Exception as e:
            return NodeList(cache, order[:0]), 0, e
        nominated = self._nominated_nodes(fwk, pi)
        ok_in_order = mask[order]
        positions = np.flatnonzero(ok_in_order)
        # Rotate so the search starts where the previous cycle stopped (upstream's nextStartNodeIndex).
        k = int(np.searchsorted(positions, start))
        positions = np.concatenate([positions[k:], positions[:k]])
        processed: int
        if not scalar and not nominated:
            take = positions[:to_find]
            processed = int((take[-1] - start) % n) + 1 if len(take) >= to_find else n
            feasible = order[take]
        else:
            chosen: list[int] = []
            last = -1
            infos = cache.infos
            for pos in positions.tolist():
                slot = int(order[pos])
                info = infos[slot]
                assert info is not None
                last = pos
                if info.name in nominated:
                    st = fwk.run_filter_with_nominated_pods(state, pi, info)
                    if st is not None and not st.is_success():
                        if st.code == Code.ERROR:
                            return NodeList(cache, order[:0]), 0, _as_exception(st)
                        diagnosis.node_to_status.set(info.name, st)
                        continue
                else:
                    failed = False
                    for p in scalar:
                        st = p.filter(state, pi, info)
                        if st is not None and not st.is_success():
                            if st.code == Code.ERROR:
                                return NodeList(cache, order[:0]), 0, _as_exception(st)
                            diagnosis.node_to_status.set(info.name, st.with_plugin(p.name))
                            failed = True
                            break
                    if failed:
                        continue
                chosen.append(slot)
                if len(chosen) >= to_find:
                    break
            if len(chosen) >= to_find:
                processed = int((last - start) % n) + 1
            else:
                processed = n
            feasible = np.asarray(chosen, np.int64)
        if feasible.shape[0] == 0:
            # Every node failed: explain each (first failing plugin per node), for the FitError and preemption.
            explained = fwk.diagnose(state, pi, order)
            for name, st in explained.items():
                if name not in diagnosis.node_to_status.statuses:
                    diagnosis.node_to_status.set(name, st)
            for st in diagnosis.node_to_status.statuses.values():
                if st.plugin:
                    diagnosis.unschedulable_plugins.add(st.plugin)
        return NodeList(cache, feasible), processed, None

    def _nominated_nodes(self, fwk: Framework, pi: PodInfo) -> set[str]:
        nom = self.nominator
        out = set()
        for node in nom.nodes():
            if fwk.nominated_pods_for(pi, node):
                out.add(node)
        return out

    def _prioritize(self, fwk: Framework, state: CycleState, pi: PodInfo, nodes: NodeList) -> np.ndarray:
        if not fwk.has_score_plugins() and not self.extenders:
            return np.ones(len(nodes), np.int64)
        s = fwk.run_pre_score(state, pi, nodes)
        if s is not None and not s.is_success():
            raise RuntimeError(s.message())
        total, _ = fwk.run_score(state, pi, nodes)
        return total

    def _select_host(self, total: np.ndarray) -> int:
        best = np.flatnonzero(total == total.max())
        if len(best) == 1:
            return int(best[0])
        return int(best[self.rng.randrange(len(best))])

    # -- with extenders -----------------------------------------------------------------------------------------

    async def schedule_one_async(self, pod: Mapping[str, Any] | PodInfo, *,
                                 run_post_filter: bool = True) -> ScheduleResult:
        """schedule_one plus the configured HTTP extenders (filter, prioritize, preempt)."""
        pi = pod if isinstance(pod, PodInfo) else PodInfo(pod)
        if not self.extenders:
            return self.schedule_one(pi, run_post_filter=run_post_filter)
        fwk = self.framework_for(pi)
        state = CycleState()
        res = ScheduleResult(pi, fwk, state)
        feasible, diagnosis, err = self._find_nodes_that_fit(fwk, state, pi)
        if err is not None:
            res.error = err
            return res
        before = len(feasible)
        infos = list(feasible.infos)
        try:
            for ext in self.extenders:
                if not infos:
                    break
                if not ext.is_interested(pi):
                    continue
                try:
                    infos, failed, failed_unresolvable = await ext.filter(pi, infos)
                except Exception:
                    if ext.ignorable:
                        continue
                    raise
                nts = diagnosis.node_to_status
                for name, msg in failed_unresolvable.items():
                    prev = nts.statuses.get(name)
                    reasons = (*(prev.reasons if prev else ()), msg)
                    nts.set(name, Status(Code.UNSCHEDULABLE_AND_UNRESOLVABLE, *reasons))
                for name, msg in failed.items():
                    if name in failed_unresolvable:
                        continue
                    prev = nts.statuses.get(name)
                    nts.set(name, Status(Code.UNSCHEDULABLE, *(prev.reasons if prev else ()), msg))
        except Exception as e:
            res.error = e
            return res
        if len(infos) != before:
            diagnosis.unschedulable_plugins.add(EXTENDER_NAME)
        # The cache may have moved while we awaited: keep only nodes that still exist.
        infos = [i for i in infos if self.cache.node_info(i.name) is i]
        feasible = NodeList.from_infos(self.cache, infos)
        if len(feasible) == 0 and run_post_filter and any(e.supports_preemption for e in self.extenders):
            return await self._finish_with_extender_preemption(res, feasible, diagnosis)
        ext_scores: np.ndarray | None = None
        if len(feasible) > 1:
            ext_scores = np.zeros(len(feasible), np.int64)
            index = {n: i for i, n in enumerate(feasible.names)}
            for ext in self.extenders:
                if not ext.is_interested(pi) or not ext.is_prioritizer:
                    continue
                try:
                    scores, weight = await ext.prioritize(pi, feasible.infos)
                except Exception:
                    continue
                for host, score in scores:
                    i = index.get(host)
                    if i is not None:
                        ext_scores[i] += score * weight * (100 // 10)
        return self._finish(res, feasible, diagnosis, run_post_filter, ext_scores)

    async def _finish_with_extender_preemption(self, res: ScheduleResult, feasible: NodeList,
                                               diagnosis: Diagnosis) -> ScheduleResult:
        from .preemption import DefaultPreemption

        pi, fwk, state = res.pod, res.framework, res.state
        pre = next((p for p in fwk.post_filter_plugins if isinstance(p, DefaultPreemption)), None)
        if pre is None:
            return self._finish(res, feasible, diagnosis, True)
        res.evaluated_nodes = len(diagnosis.node_to_status)
        ok, msg = pre.pod_eligible_to_preempt_others(pi, diagnosis.node_to_status)
        if not ok:
            diagnosis.post_filter_msg = "preemption: " + msg
            res.error = FitError(pi, self.cache.num_nodes, diagnosis=diagnosis)
            return res
        candidates, node_statuses, err = pre.find_candidates(state, pi, diagnosis.node_to_status)
        for ext in self.extenders:
            if not candidates:
                break
            if not ext.supports_preemption or not ext.is_interested(pi):
                continue
            try:
                candidates = await ext.process_preemption(pi, candidates, self.cache)
            except Exception as e:
                if ext.ignorable:
                    continue
                res.error = e
                return res
        if not candidates:
            r, s = pre.no_candidates(pi, node_statuses)
        else:
            r, s = pre.finish(pi, candidates)  # type: ignore[assignment]
        res.post_filter = r
        if s is not None:
            diagnosis.post_filter_msg = s.message()
        res.error = FitError(pi, self.cache.num_nodes, diagnosis=diagnosis)
        return res

    # -- assume / reserve / permit, and the binding cycle ---------------------------------------------------------

    def assume(self, result: ScheduleResult, queued: QueuedPodInfo | None = None) -> tuple[BindingCycle | None,
                                                                                             Status | None]:
        """Assume the pod on its node, then run Reserve and Permit (the synchronous end of a scheduling cycle).
        On failure everything is undone and the failing status is returned."""
        assert result.suggested_host is not None
        pi, fwk, state, host = result.pod, result.framework, result.state, result.suggested_host
        assumed = self.cache.assume_pod(pi, host)
        self.nominator.delete_nominated_pod_if_exists(pi)
        s = fwk.run_reserve(state, assumed, host)
        if s is not None and not s.is_success():
            fwk.run_unreserve(state, assumed, host)
            self.cache.forget_pod(pi.uid)
            return None, s
        s = fwk.run_permit(state, assumed, host)
        if s is not None and not s.is_success() and s.code != Code.WAIT:
            fwk.run_unreserve(state, assumed, host)
            self.cache.forget_pod(pi.uid)
            return None, s
        return BindingCycle(pi, assumed, host, fwk, state, queued), None

    async def bind(self, bc: BindingCycle) -> Status | None:
        """WaitOnPermit, PreBind, Bind (extender binder or plugins), PostBind. On failure the pod is unreserved and
        forgotten; the caller requeues it. On success the cache keeps it assumed until the informer confirms."""
        fwk, state, pod, host = bc.framework, bc.state, bc.assumed, bc.node_name
        s = await fwk.wait_on_permit(pod)
        if s is None or s.is_success():
            s = await fwk.run_pre_bind(state, pod, host)
        if s is None or s.is_success():
            binder = next((e for e in self.extenders if e.is_binder and e.is_interested(pod)), None)
            if binder is not None:
                try:
                    await binder.bind(pod, host)
                    s = None
                except Exception as e:
                    s = Status.as_error(e)
            else:
                s = await fwk.run_bind(state, pod, host)
                if s is not None and s.code == Code.SKIP:
                    s = Status.as_error("no bind plugin bound the pod")
        if s is not None and not s.is_success():
            fwk.run_unreserve(state, pod, host)
            self.cache.forget_pod(pod.uid)
            return s
        self.cache.finish_binding(pod.uid)
        await fwk.run_post_bind(state, pod, host)
        return None

    def handle_failure(self, queue: PriorityQueue, queued: QueuedPodInfo, result: ScheduleResult | None,
                       status: Status | None = None, cycle: int | None = None) -> None:
        """handleSchedulingFailure for the queue side: record the rejecting plugins, requeue, and remember the
        nomination a preemption produced (the API status write is the caller's)."""
        fe = result.fit_error if result is not None else None
        if fe is not None:
            queued.unschedulable_plugins = set(fe.diagnosis.unschedulable_plugins)
            queued.pending_plugins = set(fe.diagnosis.pending_plugins)
        elif status is not None and status.plugin and status.is_rejected():
            queued.unschedulable_plugins = {status.plugin}
        pf = result.post_filter if result is not None else None
        queue.add_unschedulable_if_not_present(queued, cycle)
        # As upstream: requeue first (which re-reads the pod's own nomination), then apply this cycle's.
        if pf is not None and pf.nominated_node_name:
            self.nominator.add_nominated_pod(queued.pod_info, pf.nominated_node_name)
        elif pf is not None and pf.clear_own_nomination:
            self.nominator.delete_nominated_pod_if_exists(queued.pod_info)

    def schedule_next(self, queue: PriorityQueue) -> tuple[QueuedPodInfo | None, ScheduleResult | None,
                                                           BindingCycle | None]:
        """Pop one pod and run its scheduling cycle up to Permit (no I/O): the in-process loop benchmarks use and
        the API loop builds on. A failed pod is requeued; a successful one is returned for binding."""
        q = queue.pop_nowait()
        if q is None:
            return None, None, None
        cycle = queue.scheduling_cycle
        pi = q.pod_info
        if pi.deleting or self.cache.has_pod(pi.uid):
            queue.done(pi.uid)  # deleted meanwhile, or already assumed/bound: nothing to do
            return q, None, None
        res = self.schedule_one(pi)
        if res.suggested_host is None:
            self.handle_failure(queue, q, res, cycle=cycle)
            return q, res, None
        bc, s = self.assume(res, q)
        if bc is None:
            self.handle_failure(queue, q, res, s, cycle=cycle)
            return q, res, None
        bc.cycle = cycle
        return q, res, bc

