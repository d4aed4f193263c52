"""NodeUnschedulable: nodes with spec.unschedulable (cordoned) only take pods that tolerate the
node.kubernetes.io/unschedulable:NoSchedule taint."""

from __future__ import annotations

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
    QueueingHint,
    Status,
)
from ..labels import tolerates
from ..podinfo import PodInfo

NAME = "NodeUnschedulable"
ERR_REASON_UNSCHEDULABLE = "node(s) were unschedulable"
_TAINT = ("node.kubernetes.io/unschedulable", "", "NoSchedule")


def _tolerates_unschedulable(pod: PodInfo) -> bool:
    return any(tolerates(t, _TAINT) for t in pod.tolerations)


class NodeUnschedulable:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        if not node.unschedulable or _tolerates_unschedulable(pod):
            return None
        return Status.unresolvable(ERR_REASON_UNSCHEDULABLE)

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        if _tolerates_unschedulable(pod):
            return np.ones(self.cache.capacity, bool)
        return ~self.cache.unschedulable

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status]:
        st = Status.unresolvable(ERR_REASON_UNSCHEDULABLE)
        return [st] * len(slots)

    def events_to_register(self) -> list[ClusterEventWithHint]:
        def hint(pod: PodInfo, old: Any, new: Any) -> QueueingHint:
            if new is None or not (new.get("spec") or {}).get("unschedulable") or _tolerates_unschedulable(pod):
                return QueueingHint.QUEUE
            return QueueingHint.SKIP
        return [ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_TAINT), hint)]
