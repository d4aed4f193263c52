"""SchedulingGates: a PreEnqueue plugin that keeps pods with spec.schedulingGates out of activeQ until the gates
are removed (KEP-3521); the queue re-runs PreEnqueue when such a pod is updated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..framework import ActionType, ClusterEvent, ClusterEventWithHint, Handle, Status
from ..podinfo import PodInfo

NAME = "SchedulingGates"


class SchedulingGates:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        pass

    def pre_enqueue(self, pod: PodInfo) -> Status | None:
        if not pod.scheduling_gates:
            return None
        return Status.unresolvable(f"waiting for scheduling gates: [{' '.join(pod.scheduling_gates)}]")

    def events_to_register(self) -> list[ClusterEventWithHint]:
        return [ClusterEventWithHint(ClusterEvent("Pod", ActionType.UPDATE_POD_SCHEDULING_GATES_ELIMINATED))]
