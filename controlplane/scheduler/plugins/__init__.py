"""The in-tree plugins, registered in one place.

Adding a plugin means writing one module with a class taking ``(args, handle)`` and the methods of the extension
points it implements, then adding it to ``REGISTRY`` (and to ``DEFAULT_ARGS`` if it takes arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..framework import PluginFactory
from . import (
    balanced_allocation,
    default_binder,
    default_preemption,
    image_locality,
    inter_pod_affinity,
    node_affinity,
    node_name,
    node_ports,
    node_resources_fit,
    node_unschedulable,
    pod_topology_spread,
    priority_sort,
    scheduling_gates,
    taint_toleration,
    volume_binding,
    volume_zone,
)

REGISTRY: dict[str, PluginFactory] = {
    "SchedulingGates": scheduling_gates.SchedulingGates,
    "PrioritySort": priority_sort.PrioritySort,
    "NodeUnschedulable": node_unschedulable.NodeUnschedulable,
    "NodeName": node_name.NodeName,
    "TaintToleration": taint_toleration.TaintToleration,
    "NodeAffinity": node_affinity.NodeAffinity,
    "NodePorts": node_ports.NodePorts,
    "NodeResourcesFit": node_resources_fit.NodeResourcesFit,
    "VolumeBinding": volume_binding.VolumeBinding,
    "VolumeZone": volume_zone.VolumeZone,
    "PodTopologySpread": pod_topology_spread.PodTopologySpread,
    "InterPodAffinity": inter_pod_affinity.InterPodAffinity,
    "DefaultPreemption": default_preemption.DefaultPreemption,
    "NodeResourcesBalancedAllocation": balanced_allocation.BalancedAllocation,
    "ImageLocality": image_locality.ImageLocality,
    "DefaultBinder": default_binder.DefaultBinder,
}

DEFAULT_ARGS: dict[str, Mapping[str, Any]] = {
    "NodeResourcesFit": node_resources_fit.DEFAULT_ARGS,
    "NodeResourcesBalancedAllocation": balanced_allocation.DEFAULT_ARGS,
    "InterPodAffinity": inter_pod_affinity.DEFAULT_ARGS,
    "PodTopologySpread": pod_topology_spread.DEFAULT_ARGS,
    "DefaultPreemption": default_preemption.DEFAULT_ARGS,
    "VolumeBinding": volume_binding.DEFAULT_ARGS,
    "NodeAffinity": {},
}

# Upstream's default profile (getDefaultPlugins): MultiPoint order and score weights. VolumeRestrictions and
# NodeVolumeLimits are not implemented here (no CSI attach limits in this control plane).
DEFAULT_MULTI_POINT: list[tuple[str, int]] = [
    ("SchedulingGates", 0),
    ("PrioritySort", 0),
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodePorts", 0),
    ("NodeResourcesFit", 1),
    ("VolumeBinding", 0),
    ("VolumeZone", 0),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    ("DefaultPreemption", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("DefaultBinder", 0),
]

__all__ = ["REGISTRY", "DEFAULT_ARGS", "DEFAULT_MULTI_POINT"]
