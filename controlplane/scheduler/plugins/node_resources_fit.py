"""NodeResourcesFit: a pod fits a node when every resource it requests is free there (and a pod slot is left);
nodes are scored by LeastAllocated (default), MostAllocated or RequestedToCapacityRatio.

The fit check is one compare per requested resource against the snapshot's maintained ``free`` rows; a request
above a node's whole allocatable is UnschedulableAndUnresolvable there, so preemption skips such nodes. Scoring
uses the non-zero requests (100m / 200Mi for containers without requests) as upstream, on the feasible nodes only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..cache import NodeInfo
from ..framework import (
    ActionType,
    ClusterEvent,
    ClusterEventWithHint,
    CycleState,
    FrameworkError,
    Handle,
    NodeList,
    PreFilterResult,
    QueueingHint,
    Status,
)
from ..podinfo import PodInfo, is_scalar_resource

NAME = "NodeResourcesFit"
_STATE = NAME + "/prefilter"
_SCORE_STATE = NAME + "/prescore"
MAX_UTILIZATION = 100
MAX_CUSTOM_PRIORITY_SCORE = 10

DEFAULT_ARGS: dict[str, Any] = {
    "ignoredResources": [],
    "ignoredResourceGroups": [],
    "scoringStrategy": {"type": "LeastAllocated", "resources": [{"name": "cpu", "weight": 1},
                                                               {"name": "memory", "weight": 1}]},
}


def _is_extended(name: str) -> bool:
    return "/" in name and not name.startswith("kubernetes.io/") and not name.startswith("requests.")


def fit_failures(requests: Mapping[str, int], node: NodeInfo, ignored: frozenset[str] = frozenset(),
                 ignored_groups: frozenset[str] = frozenset()) -> list[tuple[str, bool]]:
    """fitsRequest: (reason, unresolvable) per insufficient resource, in upstream's order."""
    out: list[tuple[str, bool]] = []
    alloc, used = node.allocatable, node.requested
    if len(node.pods) + 1 > alloc.get("pods", 0):
        out.append(("Too many pods", False))
    if not any(requests.values()):
        return out
    for name in ("cpu", "memory", "ephemeral-storage"):
        r = requests.get(name, 0)
        a = alloc.get(name, 0)
        if r > 0 and r > a - used.get(name, 0):
            out.append((f"Insufficient {name}", r > a))
    for name in sorted(k for k in requests if is_scalar_resource(k)):
        r = requests[name]
        if r == 0:
            continue
        if _is_extended(name) and (name in ignored or name.split("/", 1)[0] in ignored_groups):
            continue
        a = alloc.get(name, 0)
        if r > a - used.get(name, 0):
            out.append((f"Insufficient {name}", r > a))
    return out


def _status(failures: Sequence[tuple[str, bool]]) -> Status | None:
    if not failures:
        return None
    code_unresolvable = any(u for _, u in failures)
    reasons = [r for r, _ in failures]
    return Status.unresolvable(*reasons) if code_unresolvable else Status.unschedulable(*reasons)


def broken_linear(shape: Sequence[tuple[int, int]], p: np.ndarray) -> np.ndarray:
    """helper.BuildBrokenLinearFunction with Go's truncating integer division, over an array of utilizations."""
    utils = np.asarray([u for u, _ in shape], np.int64)
    scores = np.asarray([s for _, s in shape], np.int64)
    out = np.full(p.shape, scores[-1], np.int64)
    idx = np.searchsorted(utils, p, side="left")  # first i with p <= utils[i]
    first = idx == 0
    out[first] = scores[0]
    mid = (idx > 0) & (idx < len(utils))
    if mid.any():
        i = idx[mid]
        num = (scores[i] - scores[i - 1]) * (p[mid] - utils[i - 1])
        den = utils[i] - utils[i - 1]
        q = np.abs(num) // den * np.sign(num)  # truncate toward zero like Go
        out[mid] = scores[i - 1] + q
    return out


class NodeResourcesFit:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache
        self.ignored = frozenset(args.get("ignoredResources") or ())
        self.ignored_groups = frozenset(args.get("ignoredResourceGroups") or ())
        strategy = args.get("scoringStrategy") or DEFAULT_ARGS["scoringStrategy"]
        self.strategy = strategy.get("type") or "LeastAllocated"
        if self.strategy not in ("LeastAllocated", "MostAllocated", "RequestedToCapacityRatio"):
            raise FrameworkError(f"scoring strategy {self.strategy!r} is not supported")
        self.resources: list[tuple[str, int]] = [
            (r["name"], int(r.get("weight") or 1)) for r in (strategy.get("resources") or
                                                              DEFAULT_ARGS["scoringStrategy"]["resources"])]
        self.shape: list[tuple[int, int]] = []
        if self.strategy == "RequestedToCapacityRatio":
            raw = (strategy.get("requestedToCapacityRatio") or {}).get("shape") or []
            if not raw:
                raise FrameworkError("requestedToCapacityRatio shape must not be empty")
            scale = 100 // MAX_CUSTOM_PRIORITY_SCORE
            self.shape = [(int(p["utilization"]), int(p["score"]) * scale) for p in raw]
            if any(b[0] <= a[0] for a, b in zip(self.shape, self.shape[1:])):
                raise FrameworkError("requestedToCapacityRatio shape utilization values must be sorted increasingly")

    # -- prefilter / filter -------------------------------------------------------------------------------------

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        state.write(_STATE, pod.requests)
        return None, None

    def _requests(self, state: CycleState, pod: PodInfo) -> Mapping[str, int]:
        r = state.get(_STATE)
        return r if r is not None else pod.requests

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        return _status(fit_failures(self._requests(state, pod), node, self.ignored, self.ignored_groups))

    def _checked(self, requests: Mapping[str, int]) -> list[tuple[str, int]]:
        out = []
        for name in ("cpu", "memory", "ephemeral-storage"):
            r = requests.get(name, 0)
            if r > 0:
                out.append((name, r))
        for name in sorted(k for k in requests if is_scalar_resource(k)):
            r = requests[name]
            if r == 0 or (_is_extended(name) and (name in self.ignored or name.split("/", 1)[0] in self.ignored_groups)):
                continue
            out.append((name, r))
        return out

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        c = self.cache
        ok = c.free[3] >= 1  # a pod slot left
        for name, r in self._checked(self._requests(state, pod)):
            row = c.resource_index.get(name)
            if row is None:
                return np.zeros(c.capacity, bool)  # no node offers this resource at all
            ok &= c.free[row] >= r
        return ok

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status | None]:
        c = self.cache
        checks: list[tuple[str, np.ndarray, np.ndarray]] = [("Too many pods", c.free[3][slots] < 1,
                                                            np.zeros(len(slots), bool))]
        for name, r in self._checked(self._requests(state, pod)):
            row = c.resource_index.get(name)
            if row is None:
                insufficient = np.ones(len(slots), bool)
                unresolvable = np.ones(len(slots), bool)
            else:
                insufficient = c.free[row][slots] < r
                unresolvable = c.alloc[row][slots] < r
            checks.append((f"Insufficient {name}", insufficient, unresolvable))
        code = np.zeros(len(slots), np.int64)
        for i, (_, ins, unres) in enumerate(checks):
            code |= ins.astype(np.int64) << (2 * i)
            code |= (ins & unres).astype(np.int64) << (2 * i + 1)
        memo: dict[int, Status | None] = {}
        out: list[Status | None] = []
        for v in code.tolist():
            if v not in memo:
                fails = [(reason, bool(v >> (2 * i + 1) & 1)) for i, (reason, _, _) in enumerate(checks)
                         if v >> (2 * i) & 1]
                memo[v] = _status(fails)
            out.append(memo[v])
        return out

    # -- score --------------------------------------------------------------------------------------------------

    def _pod_score_requests(self, pod: PodInfo) -> list[int]:
        out = []
        for name, _ in self.resources:
            if name == "cpu":
                out.append(pod.nonzero_cpu)
            elif name == "memory":
                out.append(pod.nonzero_mem)
            else:
                out.append(pod.requests.get(name, 0))
        return out

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        state.write(_SCORE_STATE, self._pod_score_requests(pod))
        return None

    def _alloc_req(self, i: int, name: str, pod_req: int, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """calculateResourceAllocatableRequest over ``slots`` (non-zero requested for cpu and memory)."""
        c = self.cache
        n = len(slots)
        if pod_req == 0 and is_scalar_resource(name):
            return np.zeros(n, np.int64), np.zeros(n, np.int64)
        row = c.resource_index.get(name)
        if row is None:
            return np.zeros(n, np.int64), np.zeros(n, np.int64)
        alloc = c.alloc[row][slots]
        if name == "cpu":
            req = c.nz_cpu[slots] + pod_req
        elif name == "memory":
            req = c.nz_mem[slots] + pod_req
        else:
            req = c.req[row][slots] + pod_req
        return alloc, req

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        pod_reqs = state.get(_SCORE_STATE) or self._pod_score_requests(pod)
        if self.strategy != "RequestedToCapacityRatio":
            fast = self._score_fast(pod_reqs, nodes.slots)
            if fast is not None:
                return fast
        return self._score_general(pod_reqs, nodes)

    def _score_fast(self, pod_reqs: list[int], slots: np.ndarray) -> np.ndarray | None:
        """Least/MostAllocated when every scored resource has non-zero allocatable on every node (the usual case):
        no masking needed, a handful of vector ops per resource."""
        c = self.cache
        total: np.ndarray | None = None
        wsum = 0
        for (name, weight), pr in zip(self.resources, pod_reqs):
            if pr == 0 and is_scalar_resource(name):
                continue
            row = c.resource_index.get(name)
            if row is None:
                continue
            alloc = c.alloc[row][slots]
            if alloc.size and int(alloc.min()) <= 0:
                return None
            if name == "cpu":
                req = c.nz_cpu[slots] + pr
            elif name == "memory":
                req = c.nz_mem[slots] + pr
            else:
                req = c.req[row][slots] + pr
            if self.strategy == "LeastAllocated":
                sc = np.maximum((alloc - req) * 100 // alloc, 0)
            else:
                sc = np.minimum(req, alloc) * 100 // alloc
            if weight != 1:
                sc = sc * weight
            total = sc if total is None else total + sc
            wsum += weight
        if total is None or wsum == 0:
            return np.zeros(len(slots), np.int64)
        return total // wsum

    def _score_general(self, pod_reqs: list[int], nodes: NodeList) -> np.ndarray:
        n = len(nodes)
        node_score = np.zeros(n, np.int64)
        weight_sum = np.zeros(n, np.int64)
        slots = nodes.slots
        for i, (name, weight) in enumerate(self.resources):
            alloc, req = self._alloc_req(i, name, pod_reqs[i], slots)
            has = alloc != 0
            safe = np.where(has, alloc, 1)
            if self.strategy == "LeastAllocated":
                s = np.where(req > alloc, 0, (alloc - req) * 100 // safe)
                include = has
            elif self.strategy == "MostAllocated":
                s = np.minimum(req, alloc) * 100 // safe
                include = has
            else:
                util = np.where(has & (req <= alloc), req * MAX_UTILIZATION // safe, MAX_UTILIZATION)
                s = broken_linear(self.shape, util)
                include = has & (s > 0)
            node_score += np.where(include, s * weight, 0)
            weight_sum += np.where(include, weight, 0)
        safe_w = np.where(weight_sum == 0, 1, weight_sum)
        if self.strategy == "RequestedToCapacityRatio":
            out = np.floor(node_score / safe_w + 0.5).astype(np.int64)  # math.Round on non-negative values
        else:
            out = node_score // safe_w
        return np.where(weight_sum == 0, 0, out)

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        nl = NodeList(self.cache, np.asarray([node.slot], np.int64))
        return int(self.score_vector(state, pod, nl)[0])

    # -- events -------------------------------------------------------------------------------------------------

    def events_to_register(self) -> list[ClusterEventWithHint]:
        def node_hint(pod: PodInfo, old: Any, new: Any) -> QueueingHint:
            if new is None:
                return QueueingHint.QUEUE
            from ..cache import allocatable_of
            alloc = allocatable_of(new)
            for name, r in pod.requests.items():
                if r > alloc.get(name, 0) and not (_is_extended(name) and name in self.ignored):
                    return QueueingHint.SKIP
            return QueueingHint.QUEUE
        return [
            ClusterEventWithHint(ClusterEvent("AssignedPod", ActionType.DELETE | ActionType.UPDATE_POD_SCALE_DOWN)),
            ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_ALLOCATABLE), node_hint),
            ClusterEventWithHint(ClusterEvent("UnscheduledPod", ActionType.UPDATE_POD_SCALE_DOWN)),
        ]
