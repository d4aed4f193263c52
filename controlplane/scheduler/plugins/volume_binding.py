"""VolumeBinding: a pod's PersistentVolumeClaims decide where it can run.

A bound claim's PV node affinity must match the node; an unbound claim of an Immediate StorageClass makes the pod
unschedulable until the PV controller binds it; an unbound WaitForFirstConsumer claim needs either an available
matching PV usable from the node (smallest that fits) or dynamic provisioning the StorageClass allows there
(allowedTopologies). Reserve remembers the choice so other pods don't take the same PV; PreBind writes it through
the ``VolumeAPI`` callback -- PV claimRef for static binding, the ``volume.kubernetes.io/selected-node`` annotation
for provisioning -- and waits for the claims to be bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from ..labels import label_selector, match_topology_selector_terms, parse_node_selector
from ..podinfo import PodInfo
from ..quantity import parse_quantity

NAME = "VolumeBinding"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
NOT_SUPPORTED_PROVISIONER = "kubernetes.io/no-provisioner"
ERR_BIND_CONFLICT = "node(s) didn't find available persistent volumes to bind"
ERR_NODE_CONFLICT = "node(s) had volume node affinity conflict"
ERR_PV_NOT_EXIST = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
ERR_UNBOUND_IMMEDIATE = "pod has unbound immediate PersistentVolumeClaims"
DEFAULT_ARGS: dict[str, Any] = {"bindTimeoutSeconds": 600}
_STATE = NAME + "/state"


class VolumeAPI(Protocol):
    """The API writes volume binding needs; the control plane implements it with the client."""

    async def bind_volume(self, pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> None:
        """Set pv.spec.claimRef to ``pvc`` (the PV controller completes the bind)."""

    async def select_node(self, pvc: Mapping[str, Any], node_name: str) -> None:
        """Annotate ``pvc`` with volume.kubernetes.io/selected-node so its provisioner provisions for that node."""

    async def wait_bound(self, pod: Mapping[str, Any], pvcs: list[Mapping[str, Any]], timeout: float) -> None:
        """Return once every claim is bound; raise on timeout or when binding can no longer happen."""


def claim_class(pvc: Mapping[str, Any]) -> str:
    ann = (pvc.get("metadata") or {}).get("annotations") or {}
    if ANN_STORAGE_CLASS in ann:
        return ann[ANN_STORAGE_CLASS]
    return (pvc.get("spec") or {}).get("storageClassName") or ""


def volume_class(pv: Mapping[str, Any]) -> str:
    ann = (pv.get("metadata") or {}).get("annotations") or {}
    if ANN_STORAGE_CLASS in ann:
        return ann[ANN_STORAGE_CLASS]
    return (pv.get("spec") or {}).get("storageClassName") or ""


def pvc_key(pvc: Mapping[str, Any]) -> str:
    md = pvc.get("metadata") or {}
    return f"{md.get('namespace') or 'default'}/{md.get('name', '')}"


def pv_node_affinity_matches(pv: Mapping[str, Any], node: NodeInfo) -> bool:
    required = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required"))
    if required is None:
        return True
    sel = parse_node_selector(required)
    return sel is not None and sel.matches(node.labels, node.name)


def _bound_to(pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> bool:
    ref = (pv.get("spec") or {}).get("claimRef")
    if not ref:
        return False
    md = pvc.get("metadata") or {}
    if ref.get("name") != md.get("name") or (ref.get("namespace") or "default") != (md.get("namespace") or "default"):
        return False
    return not ref.get("uid") or ref.get("uid") == md.get("uid")


@dataclass
class PodVolumes:
    static_bindings: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    dynamic_provisions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _State:
    bound: list[dict[str, Any]] = field(default_factory=list)
    delayed: list[dict[str, Any]] = field(default_factory=list)
    by_node: dict[str, PodVolumes] = field(default_factory=dict)
    all_bound: bool = False

    def clone(self) -> _State:
        return _State(self.bound, self.delayed, dict(self.by_node), self.all_bound)


class VolumeBinding:
    name = NAME

    def __init__(self, args: Mapping[str, Any], handle: Handle) -> None:
        self.handle = handle
        self.cache = handle.cache
        self.bind_timeout = float(args.get("bindTimeoutSeconds", 600))
        # The assume cache: PVs and claims reserved by pods whose binding is in flight.
        self.assumed_pv: dict[str, str] = {}  # pv name -> claim key
        self.assumed_selected_node: dict[str, str] = {}  # claim key -> node

    # -- lookups ------------------------------------------------------------------------------------------------

    def _pvc(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.cache.get_object("PersistentVolumeClaim", f"{namespace}/{name}")

    def _class(self, name: str) -> dict[str, Any] | None:
        return self.cache.get_object("StorageClass", name)

    def _is_bound(self, pvc: Mapping[str, Any]) -> bool:
        spec, md = pvc.get("spec") or {}, pvc.get("metadata") or {}
        if not spec.get("volumeName"):
            return False
        return ANN_BIND_COMPLETED in (md.get("annotations") or {}) or (pvc.get("status") or {}).get("phase") == "Bound"

    def _claims(self, pod: PodInfo) -> tuple[list[dict[str, Any]], Status | None]:
        """podHasPVCs + GetPodVolumeClaims' lookups, with upstream's messages."""
        out = []
        for vol_name, claim_name, ephemeral in pod.claims:
            pvc = self._pvc(pod.namespace, claim_name)
            if pvc is None:
                if ephemeral:
                    msg = f"waiting for ephemeral volume controller to create the persistentvolumeclaim {claim_name!r}"
                else:
                    msg = f'persistentvolumeclaim "{claim_name}" not found'
                return [], Status.unresolvable(msg)
            if (pvc.get("status") or {}).get("phase") == "Lost":
                return [], Status.unresolvable(
                    f'persistentvolumeclaim "{claim_name}" bound to non-existent persistentvolume '
                    f'"{(pvc.get("spec") or {}).get("volumeName", "")}"')
            if (pvc.get("metadata") or {}).get("deletionTimestamp") is not None:
                return [], Status.unresolvable(f'persistentvolumeclaim "{claim_name}" is being deleted')
            if ephemeral:
                owners = (pvc.get("metadata") or {}).get("ownerReferences") or ()
                if not any(o.get("uid") == pod.uid and o.get("controller") for o in owners):
                    return [], Status.unresolvable(f"PVC {pod.namespace}/{claim_name} was not created for pod "
                                                   f"{pod.key} (pod is not owner)")
            out.append(pvc)
        return out, None

    # -- prefilter / filter -------------------------------------------------------------------------------------

    def pre_filter(self, state: CycleState, pod: PodInfo) -> tuple[PreFilterResult | None, Status | None]:
        if not pod.claims:
            state.write(_STATE, _State(all_bound=True))
            return None, Status.skip()
        claims, st = self._claims(pod)
        if st is not None:
            return None, st
        s = _State()
        for pvc in claims:
            if self._is_bound(pvc):
                s.bound.append(pvc)
                continue
            cls = self._class(claim_class(pvc))
            delay = cls is not None and cls.get("volumeBindingMode") == "WaitForFirstConsumer"
            if delay and not (pvc.get("spec") or {}).get("volumeName"):
                s.delayed.append(pvc)
            else:
                return None, Status.unresolvable(ERR_UNBOUND_IMMEDIATE)
        state.write(_STATE, s)
        return None, None

    def _pv_taken(self, pv: Mapping[str, Any], pvc: Mapping[str, Any]) -> bool:
        name = (pv.get("metadata") or {}).get("name", "")
        holder = self.assumed_pv.get(name)
        if holder is None:
            return False
        if _bound_to(pv, pvc) or (pv.get("spec") or {}).get("claimRef"):
            if (pv.get("spec") or {}).get("claimRef"):
                self.assumed_pv.pop(name, None)  # the API caught up with the assumption
            return False
        return holder != pvc_key(pvc)

    def find_matching_volume(self, pvc: Mapping[str, Any], node: NodeInfo,
                             excluded: set[str]) -> dict[str, Any] | None:
        """pv_util.FindMatchingVolume on the scheduler path: a PV pre-bound to the claim, else the smallest
        available PV of the claim's class that fits its request, access modes, selector and the node."""
        spec = pvc.get("spec") or {}
        requested = parse_quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage", "0"))
        cls = claim_class(pvc)
        raw_sel = spec.get("selector")
        selector = label_selector(raw_sel) if raw_sel is not None else None
        modes = set(spec.get("accessModes") or ())
        mode = spec.get("volumeMode") or "Filesystem"
        best: dict[str, Any] | None = None
        best_qty = None
        for pv in self.cache.objects.get("PersistentVolume", {}).values():
            md, pspec = pv.get("metadata") or {}, pv.get("spec") or {}
            if md.get("name", "") in excluded:
                continue
            if pspec.get("claimRef") and not _bound_to(pv, pvc):
                continue
            if self._pv_taken(pv, pvc):
                continue
            qty = parse_quantity((pspec.get("capacity") or {}).get("storage", "0"))
            if qty < requested:
                continue
            if (pspec.get("volumeMode") or "Filesystem") != mode:
                continue
            if md.get("deletionTimestamp") is not None:
                continue
            affinity_ok = pv_node_affinity_matches(pv, node)
            if _bound_to(pv, pvc):
                return pv if affinity_ok else None
            if (pv.get("status") or {}).get("phase") != "Available":
                continue
            if selector is not None and not selector.matches(md.get("labels") or {}):
                continue
            if volume_class(pv) != cls or not affinity_ok:
                continue
            if not modes <= set(pspec.get("accessModes") or ()):
                continue
            if best is None or best_qty > qty:  # type: ignore[operator]
                best, best_qty = pv, qty
        return best

    def find_pod_volumes(self, s: _State, node: NodeInfo) -> tuple[PodVolumes, list[str]]:
        reasons: list[str] = []
        pvs = self.cache.objects.get("PersistentVolume", {})
        for pvc in s.bound:
            pv = pvs.get((pvc.get("spec") or {}).get("volumeName", ""))
            if pv is None:
                reasons.append(ERR_PV_NOT_EXIST)
                break
            if not pv_node_affinity_matches(pv, node):
                reasons.append(ERR_NODE_CONFLICT)
                break
        result = PodVolumes()
        if s.delayed:
            to_find, to_provision = [], []
            for pvc in s.delayed:
                key = pvc_key(pvc)
                selected = ((pvc.get("metadata") or {}).get("annotations") or {}).get(ANN_SELECTED_NODE) or \
                    self.assumed_selected_node.get(key)
                if selected:
                    if selected != node.name:
                        reasons.append(ERR_BIND_CONFLICT)
                        return result, reasons
                    to_provision.append(pvc)
                else:
                    to_find.append(pvc)
            chosen: set[str] = set()

            def size(p: Mapping[str, Any]) -> Any:
                return parse_quantity((((p.get("spec") or {}).get("resources") or {}).get("requests") or {})
                                      .get("storage", "0"))
            satisfied = True
            for pvc in sorted(to_find, key=size):
                pv = self.find_matching_volume(pvc, node, chosen)
                if pv is None:
                    to_provision.append(pvc)
                    satisfied = False
                    continue
                chosen.add((pv.get("metadata") or {}).get("name", ""))
                result.static_bindings.append((pv, pvc))
            if to_provision:
                satisfied = True
                for pvc in to_provision:
                    cls = self._class(claim_class(pvc))
                    if cls is None:
                        return result, [f"failed to find storage class {claim_class(pvc)!r}"]
                    prov = cls.get("provisioner") or ""
                    if not prov or prov == NOT_SUPPORTED_PROVISIONER or \
                            not match_topology_selector_terms(cls.get("allowedTopologies"), node.labels):
                        satisfied = False
                        break
                    result.dynamic_provisions.append(pvc)
            if not satisfied:
                reasons.append(ERR_BIND_CONFLICT)
        return result, reasons

    def filter(self, state: CycleState, pod: PodInfo, node: NodeInfo) -> Status | None:
        s: _State | None = state.get(_STATE)
        if s is None:
            return None
        vols, reasons = self.find_pod_volumes(s, node)
        if reasons:
            return Status.unresolvable(*reasons)
        s.by_node[node.name] = vols
        return None

    # -- reserve / prebind --------------------------------------------------------------------------------------

    def reserve(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        s: _State | None = state.get(_STATE)
        if s is None or (not s.delayed):
            if s is not None:
                s.all_bound = True
            return None
        vols = s.by_node.get(node_name)
        if vols is None:
            info = self.cache.node_info(node_name)
            if info is None:
                return Status.as_error(f"node {node_name!r} not found")
            vols, reasons = self.find_pod_volumes(s, info)
            if reasons:
                return Status.unresolvable(*reasons)
            s.by_node[node_name] = vols
        for pv, pvc in vols.static_bindings:
            self.assumed_pv[(pv.get("metadata") or {}).get("name", "")] = pvc_key(pvc)
        for pvc in vols.dynamic_provisions:
            self.assumed_selected_node[pvc_key(pvc)] = node_name
        s.all_bound = not vols.static_bindings and not vols.dynamic_provisions
        return None

    def unreserve(self, state: CycleState, pod: PodInfo, node_name: str) -> None:
        s: _State | None = state.get(_STATE)
        if s is None:
            return
        vols = s.by_node.get(node_name)
        if vols is None:
            return
        for pv, pvc in vols.static_bindings:
            name = (pv.get("metadata") or {}).get("name", "")
            if self.assumed_pv.get(name) == pvc_key(pvc):
                del self.assumed_pv[name]
        for pvc in vols.dynamic_provisions:
            self.assumed_selected_node.pop(pvc_key(pvc), None)

    async def pre_bind(self, state: CycleState, pod: PodInfo, node_name: str) -> Status | None:
        s: _State | None = state.get(_STATE)
        if s is None or s.all_bound:
            return None
        vols = s.by_node.get(node_name)
        if vols is None:
            return Status.as_error(f"no volumes selected for node {node_name!r}")
        api = self.handle.volume_api
        if api is None:
            return Status.as_error("no VolumeAPI configured to bind volumes")
        try:
            for pv, pvc in vols.static_bindings:
                await api.bind_volume(pv, pvc)
            for pvc in vols.dynamic_provisions:
                await api.select_node(pvc, node_name)
            claims = [pvc for _, pvc in vols.static_bindings] + list(vols.dynamic_provisions)
            await api.wait_bound(pod.pod, claims, self.bind_timeout)
        except Exception as e:
            return Status.as_error(e)
        return None

    def events_to_register(self) -> list[ClusterEventWithHint]:
        upd = ActionType.ADD | ActionType.UPDATE_OTHER
        return [
            ClusterEventWithHint(ClusterEvent("StorageClass", upd)),
            ClusterEventWithHint(ClusterEvent("PersistentVolumeClaim", upd)),
            ClusterEventWithHint(ClusterEvent("PersistentVolume", upd)),
            ClusterEventWithHint(ClusterEvent("Node", ActionType.ADD | ActionType.UPDATE_NODE_LABEL
                                              | ActionType.UPDATE_NODE_TAINT)),
            ClusterEventWithHint(ClusterEvent("CSINode", upd)),
        ]
