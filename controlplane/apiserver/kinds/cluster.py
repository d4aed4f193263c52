"""The remaining built-in groups: coordination, discovery, storage, events, policy, RBAC and scheduling.

These kinds have little behaviour of their own in the API server (their controllers give them meaning); what is
here is their defaults, the fields users must set, and the columns kubectl prints for them.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver.errors import Cause
from controlplane.apiserver.kinds.base import Column, Strategy, Table, get_path, immutable, path_getter
from controlplane.apiserver.registry import ResourceType
from controlplane.apiserver.validation import required


class StorageClassStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        obj.setdefault("reclaimPolicy", "Delete")
        obj.setdefault("volumeBindingMode", "Immediate")

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return required(obj, "provisioner")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new)
        for field in ("provisioner", "parameters", "reclaimPolicy", "volumeBindingMode"):
            causes += immutable(new, old, field, "updates to " + field + " are forbidden.")
        return causes


class PriorityClassStrategy(Strategy):
    def defaults(self, obj: dict[str, Any]) -> None:
        obj.setdefault("preemptionPolicy", "PreemptLowerPriority")

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        value = obj.get("value")
        if not isinstance(value, int):
            return [Cause("FieldValueRequired", "Required value", "value")]
        return []

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return self.validate(new) + immutable(new, old, "value", "may not be changed in an update.")


class PodDisruptionBudgetStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        spec = obj.get("spec") or {}
        if "minAvailable" in spec and "maxUnavailable" in spec:
            return [Cause("FieldValueInvalid", "Invalid value: minAvailable and maxUnavailable cannot be both set",
                          "spec")]
        return []


class EventsV1Strategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return required(obj, "eventTime")


class RoleBindingStrategy(Strategy):
    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        return required(obj, "roleRef.kind") + required(obj, "roleRef.name")

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return self.validate(new) + immutable(new, old, "roleRef", "cannot change roleRef")


def _lease_holder(lease: dict[str, Any]) -> str:
    return get_path(lease, "spec.holderIdentity") or ""


def _slice_endpoints(es: dict[str, Any]) -> str:
    addrs = [a for ep in es.get("endpoints") or [] for a in ep.get("addresses") or []]
    if not addrs:
        return "<unset>"
    return ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "")


def _ports(es: dict[str, Any]) -> str:
    return ",".join(str(p.get("port")) for p in es.get("ports") or []) or "<unset>"


def resources() -> list[ResourceType]:
    rbac = "rbac.authorization.k8s.io"
    return [
        ResourceType("coordination.k8s.io", "v1", "Lease", "leases", True, Strategy(table=Table(
            [Column("Holder")], lambda lease: [_lease_holder(lease)]))),
        ResourceType("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True, Strategy(
            field_getters={"addressType": path_getter("addressType")}, table=Table(
                [Column("AddressType"), Column("Ports"), Column("Endpoints")],
                lambda es: [es.get("addressType", ""), _ports(es), _slice_endpoints(es)]))),
        ResourceType("storage.k8s.io", "v1", "StorageClass", "storageclasses", False, StorageClassStrategy(
            table=Table([Column("Provisioner"), Column("ReclaimPolicy"), Column("VolumeBindingMode"),
                         Column("AllowVolumeExpansion", type="boolean")],
                        lambda sc: [sc.get("provisioner", ""), sc.get("reclaimPolicy", ""),
                                    sc.get("volumeBindingMode", ""), bool(sc.get("allowVolumeExpansion"))]),
            return_deleted_object=True), short_names=("sc",)),
        ResourceType("storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", False, Strategy(
            table=Table([Column("Attacher"), Column("PV"), Column("Node"), Column("Attached", type="boolean")],
                        lambda va: [get_path(va, "spec.attacher") or "",
                                    get_path(va, "spec.source.persistentVolumeName") or "",
                                    get_path(va, "spec.nodeName") or "", bool(get_path(va, "status.attached"))]),
            return_deleted_object=True), subresources=("status",)),
        ResourceType("storage.k8s.io", "v1", "CSIDriver", "csidrivers", False, Strategy(return_deleted_object=True)),
        ResourceType("storage.k8s.io", "v1", "CSINode", "csinodes", False, Strategy(return_deleted_object=True)),
        ResourceType("events.k8s.io", "v1", "Event", "events", True, EventsV1Strategy(
            field_getters={"reason": path_getter("reason"), "type": path_getter("type"),
                           "regarding.kind": path_getter("regarding.kind"),
                           "regarding.name": path_getter("regarding.name"),
                           "regarding.namespace": path_getter("regarding.namespace"),
                           "regarding.uid": path_getter("regarding.uid")}),
            short_names=("ev",), storage_prefix="events.k8s.io/events"),
        ResourceType("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True,
                     PodDisruptionBudgetStrategy(track_generation=True, table=Table(
                         [Column("Min Available"), Column("Max Unavailable"), Column("Allowed Disruptions",
                                                                                     type="integer")],
                         lambda p: [str(get_path(p, "spec.minAvailable", "N/A")),
                                    str(get_path(p, "spec.maxUnavailable", "N/A")),
                                    get_path(p, "status.disruptionsAllowed") or 0])),
                     short_names=("pdb",), subresources=("status",)),
        ResourceType(rbac, "v1", "ClusterRole", "clusterroles", False, Strategy()),
        ResourceType(rbac, "v1", "ClusterRoleBinding", "clusterrolebindings", False, RoleBindingStrategy(
            table=Table([Column("Role")], lambda b: [f"{get_path(b, 'roleRef.kind')}/{get_path(b, 'roleRef.name')}"]))),
        ResourceType(rbac, "v1", "Role", "roles", True, Strategy()),
        ResourceType(rbac, "v1", "RoleBinding", "rolebindings", True, RoleBindingStrategy(
            table=Table([Column("Role")], lambda b: [f"{get_path(b, 'roleRef.kind')}/{get_path(b, 'roleRef.name')}"]))),
        ResourceType("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", False, PriorityClassStrategy(
            table=Table([Column("Value", type="integer"), Column("Global-Default", type="boolean"),
                         Column("PreemptionPolicy")],
                        lambda pc: [pc.get("value", 0), bool(pc.get("globalDefault")), pc.get("preemptionPolicy")])),
            short_names=("pc",)),
    ]
