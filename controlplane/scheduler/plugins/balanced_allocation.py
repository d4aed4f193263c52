"""NodeResourcesBalancedAllocation: prefer nodes whose CPU and memory (or the configured resources) would be used
in similar proportions after placing the pod -- score = (1 - std of the fractions) * 100, as upstream, vectorised."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..cache import NodeInfo
from ..framework import CycleState, Handle, NodeList, Status
from ..podinfo import PodInfo, is_scalar_resource

NAME = "NodeResourcesBalancedAllocation"
_STATE = NAME + "/prescore"
DEFAULT_ARGS: dict[str, Any] = {"resources": [{"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}]}


class BalancedAllocation:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache
        self.resources = [r["name"] for r in (args.get("resources") or DEFAULT_ARGS["resources"])]

    def _pod_requests(self, pod: PodInfo) -> list[int]:
        # useRequested: the pod's requests as they are, without the non-zero defaults.
        return [pod.requests.get(name, 0) for name in self.resources]

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> Status | None:
        reqs = self._pod_requests(pod)
        if not any(reqs):
            # Best-effort pods are not balanced, lest they all pile onto one node (kubernetes#129138).
            return Status.skip()
        state.write(_STATE, reqs)
        return None

    def _score_two(self, reqs: list[int], slots: np.ndarray) -> np.ndarray | None:
        """Two resources, both allocatable everywhere (the default cpu+memory case): |f1 - f2| / 2."""
        c = self.cache
        fr = []
        for name, pr in zip(self.resources, reqs):
            row = c.resource_index.get(name)
            if row is None or (pr == 0 and is_scalar_resource(name)):
                return None
            alloc = c.alloc[row][slots]
            if alloc.size and int(alloc.min()) <= 0:
                return None
            fr.append(np.minimum((c.req[row][slots] + pr) / alloc, 1.0))
        std = np.abs((fr[0] - fr[1]) / 2)
        return ((1 - std) * 100).astype(np.int64)

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        c = self.cache
        reqs = state.get(_STATE) or self._pod_requests(pod)
        slots = nodes.slots
        if len(self.resources) == 2:
            fast = self._score_two(reqs, slots)
            if fast is not None:
                return fast
        n = len(slots)
        fractions: list[np.ndarray] = []
        present: list[np.ndarray] = []
        for name, pr in zip(self.resources, reqs):
            row = c.resource_index.get(name)
            if row is None or (pr == 0 and is_scalar_resource(name)):
                continue
            alloc = c.alloc[row][slots]
            req = c.req[row][slots] + pr
            has = alloc != 0
            f = np.where(has, req / np.where(has, alloc, 1), 0.0)
            fractions.append(np.minimum(f, 1.0))
            present.append(has)
        if not fractions:
            return np.full(n, 100, np.int64)
        F = np.vstack(fractions)
        P = np.vstack(present)
        count = P.sum(axis=0)
        std = np.zeros(n)
        if F.shape[0] >= 2:
            # Upstream: |f1 - f2| / 2 for exactly two resources, the population std for more, 0 otherwise.
            two = count == 2
            if two.any():
                masked = np.where(P, F, np.nan)
                first = np.array([row[~np.isnan(row)][0] if t else 0.0 for row, t in zip(masked.T, two)]) \
                    if F.shape[0] > 2 else F[0]
                second = np.array([row[~np.isnan(row)][1] if t else 0.0 for row, t in zip(masked.T, two)]) \
                    if F.shape[0] > 2 else F[1]
                std = np.where(two, np.abs((first - second) / 2), std)
            more = count > 2
            if more.any():
                total = np.where(P, F, 0.0).sum(axis=0)
                mean = total / np.where(count == 0, 1, count)
                var = (np.where(P, (F - mean) ** 2, 0.0)).sum(axis=0) / np.where(count == 0, 1, count)
                std = np.where(more, np.sqrt(var), std)
        return ((1 - std) * 100).astype(np.int64)

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        nl = NodeList(self.cache, np.asarray([node.slot], np.int64))
        return int(self.score_vector(state, pod, nl)[0])
