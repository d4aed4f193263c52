"""NodePorts: a pod asking for host ports only fits nodes where those (ip, protocol, port) are free; 0.0.0.0
conflicts with every IP. Conflicting nodes come straight from the snapshot's port index."""

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
    PreFilterResult,
    Status,
)
from ..podinfo import PodInfo

NAME = "NodePorts"
ERR_REASON = "node(s) didn't have free ports for the requested pod ports"


class NodePorts:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        if not pod.host_ports:
            return None, Status.skip()
        return None, None

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        if node.ports_conflict(pod.host_ports):
            return Status.unschedulable(ERR_REASON)
        return None

    def filter_vector(self, state: CycleState, pod: PodInfo) -> np.ndarray:
        ok = np.ones(self.cache.capacity, bool)
        for ip, proto, port in pod.host_ports:
            per_node = self.cache.port_index.get((proto, port))
            if not per_node:
                continue
            for slot, ips in per_node.items():
                if ip == "0.0.0.0" or "0.0.0.0" in ips or ip in ips:
                    ok[slot] = False
        return ok

    def explain_vector(self, state: CycleState, pod: PodInfo, slots: np.ndarray) -> list[Status]:
        return [Status.unschedulable(ERR_REASON)] * len(slots)

    def events_to_register(self) -> list[ClusterEventWithHint]:
        return [ClusterEventWithHint(ClusterEvent("AssignedPod", ActionType.DELETE)),
                ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD))]
