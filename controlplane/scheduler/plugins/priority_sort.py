"""PrioritySort: the default QueueSort -- higher priority first, then whoever has waited longest.

Exposes ``sort_key`` besides ``less`` so the queue can keep a plain tuple-keyed heap instead of calling back into
Python comparisons on every sift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..framework import Handle

NAME = "PrioritySort"


class PrioritySort:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        pass

    def less(self, a: Any, b: Any) -> bool:
        pa, pb = a.pod_info.priority, b.pod_info.priority
        return pa > pb or (pa == pb and a.timestamp < b.timestamp)

    @staticmethod
    def sort_key(q: Any) -> tuple[int, float]:
        return (-q.pod_info.priority, q.timestamp)
