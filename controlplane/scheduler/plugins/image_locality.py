"""ImageLocality: prefer nodes that already have the pod's images, weighted by image size and by how widely the
image is spread (to avoid piling pods onto the few nodes that have it), as upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..cache import NodeInfo
from ..framework import MAX_NODE_SCORE, CycleState, Handle, NodeList
from ..podinfo import PodInfo

NAME = "ImageLocality"
_MB = 1024 * 1024
MIN_THRESHOLD = 23 * _MB
MAX_CONTAINER_THRESHOLD = 1000 * _MB


def calculate_priority(sum_scores: np.ndarray, num_containers: int) -> np.ndarray:
    max_threshold = MAX_CONTAINER_THRESHOLD * num_containers
    s = np.clip(sum_scores, MIN_THRESHOLD, max_threshold)
    return MAX_NODE_SCORE * (s - MIN_THRESHOLD) // (max_threshold - MIN_THRESHOLD)


class ImageLocality:
    name = NAME
    scores_in_range = True

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache
        self._arrays: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}

    def _holders(self, image: str) -> tuple[np.ndarray, np.ndarray] | None:
        c = self.cache
        hit = self._arrays.get(image)
        if hit is not None and hit[0] == c.image_generation:
            return hit[1], hit[2]
        holders = c.image_index.get(image)
        if not holders:
            return None
        slots = np.fromiter(holders.keys(), np.int64, len(holders))
        sizes = np.fromiter(holders.values(), np.float64, len(holders))
        if len(self._arrays) > 1024:
            self._arrays.clear()
        self._arrays[image] = (c.image_generation, slots, sizes)
        return slots, sizes

    def score_vector(self, state: CycleState, pod: PodInfo, nodes: NodeList) -> np.ndarray:
        c = self.cache
        n = len(nodes)
        if not c.image_index or pod.num_containers == 0:
            return np.zeros(n, np.int64)
        total_nodes = c.num_nodes
        per_slot = np.zeros(c.capacity, np.int64)
        found = False
        for image in pod.images:
            h = self._holders(image)
            if h is None:
                continue
            found = True
            slots, sizes = h
            spread = len(slots) / total_nodes
            np.add.at(per_slot, slots, (sizes * spread).astype(np.int64))  # scaledImageScore truncates as int64()
        if not found:
            return np.zeros(n, np.int64)
        return calculate_priority(per_slot[nodes.slots], pod.num_containers)

    def score(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> int:
        nl = NodeList(self.cache, np.asarray([node.slot], np.int64))
        return int(self.score_vector(state, pod, nl)[0])
