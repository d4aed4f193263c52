"""DefaultPreemption: when no node fits a pod, find a node where evicting lower-priority pods makes it fit.

As upstream: only nodes whose filter status was Unschedulable (not UnschedulableAndUnresolvable) are candidates;
a dry run on a clone of each (from a random offset, stopping after max(10%, 100) candidates) removes every
lower-priority pod, checks the pod fits, then re-adds as many as possible -- PodDisruptionBudget-violating pods
first, highest priority first; the chosen node has the fewest PDB violations, then the lowest highest-victim
priority, the smallest priority sum, the fewest victims, the latest start time. The result is the nominated node,
the victims and the lower-priority nominations to clear; the API calls go through ``PreemptionActions``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .cache import NodeInfo
from .framework import (
    Code,
    CycleState,
    Handle,
    NodeToStatus,
    PostFilterResult,
    Status,
)
from .labels import label_selector
from .podinfo import PodInfo

__all__ = ["DefaultPreemption", "PreemptionActions", "Victims", "Candidate", "execute_preemption",
           "pick_one_node_for_preemption", "filter_pods_with_pdb_violation", "more_important_pod"]

NAME = "DefaultPreemption"
DEFAULT_ARGS: dict[str, Any] = {"minCandidateNodesPercentage": 10, "minCandidateNodesAbsolute": 100}
MSG_NOT_HELPFUL = "Preemption is not helpful for scheduling"
MSG_NO_VICTIMS = "No preemption victims found for incoming pod"
_MAX_INT32 = (1 << 31) - 1


class PreemptionActions(Protocol):
    """The API side of preemption."""

    async def evict(self, victim: Mapping[str, Any], preemptor: Mapping[str, Any], node_name: str) -> None:
        """Delete ``victim`` (upstream also sets its DisruptionTarget condition first)."""

    async def set_nominated_node_name(self, pod: Mapping[str, Any], node_name: str) -> None:
        """Patch pod status.nominatedNodeName; "" clears it."""


@dataclass(slots=True)
class Victims:
    pods: list[PodInfo] = field(default_factory=list)
    num_pdb_violations: int = 0


@dataclass(slots=True)
class Candidate:
    node_name: str
    victims: Victims


def _start_time(p: PodInfo, now: float) -> float:
    # Assumed and not-yet-started pods have no startTime: upstream treats them as starting now.
    return p.start_time if p.start_time is not None else now


def more_important_pod(a: PodInfo, b: PodInfo, now: float | None = None) -> bool:
    """util.MoreImportantPod: higher priority, then earlier start time."""
    if a.priority != b.priority:
        return a.priority > b.priority
    now = time.time() if now is None else now
    return _start_time(a, now) < _start_time(b, now)


def _importance_key(now: float):
    return lambda p: (-p.priority, _start_time(p, now))


def filter_pods_with_pdb_violation(pods: Sequence[PodInfo], pdbs: Sequence[Mapping[str, Any]]
                                   ) -> tuple[list[PodInfo], list[PodInfo]]:
    """Split pods into those whose eviction would exceed a PDB's disruptionsAllowed and the rest."""
    allowed = [int((p.get("status") or {}).get("disruptionsAllowed") or 0) for p in pdbs]
    selectors = []
    for pdb in pdbs:
        try:
            sel = label_selector((pdb.get("spec") or {}).get("selector"))
        except ValueError:
            sel = None
        selectors.append(sel)
    violating: list[PodInfo] = []
    ok: list[PodInfo] = []
    for pi in pods:
        violated = False
        if pi.labels:
            for i, pdb in enumerate(pdbs):
                md = pdb.get("metadata") or {}
                if (md.get("namespace") or "default") != pi.namespace:
                    continue
                sel = selectors[i]
                # A PDB with a nil or empty selector matches nothing.
                if sel is None or sel.nothing or sel.everything or not sel.matches(pi.labels):
                    continue
                if pi.name in ((pdb.get("status") or {}).get("disruptedPods") or {}):
                    continue
                allowed[i] -= 1
                if allowed[i] < 0:
                    violated = True
        (violating if violated else ok).append(pi)
    return violating, ok


def _earliest_start_of_highest(victims: Victims, now: float) -> float:
    """util.GetEarliestPodStartTime: the earliest start among the highest-priority victims."""
    pods = victims.pods
    best = _start_time(pods[0], now)
    top = pods[0].priority
    for p in pods:
        if p.priority == top:
            best = min(best, _start_time(p, now))
        elif p.priority > top:
            top = p.priority
            best = _start_time(p, now)
    return best


def pick_one_node_for_preemption(candidates: Sequence[Candidate], now: float | None = None) -> str:
    if not candidates:
        return ""
    now = time.time() if now is None else now
    by_name = {c.node_name: c.victims for c in candidates}
    funcs = [
        lambda n: -by_name[n].num_pdb_violations,
        lambda n: -by_name[n].pods[0].priority,
        lambda n: -sum(p.priority + _MAX_INT32 + 1 for p in by_name[n].pods),
        lambda n: -len(by_name[n].pods),
        lambda n: _earliest_start_of_highest(by_name[n], now),
    ]
    names = [c.node_name for c in candidates]
    for f in funcs:
        scores = [f(n) for n in names]
        best = max(scores)
        names = [n for n, s in zip(names, scores) if s == best]
        if len(names) == 1:
            return names[0]
    return names[0]


class DefaultPreemption:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.handle = handle
        self.cache = handle.cache
        self.min_pct = int(args.get("minCandidateNodesPercentage", 10))
        self.min_abs = int(args.get("minCandidateNodesAbsolute", 100))

    # -- entry point --------------------------------------------------------------------------------------------

    def post_filter(self, state: CycleState, pod: PodInfo,
                    statuses: NodeToStatus) -> tuple[PostFilterResult | None, Status | None]:
        ok, msg = self.pod_eligible_to_preempt_others(pod, statuses)
        if not ok:
            return None, Status(Code.UNSCHEDULABLE, "preemption: " + msg)
        candidates, node_statuses, err = self.find_candidates(state, pod, statuses)
        if not candidates:
            if err is not None:
                return None, err
            return self.no_candidates(pod, node_statuses)
        return self.finish(pod, candidates)

    def no_candidates(self, pod: PodInfo, node_statuses: NodeToStatus) -> tuple[PostFilterResult, Status]:
        from .core import FitError  # the message format lives with FitError
        fe = FitError(pod, self.cache.num_nodes, node_statuses)
        return (PostFilterResult("", clear_own_nomination=bool(pod.nominated_node_name)),
                Status(Code.UNSCHEDULABLE, "preemption: " + str(fe)))

    def finish(self, pod: PodInfo, candidates: Sequence[Candidate]) -> tuple[PostFilterResult | None, Status | None]:
        best = self.select_candidate(candidates)
        if best is None:
            return None, Status(Code.UNSCHEDULABLE, "preemption: no candidate node for preemption")
        nom = self.handle.nominator
        lower = [p for p in (nom.nominated_pods_for_node(best.node_name) if nom is not None else ())
                 if p.priority < pod.priority and p.uid != pod.uid]
        return PostFilterResult(best.node_name, list(best.victims.pods), lower), None

    # -- eligibility --------------------------------------------------------------------------------------------

    def pod_eligible_to_preempt_others(self, pod: PodInfo, statuses: NodeToStatus) -> tuple[bool, str]:
        if pod.preemption_policy == "Never":
            return False, "not eligible due to preemptionPolicy=Never."
        nn = pod.nominated_node_name
        if nn:
            if statuses.get(nn).code == Code.UNSCHEDULABLE_AND_UNRESOLVABLE:
                return True, ""
            info = self.cache.node_info(nn)
            if info is not None:
                for p in info.pods.values():
                    if p.priority < pod.priority and p.deleting:
                        return False, "not eligible due to a terminating pod on the nominated node."
        return True, ""

    # -- candidates ---------------------------------------------------------------------------------------------

    def num_candidates(self, num_nodes: int) -> int:
        n = num_nodes * self.min_pct // 100
        n = max(n, self.min_abs)
        return min(n, num_nodes)

    def find_candidates(self, state: CycleState, pod: PodInfo,
                        statuses: NodeToStatus) -> tuple[list[Candidate], NodeToStatus, Status | None]:
        all_nodes = self.cache.node_infos()
        out = NodeToStatus(absent=Status.unresolvable(MSG_NOT_HELPFUL))
        if not all_nodes:
            return [], out, Status.as_error("no nodes available")
        potential: list[NodeInfo] = []
        not_helpful = Status.unresolvable(MSG_NOT_HELPFUL)
        for n in all_nodes:
            if statuses.get(n.name).code == Code.UNSCHEDULABLE_AND_UNRESOLVABLE:
                out.set(n.name, not_helpful)
            else:
                potential.append(n)
        if not potential:
            return [], out, None
        pdbs = self.cache.list_objects("PodDisruptionBudget")
        offset = self.handle.rng.randrange(len(potential))
        want = self.num_candidates(len(potential))
        non_violating: list[Candidate] = []
        violating: list[Candidate] = []
        errors: list[Status] = []
        now = time.time()
        for i in range(len(potential)):
            node = potential[(offset + i) % len(potential)]
            victims, n_viol, st = self.select_victims_on_node(state.clone(), pod, node.clone(), pdbs, now)
            if st is None and victims:
                c = Candidate(node.name, Victims(victims, n_viol))
                (non_violating if n_viol == 0 else violating).append(c)
                if non_violating and len(non_violating) + len(violating) >= want:
                    break
                continue
            if st is None:
                st = Status.as_error(f"expected at least one victim pod on node {node.name!r}")
            if st.code == Code.ERROR:
                errors.append(st)
            out.set(node.name, st)
        cands = non_violating + violating
        return cands, out, (errors[0] if errors and not cands else None)

    def select_victims_on_node(self, state: CycleState, pod: PodInfo, node: NodeInfo,
                               pdbs: Sequence[Mapping[str, Any]], now: float | None = None
                               ) -> tuple[list[PodInfo], int, Status | None]:
        fwk = self.handle.framework
        assert fwk is not None
        now = time.time() if now is None else now
        potential = [p for p in node.pods.values() if p.priority < pod.priority]
        if not potential:
            return [], 0, Status.unresolvable(MSG_NO_VICTIMS)
        for p in potential:
            node.remove_pod(p)
            s = fwk.run_pre_filter_remove_pod(state, pod, p, node)
            if s is not None:
                return [], 0, s
        s = fwk.run_filter_with_nominated_pods(state, pod, node)
        if s is not None and not s.is_success():
            return [], 0, s
        potential.sort(key=_importance_key(now))
        violating, non_violating = filter_pods_with_pdb_violation(potential, pdbs)
        victims: list[PodInfo] = []

        def reprieve(p: PodInfo) -> bool:
            node.add_pod(p)
            fwk.run_pre_filter_add_pod(state, pod, p, node)
            st = fwk.run_filter_with_nominated_pods(state, pod, node)
            if st is None or st.is_success():
                return True
            node.remove_pod(p)
            fwk.run_pre_filter_remove_pod(state, pod, p, node)
            victims.append(p)
            return False

        n_viol = 0
        for p in violating:
            if not reprieve(p):
                n_viol += 1
        for p in non_violating:
            reprieve(p)
        if violating and non_violating:
            victims.sort(key=_importance_key(now))
        return victims, n_viol, None

    def select_candidate(self, candidates: Sequence[Candidate]) -> Candidate | None:
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        name = pick_one_node_for_preemption(candidates)
        for c in candidates:
            if c.node_name == name:
                return c
        return candidates[0]


async def execute_preemption(pod: PodInfo, result: PostFilterResult, actions: PreemptionActions) -> None:
    """prepareCandidate: evict the victims and clear the lower-priority nominations on the chosen node, then
    record the preemptor's nomination (done by upstream's failure handler)."""
    for v in result.victims:
        await actions.evict(v.pod, pod.pod, result.nominated_node_name)
    for p in result.clear_nominations:
        await actions.set_nominated_node_name(p.pod, "")
    if result.nominated_node_name or result.clear_own_nomination:
        await actions.set_nominated_node_name(pod.pod, result.nominated_node_name)
