"""NodeAffinity: spec.nodeSelector and required node affinity filter nodes; preferred terms add their weights.

All operators (In, NotIn, Exists, DoesNotExist, Gt, Lt) and matchFields metadata.name are evaluated as vector
lookups over the snapshot's per-key label codes; the resulting mask is memoised per (affinity, label generation),
so pods of one Deployment pay for it once. A required metadata.name matchField narrows the nodes in PreFilter
(the DaemonSet fast path). The plugin's addedAffinity arg is enforced on every pod of the profile.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..cache import NodeInfo
from ..framework import (
    ActionType,
    ClusterEvent,
    ClusterEventWithHint,
    CycleState,
    Handle,
    NodeList,
    PreFilterResult,
    QueueingHint,
    Status,
    default_normalize_score,
)
from ..labels import (
    NodeSelector,
    NodeSelectorTerm,
    parse_node_selector,
    parse_node_selector_term,
)
from ..podinfo import PodInfo

NAME = "NodeAffinity"
ERR_REASON_POD = "node(s) didn't match Pod's node affinity/selector"
ERR_REASON_ENFORCED = "node(s) didn't match scheduler-enforced node affinity"
ERR_REASON_CONFLICT = "pod affinity terms conflict"
_STATE = NAME + "/prefilter"


def pod_matches_node(pod: PodInfo, labels: Mapping[str, str], name: str) -> bool:
    """nodeaffinity.GetRequiredNodeAffinity(pod).Match(node): nodeSelector and required terms."""
    for k, v in pod.node_selector.items():
        if labels.get(k) != v:
            return False
    if pod.required_node_affinity is not None:
        return pod.required_node_affinity.matches(labels, name)
    return True


def required_mask(cache: Any, pod: PodInfo) -> np.ndarray:
    """The vector form of pod_matches_node over all slots."""
    mask: np.ndarray | None = None
    for k, v in pod.node_selector.items():
        m = cache.label_equals_mask(k, v)
        mask = m if mask is None else mask & m
    if pod.required_node_affinity is not None:
        m = cache.node_selector_mask(pod.required_node_affinity)
        mask = m if mask is None else mask & m
    if mask is None:
        return np.ones(cache.capacity, bool)
    return mask


class NodeAffinity:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache
        added = args.get("addedAffinity") or {}
        self.added_required: NodeSelector | None = parse_node_selector(
            added.get("requiredDuringSchedulingIgnoredDuringExecution"))
        self.added_preferred: tuple[tuple[int, NodeSelectorTerm], ...] = tuple(
            (int(p.get("weight") or 0), parse_node_selector_term(p.get("preference")))
            for p in (added.get("preferredDuringSchedulingIgnoredDuringExecution") or ()))
        self._memo: OrderedDict[tuple, tuple[int, np.ndarray]] = OrderedDict()
        self._added_memo: tuple[int, int, np.ndarray] | None = None

    # -- prefilter / filter -------------------------------------------------------------------------------------

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        req = pod.required_node_affinity
        if req is None and self.added_required is None and not pod.node_selector:
            return None, Status.skip()
        state.write(_STATE, True)
        if req is None or not req.terms:
            return None, None
        node_names: set[str] | None = None
        for t in req.terms:
            term_names: set[str] | None = None
            for r in t.fields:
                if r.key == "metadata.name" and r.operator == "In":
                    term_names = set(r.values) if term_names is None else term_names & set(r.values)
            if term_names is None:
                return None, None  # this term does not pin names, and terms are ORed
            node_names = term_names if node_names is None else node_names | term_names
        if node_names is not None and not node_names:
            return None, Status.unresolvable(ERR_REASON_CONFLICT)
        if node_names:
            return PreFilterResult(node_names), None
        return None, None

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        if self.added_required is not None and not self.added_required.matches(node.labels, node.name):
            return Status.unresolvable(ERR_REASON_ENFORCED)
        if not pod_matches_node(pod, node.labels, node.name):
            return Status.unresolvable(ERR_REASON_POD)
        return None

    def _pod_mask(self, pod: PodInfo) -> np.ndarray:
        gen = self.cache.label_generation
        cap = self.cache.capacity
        hit = self._memo.get(pod.node_affinity_key)
        if hit is not None and hit[0] == gen and hit[1].shape[0] == cap:
            self._memo.move_to_end(pod.node_affinity_key)
            return hit[1]
        mask = required_mask(self.cache, pod)
        mask.setflags(write=False)
        self._memo[pod.node_affinity_key] = (gen, mask)
        if len(self._memo) > 256:
            self._memo.popitem(last=False)
        return mask

    def _added_mask(self) -> np.ndarray | None:
        if self.added_required is None:
            return None
        gen, cap = self.cache.label_generation, self.cache.capacity
        if self._added_memo is None or self._added_memo[0] != gen or self._added_memo[1] != cap:
            m = self.cache.node_selector_mask(self.added_required)
            self._added_memo = (gen, cap, m)
        return self._added_memo[2]

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        mask = self._pod_mask(pod)
        added = self._added_mask()
        return mask if added is None else mask & added

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status]:
        added = self._added_mask()
        enforced = Status.unresolvable(ERR_REASON_ENFORCED)
        reason = Status.unresolvable(ERR_REASON_POD)
        if added is None:
            return [reason] * len(slots)
        return [reason if added[s] else enforced for s in slots.tolist()]

    # -- score --------------------------------------------------------------------------------------------------

    def _preferred(self, pod: PodInfo) -> list[tuple[int, NodeSelectorTerm]]:
        return [(w, t) for w, t in (*pod.preferred_node_affinity, *self.added_preferred) if w != 0]

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        if not self._preferred(pod):
            return Status.skip()
        return None

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        return sum(w for w, t in self._preferred(pod) if t.matches(node.labels, node.name))

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        out = np.zeros(len(nodes), np.int64)
        for w, t in self._preferred(pod):
            out += self.cache.term_mask(t)[nodes.slots] * w
        return out

    def normalize_score(self, state: CycleState, pod: PodInfo, nodes: NodeList, scores: np.ndarray) -> np.ndarray:
        return default_normalize_score(scores, reverse=False)

    # -- events -------------------------------------------------------------------------------------------------

    def events_to_register(self) -> list[ClusterEventWithHint]:
        def hint(pod: PodInfo, old: Any, new: Any) -> QueueingHint:
            if new is None:
                return QueueingHint.QUEUE
            md = new.get("metadata") or {}
            labels, name = md.get("labels") or {}, md.get("name", "")
            if self.added_required is not None and not self.added_required.matches(labels, name):
                return QueueingHint.SKIP
            return QueueingHint.QUEUE if pod_matches_node(pod, labels, name) else QueueingHint.SKIP
        return [ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_LABEL), hint)]
