"""NodeName: a pod that names its node (spec.nodeName) only fits that node."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..cache import FIELD_NAME, NodeInfo
from ..framework import (
    ActionType,
    ClusterEvent,
    ClusterEventWithHint,
    CycleState,
    Handle,
    Status,
)
from ..podinfo import PodInfo

NAME = "NodeName"
ERR_REASON = "node(s) didn't match the requested node name"


class NodeName:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        if not pod.node_name or pod.node_name == node.name:
            return None
        return Status.unresolvable(ERR_REASON)

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        if not pod.node_name:
            return np.ones(self.cache.capacity, bool)
        return self.cache.label_equals_mask(FIELD_NAME, pod.node_name)

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status]:
        return [Status.unresolvable(ERR_REASON)] * len(slots)

    def events_to_register(self) -> list[ClusterEventWithHint]:
        return [ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD))]
