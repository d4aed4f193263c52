"""The PersistentVolume binder: binds claims to volumes, asks external provisioners for new ones, reclaims released
volumes — upstream's persistentvolume-binder ("PV controller").

A Pending claim binds to the smallest Available volume that satisfies it (capacity, access modes, volume mode,
storage class, label selector; a volume pre-bound to the claim wins), by setting ``pv.spec.claimRef`` then
``pvc.spec.volumeName`` and both phases to Bound, with upstream's annotations (bind-completed, bound-by-controller).
A claim of a WaitForFirstConsumer class waits for the scheduler's ``volume.kubernetes.io/selected-node`` annotation
and then only takes volumes whose node affinity admits that node. A claim no volume satisfies, whose class names a
provisioner, is annotated ``volume.kubernetes.io/storage-provisioner`` (and the beta twin) so that provisioner (the
CCM's volume controller, or a CSI external-provisioner) creates a volume pre-bound to it. When a bound claim goes
away its volume is Released; the Delete reclaim policy deletes the PV object unless a provisioner-owned finalizer
says the provisioner will (after removing the backing disk), Retain keeps it Released.

Decisions read the informer caches overlaid with this controller's own latest writes (upstream's assume cache), so
a claim processed right after a bind never sees the volume as still Available. One worker serialises binding so two
claims cannot race for one volume.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

from controlplane.client import ApiClient, NotFound, SharedInformerFactory, split_key
from controlplane.client.resources import NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES
from controlplane.controllers.base import DONE, ControllerContext, Enqueue, Result
from controlplane.client.events import NORMAL, WARNING, EventRecorder
from controlplane.scheduler.labels import label_selector, parse_node_selector
from controlplane.scheduler.quantity import QuantityError, parse_quantity

log = logging.getLogger(__name__)

Obj = dict[str, Any]

ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
ANN_DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
ANN_BETA_DEFAULT_CLASS = "storageclass.beta.kubernetes.io/is-default-class"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
PV_PROTECTION = "kubernetes.io/pv-protection"


def _annotations(obj: Obj) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _rv(obj: Obj | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def claim_class(claim: Obj) -> str | None:
    """The claim's class: spec.storageClassName, else the beta annotation; None when neither is set."""
    spec = claim.get("spec") or {}
    if spec.get("storageClassName") is not None:
        return str(spec["storageClassName"])
    ann = _annotations(claim).get(ANN_BETA_STORAGE_CLASS)
    return ann


def volume_class(pv: Obj) -> str:
    spec = pv.get("spec") or {}
    if spec.get("storageClassName") is not None:
        return str(spec["storageClassName"])
    return _annotations(pv).get(ANN_BETA_STORAGE_CLASS, "")


def _quantity(value: Any) -> Fraction | None:
    try:
        return parse_quantity(value) if value is not None else None
    except QuantityError:
        return None


def _claim_key(claim: Obj) -> str:
    return f"{claim['metadata']['namespace']}/{claim['metadata']['name']}"


def _ref_key(pv: Obj) -> str | None:
    ref = (pv.get("spec") or {}).get("claimRef")
    if not ref or not ref.get("name"):
        return None
    return f"{ref.get('namespace') or 'default'}/{ref['name']}"


class PersistentVolumeBinderController:
    name = "persistentvolume-binder"
    workers = 1  # binding decisions must not race each other for the same volume

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        self._assumed: dict[str, Obj] = {}  # "pv/<name>" or "pvc/<ns>/<name>" -> our latest write

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        self.client = client
        self.enqueue = enqueue
        self.recorder = EventRecorder(client, "persistentvolume-controller")
        self.volumes = informers.informer(PERSISTENTVOLUMES)
        self.claims = informers.informer(PERSISTENTVOLUMECLAIMS)
        self.classes = informers.informer(STORAGECLASSES)
        self.nodes = informers.informer(NODES)
        self.volumes.add_index("claim", _ref_key)

        def claim_changed(claim: Obj, *rest: Obj) -> None:
            enqueue(_claim_key(rest[-1] if rest else claim))

        def claim_deleted(claim: Obj) -> None:
            self._assumed.pop(f"pvc/{_claim_key(claim)}", None)
            volume = (claim.get("spec") or {}).get("volumeName")
            if volume:
                enqueue(volume)
            for pv in self.volumes.by_index("claim", _claim_key(claim)):
                enqueue(pv["metadata"]["name"])

        def volume_changed(pv: Obj, *rest: Obj) -> None:
            pv = rest[-1] if rest else pv
            enqueue(pv["metadata"]["name"])
            ref = _ref_key(pv)
            if ref is not None:
                enqueue(ref)
            elif (pv.get("status") or {}).get("phase") == "Available":
                self._enqueue_unbound_claims()  # a volume became available: pending claims may now fit

        def volume_deleted(pv: Obj) -> None:
            self._assumed.pop(f"pv/{pv['metadata']['name']}", None)
            ref = _ref_key(pv)
            if ref is not None:
                enqueue(ref)

        def class_changed(sc: Obj, *rest: Obj) -> None:
            self._enqueue_unbound_claims()

        self.claims.add_handler(on_add=claim_changed, on_update=claim_changed, on_delete=claim_deleted)
        self.volumes.add_handler(on_add=volume_changed, on_update=volume_changed, on_delete=volume_deleted)
        self.classes.add_handler(on_add=class_changed, on_update=class_changed)

    async def shutdown(self) -> None:
        await self.recorder.aclose()

    def _enqueue_unbound_claims(self) -> None:
        for claim in self.claims.list():
            if not (claim.get("spec") or {}).get("volumeName"):
                self.enqueue(_claim_key(claim))

    # -- the assume cache --------------------------------------------------------------------------------------

    def _latest(self, kind: str, key: str, cached: Obj | None) -> Obj | None:
        assumed = self._assumed.get(f"{kind}/{key}")
        if assumed is None:
            return cached
        if cached is None or _rv(cached) >= _rv(assumed):
            self._assumed.pop(f"{kind}/{key}", None)  # the cache caught up (or the object went away)
            return cached
        return assumed

    def _pv(self, name: str) -> Obj | None:
        return self._latest("pv", name, self.volumes.get(name))

    def _pvc(self, key: str) -> Obj | None:
        return self._latest("pvc", key, self.claims.get(key))

    def _all_pvs(self) -> list[Obj]:
        return [pv for pv in (self._pv(n) for n in self.volumes.keys()) if pv is not None]

    def _assume(self, kind: str, key: str, obj: Obj) -> Obj:
        self._assumed[f"{kind}/{key}"] = obj
        return obj

    # -- reconcile ---------------------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Result:
        if "/" in key:
            claim = self._pvc(key)
            if claim is not None:
                await self._sync_claim(claim)
        else:
            pv = self._pv(key)
            if pv is not None:
                await self._sync_volume(pv)
        return DONE

    # -- claims ------------------------------------------------------------------------------------------------

    async def _sync_claim(self, claim: Obj) -> None:
        if (claim.get("spec") or {}).get("volumeName"):
            await self._sync_bound_claim(claim)
        else:
            await self._sync_unbound_claim(claim)

    def _default_class(self) -> Obj | None:
        defaults = [sc for sc in self.classes.list() if "true" in (
            _annotations(sc).get(ANN_DEFAULT_CLASS), _annotations(sc).get(ANN_BETA_DEFAULT_CLASS))]
        if not defaults:
            return None
        # Several defaults: upstream picks the newest.
        return max(defaults, key=lambda sc: (sc["metadata"].get("creationTimestamp") or "", sc["metadata"]["name"]))

    async def _sync_unbound_claim(self, claim: Obj) -> None:
        key = _claim_key(claim)
        class_name = claim_class(claim)
        if class_name is None:
            default = self._default_class()
            if default is not None:
                # Retroactive default StorageClass (GA in 1.28): a claim created without a class gets the default.
                updated = await self.client.update(PERSISTENTVOLUMECLAIMS, {
                    **claim, "spec": {**claim["spec"], "storageClassName": default["metadata"]["name"]}})
                self._assume("pvc", key, updated)
                return
            class_name = ""
        sc = self.classes.get(class_name) if class_name else None
        delayed = sc is not None and sc.get("volumeBindingMode") == "WaitForFirstConsumer"
        selected = _annotations(claim).get(ANN_SELECTED_NODE)
        node = self.nodes.get(selected) if selected else None
        volume = self._find_match(claim, class_name, delayed, selected, node)
        if volume is not None:
            await self._bind(volume, claim)
            return
        if delayed and not selected:
            await self._set_claim_phase(claim, "Pending")
            self.recorder.event(claim, NORMAL, "WaitForFirstConsumer",
                                "waiting for first consumer to be created before binding")
            return
        provisioner = (sc or {}).get("provisioner")
        if provisioner and provisioner != NO_PROVISIONER:
            ann = _annotations(claim)
            if ann.get(ANN_STORAGE_PROVISIONER) != provisioner or ann.get(ANN_BETA_STORAGE_PROVISIONER) != provisioner:
                meta = {**claim["metadata"], "annotations": {**ann, ANN_STORAGE_PROVISIONER: provisioner,
                                                             ANN_BETA_STORAGE_PROVISIONER: provisioner}}
                claim = self._assume("pvc", key, await self.client.update(PERSISTENTVOLUMECLAIMS,
                                                                          {**claim, "metadata": meta}))
            await self._set_claim_phase(claim, "Pending")
            self.recorder.event(claim, NORMAL, "ExternalProvisioning",
                                f"Waiting for a volume to be created either by the external provisioner "
                                f"'{provisioner}' or manually by the system administrator. If volume creation is "
                                "delayed, please verify that the provisioner is running and correctly registered.")
            return
        await self._set_claim_phase(claim, "Pending")
        if class_name and sc is None:
            message = f'storageclass.storage.k8s.io "{class_name}" not found'
        elif not class_name:
            message = "no persistent volumes available for this claim and no storage class is set"
        else:
            message = f"no persistent volumes available for this claim and storage class {class_name!r} " \
                      "has no provisioner"
        self.recorder.event(claim, NORMAL if not class_name else WARNING, "FailedBinding"
                            if not class_name else "ProvisioningFailed", message)

    def _find_match(self, claim: Obj, class_name: str, delayed: bool, selected: str | None,
                    node: Obj | None) -> Obj | None:
        """upstream's FindMatchingVolume: a volume pre-bound to the claim, else the smallest available fit."""
        spec = claim.get("spec") or {}
        requested = _quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage")) or Fraction(0)
        modes = set(spec.get("accessModes") or [])
        mode = spec.get("volumeMode") or "Filesystem"
        try:
            selector = label_selector(spec.get("selector")) if spec.get("selector") is not None else None
        except ValueError:
            return None
        best: Obj | None = None
        best_size: Fraction | None = None
        for pv in self._all_pvs():
            pv_spec = pv.get("spec") or {}
            if pv["metadata"].get("deletionTimestamp"):
                continue
            size = _quantity((pv_spec.get("capacity") or {}).get("storage"))
            if size is None or size < requested:
                continue
            if (pv_spec.get("volumeMode") or "Filesystem") != mode:
                continue
            if delayed and node is not None and not self._node_admits(pv, node):
                continue
            ref = pv_spec.get("claimRef")
            if ref:
                if _ref_key(pv) == _claim_key(claim) and ref.get("uid") in (None, "", claim["metadata"].get("uid")):
                    return pv  # pre-bound to this claim
                continue
            if delayed and node is None:
                continue  # no node chosen yet: nothing to judge node affinity by
            if (pv.get("status") or {}).get("phase") != "Available":
                continue
            if selector is not None and not selector.matches(pv["metadata"].get("labels") or {}):
                continue
            if volume_class(pv) != class_name:
                continue
            if not modes <= set(pv_spec.get("accessModes") or []):
                continue
            if best_size is None or size < best_size:
                best, best_size = pv, size
        return best

    @staticmethod
    def _node_admits(pv: Obj, node: Obj) -> bool:
        required = ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required")
        if required is None:
            return True
        selector = parse_node_selector(required)
        assert selector is not None
        return selector.matches(node["metadata"].get("labels") or {}, node["metadata"]["name"])

    async def _sync_bound_claim(self, claim: Obj) -> None:
        name = claim["spec"]["volumeName"]
        pv = self._pv(name)
        if pv is None:
            try:
                pv = await self.client.get(PERSISTENTVOLUMES, name)  # the cache may be behind a new volume
            except NotFound:
                pv = None
        if pv is None:
            if _annotations(claim).get(ANN_BIND_COMPLETED):
                if (claim.get("status") or {}).get("phase") != "Lost":
                    self.recorder.event(claim, WARNING, "ClaimLost",
                                        "Bound claim has lost reference to PersistentVolume. Data on the volume is "
                                        "lost!")
                await self._set_claim_phase(claim, "Lost")
            else:
                await self._set_claim_phase(claim, "Pending")  # bound by the user to a volume not there yet
            return
        ref = (pv.get("spec") or {}).get("claimRef")
        if ref is None or (_ref_key(pv) == _claim_key(claim)
                           and ref.get("uid") in (None, "", claim["metadata"].get("uid"))):
            if ref is None and not self._satisfies(pv, claim):
                await self._set_claim_phase(claim, "Pending")
                self.recorder.event(claim, WARNING, "VolumeMismatch",
                                    "Cannot bind to requested volume: the volume does not satisfy the claim")
                return
            await self._bind(pv, claim)
            return
        if _annotations(claim).get(ANN_BIND_COMPLETED):
            await self._set_claim_phase(claim, "Lost")
            self.recorder.event(claim, WARNING, "ClaimMisbound",
                                "Two claims are bound to the same volume, this one is bound incorrectly")
        else:
            await self._set_claim_phase(claim, "Pending")
            self.recorder.event(claim, WARNING, "FailedBinding", f"volume {name!r} already bound to a different claim.")

    def _satisfies(self, pv: Obj, claim: Obj) -> bool:
        spec, pv_spec = claim.get("spec") or {}, pv.get("spec") or {}
        requested = _quantity(((spec.get("resources") or {}).get("requests") or {}).get("storage")) or Fraction(0)
        size = _quantity((pv_spec.get("capacity") or {}).get("storage"))
        return (size is not None and size >= requested
                and (pv_spec.get("volumeMode") or "Filesystem") == (spec.get("volumeMode") or "Filesystem")
                and set(spec.get("accessModes") or []) <= set(pv_spec.get("accessModes") or [])
                and volume_class(pv) == (claim_class(claim) or ""))

    async def _bind(self, pv: Obj, claim: Obj) -> None:
        """Bind both ways, idempotently (each step is skipped when already done, so an interrupted bind resumes)."""
        name = pv["metadata"]["name"]
        key = _claim_key(claim)
        cmeta = claim["metadata"]
        ref = (pv.get("spec") or {}).get("claimRef")
        if not ref or ref.get("uid") != cmeta.get("uid"):
            annotations = dict(_annotations(pv))
            if not ref:
                annotations[ANN_BOUND_BY_CONTROLLER] = "yes"
            claim_ref = {"kind": "PersistentVolumeClaim", "namespace": cmeta["namespace"], "name": cmeta["name"],
                         "uid": cmeta.get("uid"), "apiVersion": "v1", "resourceVersion": cmeta.get("resourceVersion")}
            pv = self._assume("pv", name, await self.client.update(PERSISTENTVOLUMES, {
                **pv, "metadata": {**pv["metadata"], "annotations": annotations},
                "spec": {**pv["spec"], "claimRef": claim_ref}}))
        if (pv.get("status") or {}).get("phase") != "Bound":
            pv = self._assume("pv", name, await self.client.update_status(PERSISTENTVOLUMES, {
                **pv, "status": {**(pv.get("status") or {}), "phase": "Bound"}}))
        ann = _annotations(claim)
        if claim["spec"].get("volumeName") != name or ann.get(ANN_BIND_COMPLETED) != "yes":
            annotations = {**ann, ANN_BIND_COMPLETED: "yes"}
            if claim["spec"].get("volumeName") != name:
                annotations[ANN_BOUND_BY_CONTROLLER] = "yes"
            claim = self._assume("pvc", key, await self.client.update(PERSISTENTVOLUMECLAIMS, {
                **claim, "metadata": {**cmeta, "annotations": annotations},
                "spec": {**claim["spec"], "volumeName": name}}))
        pv_spec = pv.get("spec") or {}
        status = {**(claim.get("status") or {}), "phase": "Bound",
                  "accessModes": list(pv_spec.get("accessModes") or []),
                  "capacity": dict(pv_spec.get("capacity") or {})}
        if claim.get("status") != status:
            claim = self._assume("pvc", key, await self.client.update_status(PERSISTENTVOLUMECLAIMS,
                                                                             {**claim, "status": status}))
            log.info("bound claim %s to volume %s", key, name)

    async def _set_claim_phase(self, claim: Obj, phase: str) -> None:
        if (claim.get("status") or {}).get("phase") == phase:
            return
        updated = await self.client.update_status(PERSISTENTVOLUMECLAIMS, {
            **claim, "status": {**(claim.get("status") or {}), "phase": phase}})
        self._assume("pvc", _claim_key(claim), updated)

    # -- volumes -----------------------------------------------------------------------------------------------

    async def _set_volume_phase(self, pv: Obj, phase: str, message: str | None = None) -> Obj:
        status = pv.get("status") or {}
        if status.get("phase") == phase:
            return pv
        new_status = {k: v for k, v in status.items() if k not in ("message", "reason")}
        new_status["phase"] = phase
        if message:
            new_status["message"] = message
        updated = await self.client.update_status(PERSISTENTVOLUMES, {**pv, "status": new_status})
        return self._assume("pv", pv["metadata"]["name"], updated)

    async def _sync_volume(self, pv: Obj) -> None:
        if pv["metadata"].get("deletionTimestamp"):
            return
        ref = (pv.get("spec") or {}).get("claimRef")
        if not ref:
            await self._set_volume_phase(pv, "Available")
            return
        ref_key = _ref_key(pv)
        assert ref_key is not None
        if not ref.get("uid"):
            await self._set_volume_phase(pv, "Available")  # pre-bound by its creator; the claim finishes the bind
            self.enqueue(ref_key)
            return
        claim = self._pvc(ref_key)
        if claim is None:
            ns, name = split_key(ref_key)
            try:
                claim = await self.client.get(PERSISTENTVOLUMECLAIMS, name, ns)  # never release on a stale cache
            except NotFound:
                claim = None
        if claim is None or claim["metadata"].get("uid") != ref.get("uid"):
            await self._release(pv)
            return
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if not volume_name:
            self.enqueue(ref_key)  # binding in progress (or a provisioned volume): the claim's sync completes it
            return
        if volume_name == pv["metadata"]["name"]:
            await self._set_volume_phase(pv, "Bound")
            return
        # The claim is bound to another volume.
        if _annotations(pv).get(ANN_BOUND_BY_CONTROLLER):
            annotations = {k: v for k, v in _annotations(pv).items() if k != ANN_BOUND_BY_CONTROLLER}
            spec = {k: v for k, v in pv["spec"].items() if k != "claimRef"}
            pv = self._assume("pv", pv["metadata"]["name"], await self.client.update(PERSISTENTVOLUMES, {
                **pv, "metadata": {**pv["metadata"], "annotations": annotations}, "spec": spec}))
            await self._set_volume_phase(pv, "Available")
        else:
            # Pre-bound by a user to a claim that went elsewhere: keep the pre-binding (name only), as upstream.
            spec = {**pv["spec"], "claimRef": {k: v for k, v in ref.items() if k not in ("uid", "resourceVersion")}}
            pv = self._assume("pv", pv["metadata"]["name"], await self.client.update(PERSISTENTVOLUMES,
                                                                                     {**pv, "spec": spec}))
            await self._set_volume_phase(pv, "Available")

    async def _release(self, pv: Obj) -> None:
        name = pv["metadata"]["name"]
        pv = await self._set_volume_phase(pv, "Released")
        policy = (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") or "Retain"
        if policy == "Delete":
            owned = [f for f in pv["metadata"].get("finalizers") or [] if f != PV_PROTECTION]
            if owned:
                return  # its provisioner deletes the backing volume, then the PV (its finalizer says so)
            log.info("volume %s: claim gone, reclaim policy Delete; deleting", name)
            try:
                await self.client.delete(PERSISTENTVOLUMES, name, preconditions={"uid": pv["metadata"]["uid"]})
            except NotFound:
                pass
        elif policy == "Recycle":
            await self._set_volume_phase(pv, "Failed", "Recycle is deprecated and not supported by ccmkit")
            self.recorder.event(pv, WARNING, "VolumeFailedRecycle", "Recycle is not supported by ccmkit")
