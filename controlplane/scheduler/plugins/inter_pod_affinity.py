"""InterPodAffinity: required pod affinity / anti-affinity filter nodes by topology domain, the anti-affinity of
pods already running is honoured symmetrically, and preferred terms (of the pod and of existing pods) score nodes.

Upstream walks every existing pod for every pod it schedules. Here the snapshot groups pods by (namespace, labels)
with per-node counts and indexes the distinct affinity terms of existing pods with per-node counts, so PreFilter
evaluates each selector once per group (memoised across cycles) and turns per-node counts into per-topology-value
counts with one bincount over the topology key's label codes. Filter and Score are then gathers over all nodes.
namespaceSelector terms are resolved through the namespace lister callable of the framework handle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..cache import PREF_AFFINITY, PREF_ANTI, REQ_AFFINITY, REQ_ANTI, NodeInfo
from ..framework import (
    MAX_NODE_SCORE,
    ActionType,
    ClusterEvent,
    ClusterEventWithHint,
    CycleState,
    Handle,
    NodeList,
    PreFilterResult,
    QueueingHint,
    Status,
)
from ..labels import EVERYTHING, NOTHING
from ..podinfo import AffinityTerm, PodInfo

NAME = "InterPodAffinity"
ERR_AFFINITY = "node(s) didn't match pod affinity rules"
ERR_ANTI = "node(s) didn't match pod anti-affinity rules"
ERR_EXISTING_ANTI = "node(s) didn't satisfy existing pods anti-affinity rules"
_STATE = NAME + "/prefilter"
_SCORE_STATE = NAME + "/prescore"
DEFAULT_ARGS: dict[str, Any] = {"hardPodAffinityWeight": 1, "ignorePreferredTermsOfExistingPods": False}

_EXISTING, _AFF, _ANTI = 0, 1, 2


def resolve_namespaces(term: AffinityTerm, ns_labels: Mapping[str, Mapping[str, str]]) -> AffinityTerm:
    """mergeAffinityTermNamespacesIfNotEmpty: a non-empty namespaceSelector becomes the set of namespaces it
    selects now; nil selects nothing and {} keeps matching every namespace."""
    sel = term.namespace_selector
    if sel is NOTHING or sel.nothing or sel is EVERYTHING or sel.everything:
        return term
    names = set(term.namespaces)
    for ns, lbls in ns_labels.items():
        if sel.matches(lbls):
            names.add(ns)
    return term.with_namespaces(frozenset(names))


class _FilterState:
    """Per-topology-key counts indexed by label value code, plus deltas added by AddPod/RemovePod on clones."""

    __slots__ = ("aff_terms", "anti_terms", "ns_labels", "counts", "deltas", "aff_nonzero", "self_match")

    def __init__(self) -> None:
        self.aff_terms: tuple[AffinityTerm, ...] = ()
        self.anti_terms: tuple[AffinityTerm, ...] = ()
        self.ns_labels: Mapping[str, str] = {}
        self.counts: tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]] = ({}, {}, {})
        self.deltas: dict[tuple[int, str, int], int] = {}
        self.aff_nonzero = 0
        self.self_match = False

    def clone(self) -> _FilterState:
        c = _FilterState()
        c.aff_terms, c.anti_terms, c.ns_labels = self.aff_terms, self.anti_terms, self.ns_labels
        c.counts = self.counts
        c.deltas = dict(self.deltas)
        c.aff_nonzero, c.self_match = self.aff_nonzero, self.self_match
        return c

    def count(self, kind: int, key: str, code: int) -> int:
        arr = self.counts[kind].get(key)
        base = int(arr[code]) if arr is not None and code < arr.shape[0] else 0
        return base + self.deltas.get((kind, key, code), 0)

    def add(self, kind: int, key: str, code: int, delta: int) -> None:
        if code == 0:
            return  # the node lacks the topology key: upstream's update() ignores it
        before = self.count(kind, key, code)
        self.deltas[(kind, key, code)] = self.deltas.get((kind, key, code), 0) + delta
        after = before + delta
        if kind == _AFF:
            if before == 0 and after != 0:
                self.aff_nonzero += 1
            elif before != 0 and after == 0:
                self.aff_nonzero -= 1

    def keys(self, kind: int) -> set[str]:
        return set(self.counts[kind]) | {k for (kd, k, _) in self.deltas if kd == kind}


class InterPodAffinity:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.handle = handle
        self.cache = handle.cache
        self.hard_weight = int(args.get("hardPodAffinityWeight", 1))
        self.ignore_existing_preferred = bool(args.get("ignorePreferredTermsOfExistingPods", False))

    # -- helpers ------------------------------------------------------------------------------------------------

    def _by_value(self, key: str, per_slot: np.ndarray) -> np.ndarray | None:
        codes = self.cache.codes(key)
        if codes is None:
            return None
        out = np.bincount(codes, weights=per_slot, minlength=self.cache.num_values(key)).astype(np.int64)
        out[0] = 0  # pods on nodes without the key count for nothing
        return out

    def _groups(self, term: AffinityTerm) -> list[Any]:
        key = ("ipa", term.namespaces, term.selector.key, term.namespace_selector.key)
        return self.cache.groups_matching(key, lambda g: term.matches(g.namespace, g.labels, None))

    def _code(self, node: NodeInfo, key: str) -> int:
        v = node.labels.get(key)
        return 0 if v is None else self.cache.value_code(key, v)

    # -- prefilter ----------------------------------------------------------------------------------------------

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        if pod.parse_error is not None:
            return None, Status.unresolvable(f"parsing pod: {pod.parse_error}")
        c = self.cache
        has_terms = bool(pod.required_affinity_terms or pod.required_anti_affinity_terms)
        existing_entries = c.terms[REQ_ANTI]
        if not has_terms and not existing_entries:
            return None, Status.skip()
        all_ns = self.handle.ns_labels()
        s = _FilterState()
        s.ns_labels = all_ns.get(pod.namespace, {})
        existing, aff, anti = s.counts

        # Existing pods' required anti-affinity terms that the incoming pod matches (symmetry).
        for e in list(existing_entries.values()):
            if e.counter.total and e.term.matches(pod.namespace, pod.labels, s.ns_labels):
                per_slot = np.zeros(c.capacity, np.int64)
                e.counter.add_into(per_slot)
                byv = self._by_value(e.term.topology_key, per_slot)
                if byv is not None and byv.any():
                    k = e.term.topology_key
                    existing[k] = existing[k] + byv if k in existing else byv
        s.aff_terms = tuple(resolve_namespaces(t, all_ns) for t in pod.required_affinity_terms)
        s.anti_terms = tuple(resolve_namespaces(t, all_ns) for t in pod.required_anti_affinity_terms)
        if not existing and not s.aff_terms and not s.anti_terms:
            return None, Status.skip()

        if s.aff_terms:
            # Existing pods count for affinity only when they match all of the pod's affinity terms.
            groups: list[Any] | None = None
            for t in s.aff_terms:
                gs = self._groups(t)
                if groups is None:
                    groups = list(gs)
                else:
                    ids = {id(g) for g in gs}
                    groups = [g for g in groups if id(g) in ids]
            per_slot = c.pod_counts(groups or ())
            for t in s.aff_terms:
                byv = self._by_value(t.topology_key, per_slot)
                if byv is not None:
                    k = t.topology_key
                    aff[k] = aff[k] + byv if k in aff else byv
            s.aff_nonzero = sum(int(np.count_nonzero(a)) for a in aff.values())
            s.self_match = all(t.matches(pod.namespace, pod.labels, None) for t in s.aff_terms)
        for t in s.anti_terms:
            byv = self._by_value(t.topology_key, c.pod_counts(self._groups(t)))
            if byv is not None and byv.any():
                k = t.topology_key
                anti[k] = anti[k] + byv if k in anti else byv
        state.write(_STATE, s)
        return None, None

    def pre_filter_extensions(self) -> InterPodAffinity:
        return self

    def _update(self, state: CycleState, pod: PodInfo, other: PodInfo, node: NodeInfo, mult: int) -> Status | None:
        s: _FilterState | None = state.get(_STATE)
        if s is None:
            return None
        for t in other.required_anti_affinity_terms:
            if t.matches(pod.namespace, pod.labels, s.ns_labels):
                s.add(_EXISTING, t.topology_key, self._code(node, t.topology_key), mult)
        if s.aff_terms and all(t.matches(other.namespace, other.labels, None) for t in s.aff_terms):
            for t in s.aff_terms:
                s.add(_AFF, t.topology_key, self._code(node, t.topology_key), mult)
        for t in s.anti_terms:
            if t.matches(other.namespace, other.labels, None):
                s.add(_ANTI, t.topology_key, self._code(node, t.topology_key), mult)
        return None

    def add_pod(self, state: CycleState, pod: PodInfo, to_add: PodInfo, node: NodeInfo) -> Status | None:
        return self._update(state, pod, to_add, node, 1)

    def remove_pod(self, state: CycleState, pod: PodInfo, to_remove: PodInfo, node: NodeInfo) -> Status | None:
        return self._update(state, pod, to_remove, node, -1)

    # -- filter -------------------------------------------------------------------------------------------------

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        s: _FilterState | None = state.get(_STATE)
        if s is None:
            return None
        if s.aff_terms:
            exists = True
            for t in s.aff_terms:
                code = self._code(node, t.topology_key)
                if code == 0:
                    return Status.unresolvable(ERR_AFFINITY)
                if s.count(_AFF, t.topology_key, code) <= 0:
                    exists = False
            if not exists and not (s.aff_nonzero == 0 and s.self_match):
                return Status.unresolvable(ERR_AFFINITY)
        for t in s.anti_terms:
            code = self._code(node, t.topology_key)
            if code and s.count(_ANTI, t.topology_key, code) > 0:
                return Status.unschedulable(ERR_ANTI)
        for key in s.keys(_EXISTING):
            code = self._code(node, key)
            if code and s.count(_EXISTING, key, code) > 0:
                return Status.unschedulable(ERR_EXISTING_ANTI)
        return None

    def _masks(self, s: _FilterState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = self.cache
        cap = c.capacity
        aff_ok = np.ones(cap, bool)
        if s.aff_terms:
            has_all = np.ones(cap, bool)
            exists = np.ones(cap, bool)
            for t in s.aff_terms:
                codes = c.codes(t.topology_key)
                if codes is None:
                    has_all = np.zeros(cap, bool)
                    break
                has_all &= codes > 0
                arr = s.counts[_AFF].get(t.topology_key)
                exists &= (arr[codes] > 0) if arr is not None else False
            aff_ok = has_all if (s.aff_nonzero == 0 and s.self_match) else has_all & exists
        anti_ok = np.ones(cap, bool)
        for t in s.anti_terms:
            arr = s.counts[_ANTI].get(t.topology_key)
            codes = c.codes(t.topology_key)
            if arr is not None and codes is not None:
                anti_ok &= arr[codes] <= 0
        existing_ok = np.ones(cap, bool)
        for key, arr in s.counts[_EXISTING].items():
            codes = c.codes(key)
            if codes is not None:
                existing_ok &= arr[codes] <= 0
        return aff_ok, anti_ok, existing_ok

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        s: _FilterState | None = state.get(_STATE)
        if s is None:
            return np.ones(self.cache.capacity, bool)
        if s.deltas:
            # Deltas only exist on preemption clones, which are evaluated per node.
            infos = self.cache.infos
            return np.asarray([info is not None and self.filter(state, pod, info) is None for info in infos], bool)
        a, b, e = self._masks(s)
        return a & b & e

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status | None]:
        s: _FilterState | None = state.get(_STATE)
        if s is None or s.deltas:
            return [self.filter(state, pod, self.cache.infos[x]) for x in slots.tolist()]  # type: ignore[arg-type]
        a, b, e = self._masks(s)
        out: list[Status | None] = []
        for x in slots.tolist():
            if not a[x]:
                out.append(Status.unresolvable(ERR_AFFINITY))
            elif not b[x]:
                out.append(Status.unschedulable(ERR_ANTI))
            elif not e[x]:
                out.append(Status.unschedulable(ERR_EXISTING_ANTI))
            else:
                out.append(None)
        return out

    # -- score --------------------------------------------------------------------------------------------------

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        c = self.cache
        has_constraints = bool(pod.preferred_affinity_terms or pod.preferred_anti_affinity_terms)
        if self.ignore_existing_preferred and not has_constraints:
            return Status.skip()
        if not has_constraints and c.pods_with_affinity == 0:
            return Status.skip()
        if pod.parse_error is not None:
            return Status.as_error(f"parsing pod: {pod.parse_error}")
        all_ns = self.handle.ns_labels()
        ns_labels = all_ns.get(pod.namespace, {})
        topo: dict[str, np.ndarray] = {}
        contributed = False

        def add(key: str, per_slot: np.ndarray, weight: int) -> None:
            nonlocal contributed
            byv = self._by_value(key, per_slot)
            if byv is None or not byv.any():
                return
            contributed = True
            topo[key] = topo[key] + byv * weight if key in topo else byv * weight

        for t in pod.preferred_affinity_terms:
            rt = resolve_namespaces(t, all_ns)
            add(rt.topology_key, c.pod_counts(self._groups(rt)), t.weight)
        for t in pod.preferred_anti_affinity_terms:
            rt = resolve_namespaces(t, all_ns)
            add(rt.topology_key, c.pod_counts(self._groups(rt)), -t.weight)
        # Terms of existing pods that the incoming pod matches.
        for kind, weight_of in ((REQ_AFFINITY, lambda t: self.hard_weight), (PREF_AFFINITY, lambda t: t.weight),
                                (PREF_ANTI, lambda t: -t.weight)):
            if kind == REQ_AFFINITY and self.hard_weight <= 0:
                continue
            for e in list(c.terms[kind].values()):
                if e.counter.total and e.term.matches(pod.namespace, pod.labels, ns_labels):
                    per_slot = np.zeros(c.capacity, np.int64)
                    e.counter.add_into(per_slot)
                    add(e.term.topology_key, per_slot, weight_of(e.term))
        if not contributed:
            return Status.skip()
        state.write(_SCORE_STATE, topo)
        return None

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        topo: dict[str, np.ndarray] = state.get(_SCORE_STATE) or {}
        out = np.zeros(len(nodes), np.int64)
        for key, byv in topo.items():
            codes = self.cache.codes(key)
            if codes is not None:
                out += byv[codes[nodes.slots]]
        return out

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        topo: dict[str, np.ndarray] = state.get(_SCORE_STATE) or {}
        total = 0
        for key, byv in topo.items():
            code = self._code(node, key)
            if code:
                total += int(byv[code])
        return total

    def normalize_score(self, state: CycleState, pod: PodInfo, nodes: NodeList, scores: np.ndarray) -> np.ndarray:
        if scores.size == 0:
            return scores
        lo, hi = int(scores.min()), int(scores.max())
        if hi - lo <= 0:
            return np.zeros_like(scores)
        return (MAX_NODE_SCORE * ((scores - lo) / (hi - lo))).astype(np.int64)

    # -- events -------------------------------------------------------------------------------------------------

    def events_to_register(self) -> list[ClusterEventWithHint]:
        def pod_hint(pod: PodInfo, old: Any, new: Any) -> QueueingHint:
            ns = self.handle.ns_labels()
            if old is None and isinstance(new, PodInfo):
                # An assigned pod appeared: only useful if it satisfies one of the pod's affinity terms.
                for t in pod.required_affinity_terms:
                    if resolve_namespaces(t, ns).matches(new.namespace, new.labels, None):
                        return QueueingHint.QUEUE
                return QueueingHint.SKIP
            return QueueingHint.QUEUE
        return [
            ClusterEventWithHint(ClusterEvent("AssignedPod", ActionType.ADD | ActionType.UPDATE_POD_LABEL
                                              | ActionType.DELETE), pod_hint),
            ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_LABEL)),
        ]
