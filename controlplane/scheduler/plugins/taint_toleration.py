"""TaintToleration: NoSchedule and NoExecute taints a pod does not tolerate exclude the node; untolerated
PreferNoSchedule taints lower its score.

This is also the node readiness check: the node lifecycle controller taints NotReady and unreachable nodes with
node.kubernetes.io/not-ready and node.kubernetes.io/unreachable, so they drop out here as upstream. Nodes carry an
interned taint-list signature, so a pod is checked against each distinct taint list once (memoised by its
tolerations) and the per-node verdict is one gather.
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
    QueueingHint,
    Status,
    default_normalize_score,
)
from ..labels import (
    NO_EXECUTE,
    NO_SCHEDULE,
    PREFER_NO_SCHEDULE,
    find_untolerated_taint,
    taint_key,
    tolerates,
)
from ..podinfo import PodInfo

NAME = "TaintToleration"


def _reason(taint: tuple[str, str, str]) -> str:
    return f"node(s) had untolerated taint {{{taint[0]}: {taint[1]}}}"


class _Tables:
    __slots__ = ("n", "ok", "untolerated", "prefer_count")

    def __init__(self) -> None:
        self.n = 0
        self.ok = np.zeros(0, bool)
        self.untolerated: list[tuple[str, str, str] | None] = []
        self.prefer_count = np.zeros(0, np.int64)


class TaintToleration:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache
        self._memo: OrderedDict[tuple, _Tables] = OrderedDict()

    def _tables(self, pod: PodInfo) -> _Tables:
        """Per taint signature: tolerated?, first untolerated taint, intolerable PreferNoSchedule count."""
        key = pod.tolerations_key
        t = self._memo.get(key)
        if t is None:
            t = self._memo[key] = _Tables()
            if len(self._memo) > 512:
                self._memo.popitem(last=False)
        sigs = self.cache.taint_sigs
        if t.n < len(sigs):
            tols = pod.tolerations
            prefer_tols = [x for x in tols if not x[3] or x[3] == PREFER_NO_SCHEDULE]
            ok = list(t.ok.tolist())
            counts = list(t.prefer_count.tolist())
            for sig in sigs[t.n:]:
                u = find_untolerated_taint(sig, tols, (NO_SCHEDULE, NO_EXECUTE))
                t.untolerated.append(u)
                ok.append(u is None)
                counts.append(sum(1 for taint in sig if taint[2] == PREFER_NO_SCHEDULE
                                  and not any(tolerates(x, taint) for x in prefer_tols)))
            t.ok = np.asarray(ok, bool)
            t.prefer_count = np.asarray(counts, np.int64)
            t.n = len(sigs)
        return t

    # -- filter -------------------------------------------------------------------------------------------------

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        u = find_untolerated_taint(node.taints, pod.tolerations, (NO_SCHEDULE, NO_EXECUTE))
        if u is None:
            return None
        return Status.unresolvable(_reason(u))

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        if len(self.cache.taint_sigs) == 1:
            return np.ones(self.cache.capacity, bool)  # no node has ever had a taint
        return self._tables(pod).ok[self.cache.taint_sig]

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status | None]:
        t = self._tables(pod)
        by_sig: dict[int, Status | None] = {}
        out: list[Status | None] = []
        for sig in self.cache.taint_sig[slots].tolist():
            if sig not in by_sig:
                u = t.untolerated[sig]
                by_sig[sig] = Status.unresolvable(_reason(u)) if u is not None else None
            out.append(by_sig[sig])
        return out

    # -- score --------------------------------------------------------------------------------------------------

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        return None

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        prefer_tols = [x for x in pod.tolerations if not x[3] or x[3] == PREFER_NO_SCHEDULE]
        return sum(1 for taint in node.taints if taint[2] == PREFER_NO_SCHEDULE
                   and not any(tolerates(x, taint) for x in prefer_tols))

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        if len(self.cache.taint_sigs) == 1:
            return np.zeros(len(nodes), np.int64)
        return self._tables(pod).prefer_count[self.cache.taint_sig[nodes.slots]]

    def normalize_score(self, state: CycleState, pod: PodInfo, nodes: NodeList, scores: np.ndarray) -> np.ndarray:
        return default_normalize_score(scores, reverse=True)

    # -- events -------------------------------------------------------------------------------------------------

    def events_to_register(self) -> list[ClusterEventWithHint]:
        def node_hint(pod: PodInfo, old: Any, new: Any) -> QueueingHint:
            if new is None:
                return QueueingHint.QUEUE
            taints = [taint_key(t) for t in ((new.get("spec") or {}).get("taints") or ())]
            if find_untolerated_taint(taints, pod.tolerations, (NO_SCHEDULE, NO_EXECUTE)) is None:
                return QueueingHint.QUEUE
            return QueueingHint.SKIP
        return [
            ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_TAINT), node_hint),
            ClusterEventWithHint(ClusterEvent("UnscheduledPod", ActionType.UPDATE_POD_TOLERATION)),
        ]
