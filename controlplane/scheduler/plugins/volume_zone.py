"""VolumeZone: a pod using a zonal PersistentVolume (topology.kubernetes.io/zone or region labels, or their beta
forms; "a__b" lists several zones) only fits nodes in one of those zones. Nodes without any zone label pass, which
keeps single-zone clusters working as upstream does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
from .volume_binding import claim_class

NAME = "VolumeZone"
ERR_REASON_CONFLICT = "node(s) had no available volume zone"
_STATE = NAME + "/prefilter"
_TOPOLOGY_LABELS = ("failure-domain.beta.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/region",
                    "topology.kubernetes.io/zone", "topology.kubernetes.io/region")
_TO_GA = {"failure-domain.beta.kubernetes.io/zone": "topology.kubernetes.io/zone",
          "failure-domain.beta.kubernetes.io/region": "topology.kubernetes.io/region"}


class VolumeZone:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.cache = handle.cache

    def _topologies(self, pod: PodInfo) -> tuple[list[tuple[str, frozenset[str]]], Status | None]:
        c = self.cache
        out: list[tuple[str, frozenset[str]]] = []
        for _, claim_name, _ in pod.claims:
            if not claim_name:
                return [], Status.unresolvable("PersistentVolumeClaim had no name")
            pvc = c.get_object("PersistentVolumeClaim", f"{pod.namespace}/{claim_name}")
            if pvc is None:
                return [], Status.unresolvable(f'persistentvolumeclaim "{claim_name}" not found')
            pv_name = (pvc.get("spec") or {}).get("volumeName") or ""
            if not pv_name:
                sc_name = claim_class(pvc)
                if not sc_name:
                    return [], Status.unresolvable("PersistentVolumeClaim had no pv name and storageClass name")
                sc = c.get_object("StorageClass", sc_name)
                if sc is None:
                    return [], Status.unresolvable(f'storageclass.storage.k8s.io "{sc_name}" not found')
                mode = sc.get("volumeBindingMode")
                if not mode:
                    return [], Status.unresolvable(f"VolumeBindingMode not set for StorageClass {sc_name!r}")
                if mode == "WaitForFirstConsumer":
                    continue
                return [], Status.unresolvable("PersistentVolume had no name")
            pv = c.get_object("PersistentVolume", pv_name)
            if pv is None:
                return [], Status.unresolvable(f'persistentvolume "{pv_name}" not found')
            labels = (pv.get("metadata") or {}).get("labels") or {}
            for key in _TOPOLOGY_LABELS:
                if key in labels:
                    out.append((key, frozenset(labels[key].split("__"))))
        return out, None

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        if not pod.claims:
            return None, Status.skip()
        topologies, st = self._topologies(pod)
        if st is not None:
            return None, st
        if not topologies:
            return None, Status.skip()
        state.write(_STATE, topologies)
        return None, None

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        topologies = state.get(_STATE)
        if topologies is None:
            return None
        if not any(k in node.labels for k in _TOPOLOGY_LABELS):
            return None
        for key, values in topologies:
            v = node.labels.get(key)
            if v is None:
                v = node.labels.get(_TO_GA.get(key, key))
            if v is None or v not in values:
                return Status.unresolvable(ERR_REASON_CONFLICT)
        return None

    def events_to_register(self) -> list[ClusterEventWithHint]:
        upd = ActionType.ADD | ActionType.UPDATE_OTHER
        return [
            ClusterEventWithHint(ClusterEvent("StorageClass", ActionType.ADD)),
            ClusterEventWithHint(ClusterEvent("PersistentVolumeClaim", upd)),
            ClusterEventWithHint(ClusterEvent("PersistentVolume", upd)),
            ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_LABEL)),
        ]
