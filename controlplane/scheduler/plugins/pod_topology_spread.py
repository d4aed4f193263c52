"""PodTopologySpread: spread matching pods evenly across topology domains -- DoNotSchedule constraints filter
(maxSkew, minDomains, nodeAffinityPolicy/nodeTaintsPolicy), ScheduleAnyway constraints score -- and the system
default constraints (hostname maxSkew 3, zone maxSkew 5) for pods of Services, ReplicaSets, StatefulSets and
ReplicationControllers that set none.

Matching-pod counts per node come from the snapshot's pod groups and are folded into per-domain counts with a
bincount over the topology key's label codes, so both Filter and Score are gathers over the node arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..cache import LABEL_HOSTNAME, LABEL_ZONE, NodeInfo
from ..framework import (
    MAX_NODE_SCORE,
    ActionType,
    ClusterEvent,
    ClusterEventWithHint,
    CycleState,
    FrameworkError,
    Handle,
    NodeList,
    PreFilterResult,
    Status,
)
from ..labels import (
    NO_EXECUTE,
    NO_SCHEDULE,
    NOTHING,
    Selector,
    find_untolerated_taint,
    label_selector,
)
from ..podinfo import PodInfo
from .node_affinity import pod_matches_node, required_mask

NAME = "PodTopologySpread"
ERR_CONSTRAINTS = "node(s) didn't match pod topology spread constraints"
ERR_MISSING_LABEL = ERR_CONSTRAINTS + " (missing required label)"
_STATE = NAME + "/prefilter"
_SCORE_STATE = NAME + "/prescore"
DEFAULT_ARGS: dict[str, Any] = {"defaultConstraints": [], "defaultingType": "System"}
SYSTEM_DEFAULT_CONSTRAINTS = [
    {"topologyKey": LABEL_HOSTNAME, "whenUnsatisfiable": "ScheduleAnyway", "maxSkew": 3},
    {"topologyKey": LABEL_ZONE, "whenUnsatisfiable": "ScheduleAnyway", "maxSkew": 5},
]
_MAX_INT32 = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class Constraint:
    max_skew: int
    topology_key: str
    selector: Selector
    min_domains: int = 1
    node_affinity_policy: str = "Honor"
    node_taints_policy: str = "Ignore"


def _with_match_label_keys(raw_selector: Mapping[str, Any] | None, keys: list[str],
                           labels: Mapping[str, str]) -> Selector:
    sel = label_selector(raw_selector)
    extra = {k: labels[k] for k in keys if k in labels}
    if not extra or sel is NOTHING:
        return sel
    raw = dict(raw_selector or {})
    exprs = list(raw.get("matchExpressions") or [])
    exprs += [{"key": k, "operator": "In", "values": [v]} for k, v in extra.items()]
    raw["matchExpressions"] = exprs
    return label_selector(raw)


def constraints_for(raw: Sequence[Mapping[str, Any]], labels: Mapping[str, str], action: str) -> list[Constraint]:
    """filterTopologySpreadConstraints: the constraints with ``action``, with their defaults applied."""
    out = []
    for c in raw:
        if c.get("whenUnsatisfiable", "DoNotSchedule") != action:
            continue
        sel = _with_match_label_keys(c.get("labelSelector"), list(c.get("matchLabelKeys") or []), labels)
        out.append(Constraint(int(c.get("maxSkew") or 1), c.get("topologyKey", ""), sel,
                              int(c.get("minDomains") or 1), c.get("nodeAffinityPolicy") or "Honor",
                              c.get("nodeTaintsPolicy") or "Ignore"))
    return out


class _FilterState:
    __slots__ = ("constraints", "counts", "present", "self_match", "deltas")

    def __init__(self) -> None:
        self.constraints: list[Constraint] = []
        self.counts: list[np.ndarray] = []  # per constraint: matching pods per value code
        self.present: list[np.ndarray] = []  # per constraint: which value codes are eligible domains
        self.self_match: list[int] = []
        self.deltas: dict[tuple[int, int], int] = {}

    def clone(self) -> _FilterState:
        c = _FilterState()
        c.constraints, c.counts, c.present, c.self_match = self.constraints, self.counts, self.present, self.self_match
        c.deltas = dict(self.deltas)
        return c

    def min_match(self, i: int) -> int:
        present = self.present[i]
        domains = int(np.count_nonzero(present))
        if domains == 0:
            m = _MAX_INT32
        else:
            arr = self.counts[i]
            if self.deltas:
                arr = arr.copy()
                for (j, code), d in self.deltas.items():
                    if j == i:
                        arr[code] += d
            m = int(arr[present].min())
        if domains < self.constraints[i].min_domains:
            m = 0
        return m


class PodTopologySpread:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.handle = handle
        self.cache = handle.cache
        dtype = args.get("defaultingType") or "System"
        if dtype not in ("System", "List"):
            raise FrameworkError(f"defaultingType {dtype!r} is not supported")
        if dtype == "System":
            self.default_constraints: list[Mapping[str, Any]] = list(SYSTEM_DEFAULT_CONSTRAINTS)
            self.system_defaulted = True
        else:
            self.default_constraints = list(args.get("defaultConstraints") or [])
            self.system_defaulted = False
            for c in self.default_constraints:
                if c.get("labelSelector") is not None:
                    raise FrameworkError("defaultConstraints must not set labelSelector")
        # Without matchLabelKeys the defaults don't depend on the pod: parse them once.
        self._defaults_static = not any(c.get("matchLabelKeys") for c in self.default_constraints)
        self._defaults_by_action = {a: constraints_for(list(self.default_constraints), {}, a)
                                    for a in ("DoNotSchedule", "ScheduleAnyway")}

    # -- constraints --------------------------------------------------------------------------------------------

    def default_selector(self, pod: PodInfo) -> Selector | None:
        """helper.DefaultSelector: the union of the selectors of Services selecting the pod and of its controller
        (ReplicationController, ReplicaSet, StatefulSet); None when that is empty."""
        c = self.cache
        owners = (pod.pod.get("metadata") or {}).get("ownerReferences")
        if not owners and not c.objects.get("Service"):
            return None
        match_labels: dict[str, str] = {}
        exprs: list[dict[str, Any]] = []
        for svc in c.objects.get("Service", {}).values():
            md = svc.get("metadata") or {}
            if (md.get("namespace") or "default") != pod.namespace:
                continue
            sel = (svc.get("spec") or {}).get("selector")
            if sel is None:
                continue
            if all(pod.labels.get(k) == v for k, v in sel.items()):
                match_labels.update(sel)
        owner = next((o for o in (pod.pod.get("metadata") or {}).get("ownerReferences") or () if o.get("controller")),
                     None)
        if owner is not None:
            kind, api = owner.get("kind"), owner.get("apiVersion", "")
            key = f"{pod.namespace}/{owner.get('name', '')}"
            if kind == "ReplicationController" and api == "v1":
                rc = c.get_object("ReplicationController", key)
                if rc is not None:
                    match_labels.update((rc.get("spec") or {}).get("selector") or {})
            elif kind in ("ReplicaSet", "StatefulSet") and api == "apps/v1":
                obj = c.get_object(kind, key)
                if obj is not None:
                    sel = (obj.get("spec") or {}).get("selector") or {}
                    exprs += [{"key": k, "operator": "In", "values": [v]} for k, v in (sel.get("matchLabels") or {}).items()]
                    exprs += list(sel.get("matchExpressions") or [])
        if not match_labels and not exprs:
            return None
        return label_selector({"matchLabels": match_labels, "matchExpressions": exprs})

    def _constraints(self, pod: PodInfo, action: str) -> list[Constraint]:
        if pod.spread_constraints:
            return constraints_for(pod.spread_constraints, pod.labels, action)
        if self._defaults_static:
            cons = self._defaults_by_action.get(action, [])
        else:
            cons = constraints_for(list(self.default_constraints), pod.labels, action)
        if not cons:
            return []
        sel = self.default_selector(pod)
        if sel is None:
            return []
        return [Constraint(x.max_skew, x.topology_key, sel, x.min_domains, x.node_affinity_policy,
                           x.node_taints_policy) for x in cons]

    def _matching_per_node(self, pod: PodInfo, c: Constraint) -> np.ndarray:
        ns = pod.namespace
        sel = c.selector
        groups = self.cache.groups_matching(("pts", ns, sel.key),
                                            lambda g: g.namespace == ns and not g.deleting and sel.matches(g.labels))
        return self.cache.pod_counts(groups)

    def _policy_mask(self, pod: PodInfo, c: Constraint) -> np.ndarray | None:
        mask: np.ndarray | None = None
        if c.node_affinity_policy == "Honor":
            mask = required_mask(self.cache, pod)
        if c.node_taints_policy == "Honor":
            tt = self.handle.framework.all_plugins.get("TaintToleration") if self.handle.framework else None
            if tt is not None:
                m = tt.filter_vector(CycleState(), pod)
            else:
                infos = self.cache.infos
                m = np.asarray([i is not None and find_untolerated_taint(i.taints, pod.tolerations,
                                                                         (NO_SCHEDULE, NO_EXECUTE)) is None
                                for i in infos], bool)
            mask = m if mask is None else mask & m
        return mask

    def _node_included(self, pod: PodInfo, c: Constraint, node: NodeInfo) -> bool:
        if c.node_affinity_policy == "Honor" and not pod_matches_node(pod, node.labels, node.name):
            return False
        if c.node_taints_policy == "Honor" and \
                find_untolerated_taint(node.taints, pod.tolerations, (NO_SCHEDULE, NO_EXECUTE)) is not None:
            return False
        return True

    def _has_all_keys(self, constraints: list[Constraint]) -> np.ndarray:
        c = self.cache
        mask = c.live.copy()
        for con in constraints:
            codes = c.codes(con.topology_key)
            if codes is None:
                return np.zeros(c.capacity, bool)
            mask &= codes > 0
        return mask

    # -- prefilter / filter -------------------------------------------------------------------------------------

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        constraints = self._constraints(pod, "DoNotSchedule")
        if not constraints:
            return None, Status.skip()
        c = self.cache
        s = _FilterState()
        s.constraints = constraints
        base = self._has_all_keys(constraints)
        for con in constraints:
            nv = c.num_values(con.topology_key)
            codes = c.codes(con.topology_key)
            eligible = base
            pm = self._policy_mask(pod, con)
            if pm is not None:
                eligible = eligible & pm
            if codes is None:
                s.counts.append(np.zeros(nv, np.int64))
                s.present.append(np.zeros(nv, bool))
            else:
                per_node = self._matching_per_node(pod, con)
                ec = codes[eligible]
                s.counts.append(np.bincount(ec, weights=per_node[eligible], minlength=nv).astype(np.int64))
                present = np.bincount(ec, minlength=nv) > 0
                present[0] = False
                s.present.append(present)
            s.self_match.append(1 if con.selector.matches(pod.labels) else 0)
        state.write(_STATE, s)
        return None, None

    def pre_filter_extensions(self) -> PodTopologySpread:
        return self

    def _update(self, state: CycleState, pod: PodInfo, other: PodInfo, node: NodeInfo, delta: int) -> Status | None:
        s: _FilterState | None = state.get(_STATE)
        if s is None or other.namespace != pod.namespace:
            return None
        if any(con.topology_key not in node.labels for con in s.constraints):
            return None
        for i, con in enumerate(s.constraints):
            if not con.selector.matches(other.labels) or not self._node_included(pod, con, node):
                continue
            code = self.cache.value_code(con.topology_key, node.labels[con.topology_key])
            s.deltas[(i, code)] = s.deltas.get((i, code), 0) + delta
        return None

    def add_pod(self, state: CycleState, pod: PodInfo, to_add: PodInfo, node: NodeInfo) -> Status | None:
        return self._update(state, pod, to_add, node, 1)

    def remove_pod(self, state: CycleState, pod: PodInfo, to_remove: PodInfo, node: NodeInfo) -> Status | None:
        return self._update(state, pod, to_remove, node, -1)

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        s: _FilterState | None = state.get(_STATE)
        if s is None:
            return None
        for i, con in enumerate(s.constraints):
            v = node.labels.get(con.topology_key)
            if v is None:
                return Status.unresolvable(ERR_MISSING_LABEL)
            code = self.cache.value_code(con.topology_key, v)
            count = int(s.counts[i][code]) if code < s.counts[i].shape[0] else 0
            count += s.deltas.get((i, code), 0)
            if count + s.self_match[i] - s.min_match(i) > con.max_skew:
                return Status.unschedulable(ERR_CONSTRAINTS)
        return None

    def _fail_codes(self, s: _FilterState) -> np.ndarray:
        """0 = passes; otherwise 1 + 2*i (missing label of constraint i) or 2 + 2*i (skew of constraint i)."""
        c = self.cache
        out = np.zeros(c.capacity, np.int64)
        for i in reversed(range(len(s.constraints))):
            con = s.constraints[i]
            codes = c.codes(con.topology_key)
            if codes is None:
                out[:] = 1 + 2 * i
                continue
            skew_bad = s.counts[i][codes] + s.self_match[i] - s.min_match(i) > con.max_skew
            out = np.where(codes == 0, 1 + 2 * i, np.where(skew_bad, 2 + 2 * i, out))
        return out

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        s: _FilterState | None = state.get(_STATE)
        if s is None:
            return np.ones(self.cache.capacity, bool)
        if s.deltas:
            infos = self.cache.infos
            return np.asarray([i is not None and self.filter(state, pod, i) is None for i in infos], bool)
        return self._fail_codes(s) == 0

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status | None]:
        s: _FilterState | None = state.get(_STATE)
        if s is None or s.deltas:
            return [self.filter(state, pod, self.cache.infos[x]) for x in slots.tolist()]  # type: ignore[arg-type]
        codes = self._fail_codes(s)[slots]
        out: list[Status | None] = []
        for v in codes.tolist():
            if v == 0:
                out.append(None)
            elif v % 2 == 1:
                out.append(Status.unresolvable(ERR_MISSING_LABEL))
            else:
                out.append(Status.unschedulable(ERR_CONSTRAINTS))
        return out

    # -- score --------------------------------------------------------------------------------------------------

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        if len(nodes) == 0 or self.cache.num_nodes == 0:
            return None
        constraints = self._constraints(pod, "ScheduleAnyway")
        if not constraints:
            return Status.skip()
        c = self.cache
        require_all = bool(pod.spread_constraints) or not self.system_defaulted
        slots = nodes.slots
        ignored = np.zeros(len(slots), bool)
        if require_all:
            ignored = ~self._has_all_keys(constraints)[slots]
        kept = slots[~ignored]
        weights: list[float] = []
        by_value: list[np.ndarray | None] = []
        per_node_counts: list[np.ndarray | None] = []
        base = self._has_all_keys(constraints) if require_all else c.live
        for con in constraints:
            codes = c.codes(con.topology_key)
            per_node = self._matching_per_node(pod, con)
            if con.topology_key == LABEL_HOSTNAME:
                size = len(kept)
                by_value.append(None)
                per_node_counts.append(per_node)
            else:
                if codes is None:
                    size = 0
                    by_value.append(None)
                else:
                    kept_codes = codes[kept]
                    size = len(np.unique(kept_codes[kept_codes > 0]))
                    if not require_all and bool((kept_codes == 0).any()):
                        size += 1  # nodes without the key form the "" domain upstream
                    eligible = base
                    pm = self._policy_mask(pod, con)
                    if pm is not None:
                        eligible = eligible & pm
                    by_value.append(np.bincount(codes[eligible], weights=per_node[eligible],
                                                minlength=c.num_values(con.topology_key)).astype(np.int64))
                per_node_counts.append(None)
            weights.append(math.log(size + 2))
        state.write(_SCORE_STATE, (constraints, ignored, weights, by_value, per_node_counts))
        return None

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        st = state.get(_SCORE_STATE)
        n = len(nodes)
        if st is None:
            return np.zeros(n, np.int64)
        constraints, ignored, weights, by_value, per_node_counts = st
        slots = nodes.slots
        score = np.zeros(n)
        for i, con in enumerate(constraints):
            codes = self.cache.codes(con.topology_key)
            if codes is None:
                continue
            node_codes = codes[slots]
            has = node_codes > 0
            if per_node_counts[i] is not None:
                cnt = per_node_counts[i][slots]
            else:
                bv = by_value[i]
                cnt = bv[node_codes] if bv is not None else np.zeros(n, np.int64)
            score += np.where(has, cnt * weights[i] + (con.max_skew - 1), 0.0)
        out = np.floor(score + 0.5).astype(np.int64)  # math.Round on non-negative scores
        return np.where(ignored, 0, out)

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        nl = NodeList(self.cache, np.asarray([node.slot], np.int64))
        return int(self.score_vector(state, pod, nl)[0])

    def normalize_score(self, state: CycleState, pod: PodInfo, nodes: NodeList, scores: np.ndarray) -> np.ndarray:
        st = state.get(_SCORE_STATE)
        if st is None or scores.size == 0:
            return scores
        ignored = st[1]
        considered = scores[~ignored]
        if considered.size == 0:
            return np.zeros_like(scores)
        lo, hi = int(considered.min()), int(considered.max())
        if hi == 0:
            out = np.full_like(scores, MAX_NODE_SCORE)
        else:
            out = MAX_NODE_SCORE * (hi + lo - scores) // hi
        return np.where(ignored, 0, out)

    # -- events -------------------------------------------------------------------------------------------------

    def events_to_register(self) -> list[ClusterEventWithHint]:
        return [
            ClusterEventWithHint(ClusterEvent("AssignedPod", ActionType.ADD | ActionType.UPDATE_POD_LABEL
                                              | ActionType.DELETE)),
            ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.DELETE | ActionType.UPDATE_NODE_LABEL
                                              | ActionType.UPDATE_NODE_TAINT)),
        ]
