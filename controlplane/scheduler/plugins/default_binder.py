"""DefaultBinder: binds the pod through the API (pods/<name>/binding), via the PodBinder callback."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..framework import CycleState, Handle, Status
from ..podinfo import PodInfo

NAME = "DefaultBinder"


class DefaultBinder:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.handle = handle

    async def bind(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        binder = self.handle.pod_binder
        if binder is None:
            return Status.as_error("no PodBinder configured")
        try:
            await binder.bind(pod.pod, node_name)
        except Exception as e:
            return Status.as_error(e)
        return None
