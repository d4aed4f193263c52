"""The PersistentVolume binder through a real API server: static binding, WaitForFirstConsumer, dynamic
provisioning hand-off, and reclaim policies."""

from __future__ import annotations

from typing import Any

from controlplane.client import EVENTS, NODES, PERSISTENTVOLUMECLAIMS, PERSISTENTVOLUMES, STORAGECLASSES, ApiClient

PVS, PVCS = PERSISTENTVOLUMES, PERSISTENTVOLUMECLAIMS


async def pv(client: ApiClient, name: str, size: str, *, cls: str = "manual", modes: tuple[str, ...] = (
        "ReadWriteOnce",), labels: dict[str, str] | None = None, policy: str = "Retain", mode: str = "Filesystem",
             node: str | None = None, claim_ref: dict[str, Any] | None = None,
             finalizers: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"capacity": {"storage": size}, "accessModes": list(modes), "storageClassName": cls,
                            "persistentVolumeReclaimPolicy": policy, "volumeMode": mode,
                            "hostPath": {"path": f"/tmp/{name}"}}
    if node:
        spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}}
    if claim_ref:
        spec["claimRef"] = claim_ref
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if finalizers:
        meta["finalizers"] = finalizers
    return await client.create(PVS, {"metadata": meta, "spec": spec})


async def pvc(client: ApiClient, name: str, size: str, *, cls: str | None = "manual",
              modes: tuple[str, ...] = ("ReadWriteOnce",), selector: dict[str, Any] | None = None,
              mode: str = "Filesystem", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": list(modes), "resources": {"requests": {"storage": size}},
                            "volumeMode": mode}
    if cls is not None:
        spec["storageClassName"] = cls
    if selector:
        spec["selector"] = selector
    return await client.create(PVCS, {"metadata": {"name": name, "annotations": annotations or {}}, "spec": spec},
                               "default")


async def bound_to(client: ApiClient, claim: str) -> str | None:
    obj = await client.get(PVCS, claim, "default")
    if obj["status"].get("phase") == "Bound":
        return obj["spec"]["volumeName"]
    return None


async def phase(client: ApiClient, resource, name: str, ns: str | None = None) -> str | None:
    return (await client.get(resource, name, ns)).get("status", {}).get("phase")


async def test_static_binding_picks_the_smallest_fitting_volume(client, start_manager, wait_for):
    await start_manager("persistentvolume-binder")
    await pv(client, "small", "1Gi")
    await pv(client, "medium", "5Gi")
    await pv(client, "large", "10Gi")
    await pv(client, "fast", "20Gi", labels={"speed": "fast"})
    await pv(client, "block", "5Gi", mode="Block")
    await pv(client, "shared", "50Gi", modes=("ReadWriteOnce", "ReadOnlyMany"))
    await wait_for(lambda: _all_available(client, 6))

    claim = await pvc(client, "data", "3Gi")
    assert await wait_for(lambda: bound_to(client, "data")) == "medium"
    volume = await client.get(PVS, "medium")
    assert volume["status"]["phase"] == "Bound"
    ref = volume["spec"]["claimRef"]
    assert (ref["namespace"], ref["name"], ref["uid"]) == ("default", "data", claim["metadata"]["uid"])
    assert volume["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] == "yes"
    bound = await client.get(PVCS, "data", "default")
    assert bound["status"]["capacity"] == {"storage": "5Gi"}
    assert bound["status"]["accessModes"] == ["ReadWriteOnce"]
    assert bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes"

    await pvc(client, "picky", "1Gi", selector={"matchLabels": {"speed": "fast"}})
    await pvc(client, "raw", "1Gi", mode="Block")
    await pvc(client, "readers", "1Gi", modes=("ReadOnlyMany",))
    assert await wait_for(lambda: bound_to(client, "picky")) == "fast"
    assert await wait_for(lambda: bound_to(client, "raw")) == "block"
    assert await wait_for(lambda: bound_to(client, "readers")) == "shared"

    # Nothing left that fits: the claim stays Pending (with an event saying why), and binds when a volume appears.
    await pvc(client, "huge", "100Gi")
    await wait_for(lambda: _is(phase(client, PVCS, "huge", "default"), "Pending"))
    assert await bound_to(client, "huge") is None
    await pv(client, "jumbo", "200Gi")
    assert await wait_for(lambda: bound_to(client, "huge")) == "jumbo"


async def _is(value, expected) -> bool:
    return await value == expected


async def _all_available(client: ApiClient, count: int) -> bool:
    items = (await client.list(PVS))["items"]
    return len(items) == count and all(i["status"].get("phase") == "Available" for i in items)


async def test_wait_for_first_consumer_binds_only_after_node_selection(client, start_manager, wait_for):
    await start_manager("persistentvolume-binder")
    await client.create(STORAGECLASSES, {"metadata": {"name": "local"}, "provisioner": "kubernetes.io/no-provisioner",
                                         "volumeBindingMode": "WaitForFirstConsumer"})
    for node in ("node-1", "node-2"):
        await client.create(NODES, {"metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}}})
    await pv(client, "disk-on-1", "10Gi", cls="local", node="node-1")
    await pvc(client, "waits", "1Gi", cls="local")

    async def waiting_event() -> bool:
        events = (await client.list(EVENTS, "default"))["items"]
        return any(e["reason"] == "WaitForFirstConsumer" and e["involvedObject"]["name"] == "waits" for e in events)

    await wait_for(waiting_event)
    assert await bound_to(client, "waits") is None
    assert (await client.get(PVS, "disk-on-1"))["status"]["phase"] == "Available"

    # The scheduler picked node-2, where the only volume is not reachable: still unbound.
    await client.patch(PVCS, "waits", {"metadata": {"annotations": {
        "volume.kubernetes.io/selected-node": "node-2"}}}, "default")
    await pvc(client, "on-1", "1Gi", cls="local", annotations={"volume.kubernetes.io/selected-node": "node-1"})
    assert await wait_for(lambda: bound_to(client, "on-1")) == "disk-on-1"
    assert await bound_to(client, "waits") is None


async def test_dynamic_provisioning_is_handed_to_the_external_provisioner(client, start_manager, wait_for):
    await start_manager("persistentvolume-binder")
    await client.create(STORAGECLASSES, {"metadata": {"name": "gp3", "annotations": {
        "storageclass.kubernetes.io/is-default-class": "true"}}, "provisioner": "ebs.csi.aws.com",
        "reclaimPolicy": "Delete"})
    claim = await pvc(client, "dyn", "8Gi", cls=None)  # no class: the default one applies

    async def annotated() -> dict[str, Any] | None:
        obj = await client.get(PVCS, "dyn", "default")
        ann = obj["metadata"].get("annotations") or {}
        return obj if ann.get("volume.kubernetes.io/storage-provisioner") == "ebs.csi.aws.com" else None

    obj = await wait_for(annotated)
    assert obj["spec"]["storageClassName"] == "gp3"
    assert obj["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-provisioner"] == "ebs.csi.aws.com"
    assert obj["status"]["phase"] == "Pending"

    # The provisioner (the CCM's volume controller, here this test) creates a volume pre-bound to the claim.
    await pv(client, "pvc-dyn", "8Gi", cls="gp3", policy="Delete",
             finalizers=["external-provisioner.volume.kubernetes.io/finalizer"],
             claim_ref={"kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": "default", "name": "dyn",
                        "uid": claim["metadata"]["uid"]})
    assert await wait_for(lambda: bound_to(client, "dyn")) == "pvc-dyn"
    await wait_for(lambda: _is(phase(client, PVS, "pvc-dyn"), "Bound"))

    # Deleting the claim releases the volume; its provisioner owns the deletion (finalizer), so it stays Released.
    await client.delete(PVCS, "dyn", "default")
    await wait_for(lambda: _is(phase(client, PVS, "pvc-dyn"), "Released"))
    assert not (await client.get(PVS, "pvc-dyn"))["metadata"].get("deletionTimestamp")


async def test_reclaim_policies(client, kube, start_manager, wait_for):
    await start_manager("persistentvolume-binder")
    await pv(client, "keep", "1Gi", cls="retain")
    await pv(client, "scratch", "1Gi", cls="delete", policy="Delete")
    await pvc(client, "keep-claim", "1Gi", cls="retain")
    await pvc(client, "scratch-claim", "1Gi", cls="delete")
    assert await wait_for(lambda: bound_to(client, "keep-claim")) == "keep"
    assert await wait_for(lambda: bound_to(client, "scratch-claim")) == "scratch"

    await client.delete(PVCS, "keep-claim", "default")
    await client.delete(PVCS, "scratch-claim", "default")
    await wait_for(lambda: _is(phase(client, PVS, "keep"), "Released"))
    await wait_for(lambda: kube.gone(PVS, "scratch"), message="Delete policy removes the PV")
    # A Released volume is not offered to new claims.
    await pvc(client, "next", "1Gi", cls="retain")
    await wait_for(lambda: _is(phase(client, PVCS, "next", "default"), "Pending"))
    assert await bound_to(client, "next") is None
