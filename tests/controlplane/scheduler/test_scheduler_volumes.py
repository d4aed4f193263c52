"""VolumeBinding and VolumeZone: bound claims, Immediate vs WaitForFirstConsumer, static matching, dynamic
provisioning with allowedTopologies, and the PreBind writes through the VolumeAPI callback."""

from __future__ import annotations

import asyncio
from typing import Any

from scheduler_builders import cluster, node, pod

from controlplane.scheduler.podinfo import PodInfo

ZONE = "topology.kubernetes.io/zone"
NODES = [node("a", labels={ZONE: "z1"}), node("b", labels={ZONE: "z2"})]


def sc(name: str, mode: str = "WaitForFirstConsumer", provisioner: str = "csi.example.com",
       zones: list[str] | None = None) -> dict[str, Any]:
    o: dict[str, Any] = {"metadata": {"name": name}, "provisioner": provisioner, "volumeBindingMode": mode}
    if zones:
        o["allowedTopologies"] = [{"matchLabelExpressions": [{"key": ZONE, "values": zones}]}]
    return o


def pvc(name: str, cls: str = "wffc", size: str = "1Gi", volume: str = "", bound: bool = False) -> dict[str, Any]:
    o: dict[str, Any] = {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
                         "spec": {"storageClassName": cls, "accessModes": ["ReadWriteOnce"],
                                  "resources": {"requests": {"storage": size}}}, "status": {}}
    if volume:
        o["spec"]["volumeName"] = volume
    if bound:
        o["metadata"]["annotations"] = {"pv.kubernetes.io/bind-completed": "yes"}
        o["status"]["phase"] = "Bound"
    return o


def pv(name: str, cls: str = "wffc", size: str = "1Gi", zone: str | None = None, hostname: str | None = None,
       claim: str | None = None, phase: str = "Available") -> dict[str, Any]:
    o: dict[str, Any] = {"metadata": {"name": name, "labels": {}},
                         "spec": {"storageClassName": cls, "capacity": {"storage": size},
                                  "accessModes": ["ReadWriteOnce"]}, "status": {"phase": phase}}
    if zone:
        o["metadata"]["labels"][ZONE] = zone
    if hostname:
        o["spec"]["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}}
    if claim:
        o["spec"]["claimRef"] = {"name": claim, "namespace": "default"}
    return o


def with_claims(name: str, *claims: str) -> dict[str, Any]:
    return pod(name, volumes=[{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                              for i, c in enumerate(claims)])


def setup(*objs: tuple[str, dict[str, Any]], **kw: Any):
    cache, sched = cluster(*NODES, **kw)
    for kind, o in objs:
        cache.upsert_object(kind, o)
    return cache, sched


def test_bound_claim_follows_pv_node_affinity():
    _, sched = setup(("StorageClass", sc("wffc")), ("PersistentVolume", pv("local", hostname="b", claim="data")),
                     ("PersistentVolumeClaim", pvc("data", volume="local", bound=True)))
    r = sched.schedule_one(with_claims("p", "data"))
    assert r.suggested_host == "b"
    _, sched = setup(("StorageClass", sc("wffc")),
                     ("PersistentVolumeClaim", pvc("data", volume="gone", bound=True)))
    r = sched.schedule_one(with_claims("p", "data"), run_post_filter=False)
    # VolumeZone's PreFilter looks the PV up too and stops the cycle first, as upstream
    assert str(r.error) == '0/2 nodes are available: persistentvolume "gone" not found.'
    vb = sched.frameworks["default-scheduler"].all_plugins["VolumeBinding"]
    from controlplane.scheduler.framework import CycleState
    st = CycleState()
    pi = PodInfo(with_claims("p", "data"))
    vb.pre_filter(st, pi)
    assert vb.filter(st, pi, sched.cache.node_info("a")).message() == \
        "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"


def test_unbound_immediate_claim_is_unschedulable():
    _, sched = setup(("StorageClass", sc("fast", mode="Immediate")), ("PersistentVolumeClaim", pvc("c", cls="fast")))
    r = sched.schedule_one(with_claims("p", "c"), run_post_filter=False)
    assert str(r.error) == "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims."


def test_wait_for_first_consumer_picks_smallest_matching_pv():
    _, sched = setup(("StorageClass", sc("wffc", provisioner="kubernetes.io/no-provisioner")),
                     ("PersistentVolume", pv("big", size="10Gi", hostname="a")),
                     ("PersistentVolume", pv("small", size="2Gi", hostname="a")),
                     ("PersistentVolume", pv("tiny", size="500Mi", hostname="b")),
                     ("PersistentVolumeClaim", pvc("c", size="1Gi")))
    fwk = sched.frameworks["default-scheduler"]
    r = sched.schedule_one(with_claims("p", "c"))
    assert r.suggested_host == "a"
    vols = r.state.read("VolumeBinding/state").by_node["a"]
    assert [x[0]["metadata"]["name"] for x in vols.static_bindings] == ["small"]
    assert fwk is r.framework


def test_no_pv_and_no_provisioner_is_a_bind_conflict():
    _, sched = setup(("StorageClass", sc("wffc", provisioner="kubernetes.io/no-provisioner")),
                     ("PersistentVolumeClaim", pvc("c")))
    r = sched.schedule_one(with_claims("p", "c"), run_post_filter=False)
    assert str(r.error) == "0/2 nodes are available: 2 node(s) didn't find available persistent volumes to bind."


def test_dynamic_provisioning_respects_allowed_topologies():
    _, sched = setup(("StorageClass", sc("wffc", zones=["z2"])), ("PersistentVolumeClaim", pvc("c")))
    r = sched.schedule_one(with_claims("p", "c"))
    assert r.suggested_host == "b"


def test_selected_node_annotation_pins_the_node():
    claim = pvc("c")
    claim["metadata"]["annotations"] = {"volume.kubernetes.io/selected-node": "a"}
    _, sched = setup(("StorageClass", sc("wffc")), ("PersistentVolumeClaim", claim))
    assert sched.schedule_one(with_claims("p", "c")).suggested_host == "a"


def test_claim_lookup_errors():
    deleting = pvc("c")
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    _, sched = setup(("StorageClass", sc("wffc")), ("PersistentVolumeClaim", deleting))
    r = sched.schedule_one(with_claims("p", "c"), run_post_filter=False)
    assert str(r.error) == '0/2 nodes are available: persistentvolumeclaim "c" is being deleted.'
    eph = pod("e", volumes=[{"name": "scratch", "ephemeral": {"volumeClaimTemplate": {}}}])
    r = sched.schedule_one(eph, run_post_filter=False)
    assert "waiting for ephemeral volume controller to create the persistentvolumeclaim 'e-scratch'" in str(r.error)


class RecordingVolumeAPI:
    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    async def bind(self, pod: dict, node_name: str) -> None:  # doubles as the PodBinder
        self.calls.append(("bind-pod", pod["metadata"]["name"], node_name))

    async def bind_volume(self, pv: dict, pvc: dict) -> None:
        self.calls.append(("bind", pv["metadata"]["name"], pvc["metadata"]["name"]))

    async def select_node(self, pvc: dict, node_name: str) -> None:
        self.calls.append(("select-node", pvc["metadata"]["name"], node_name))

    async def wait_bound(self, pod: dict, pvcs: list, timeout: float) -> None:
        self.calls.append(("wait", *sorted(p["metadata"]["name"] for p in pvcs)))


def test_reserve_and_prebind_write_through_the_callback():
    api = RecordingVolumeAPI()
    cache, sched = setup(("StorageClass", sc("wffc", zones=["z1"])),
                         ("PersistentVolume", pv("static", hostname="a")),
                         ("PersistentVolumeClaim", pvc("s")), ("PersistentVolumeClaim", pvc("d", size="5Gi")),
                         volume_api=api, pod_binder=api)
    q = sched.new_queue()
    q.add(with_claims("p", "s", "d"))
    _, res, bc = sched.schedule_next(q)
    assert bc.node_name == "a"
    vb = bc.framework.all_plugins["VolumeBinding"]
    assert vb.assumed_pv == {"static": "default/s"} and vb.assumed_selected_node == {"default/d": "a"}
    # another pod can't take the PV reserved for the first one
    cache.upsert_object("PersistentVolumeClaim", pvc("s2"))
    r2 = sched.schedule_one(with_claims("q", "s2"))
    state2 = r2.state.read("VolumeBinding/state")
    assert all(not v.static_bindings for v in state2.by_node.values())
    assert asyncio.run(sched.bind(bc)) is None
    assert api.calls == [("bind", "static", "s"), ("select-node", "d", "a"), ("wait", "d", "s"),
                         ("bind-pod", "p", "a")]


def test_volume_zone():
    _, sched = setup(("StorageClass", sc("wffc")),
                     ("PersistentVolume", pv("zonal", cls="std", zone="z2", claim="c", phase="Bound")),
                     ("PersistentVolumeClaim", pvc("c", cls="std", volume="zonal", bound=True)))
    fwk = sched.frameworks["default-scheduler"]
    from controlplane.scheduler.framework import CycleState
    state = CycleState()
    pi = PodInfo(with_claims("p", "c"))
    vz = fwk.all_plugins["VolumeZone"]
    vz.pre_filter(state, pi)
    verdicts = {i.name: vz.filter(state, pi, i) for i in sched.cache.node_infos()}
    assert verdicts["b"] is None and verdicts["a"].message() == "node(s) had no available volume zone"
    assert sched.schedule_one(pi).suggested_host == "b"


def test_volume_zone_multi_zone_label_and_zoneless_nodes():
    cache, sched = cluster(node("a", labels={ZONE: "z1"}), node("plain"))
    cache.upsert_object("PersistentVolume", pv("multi", cls="std", zone="z1__z3", claim="c", phase="Bound"))
    cache.upsert_object("PersistentVolumeClaim", pvc("c", cls="std", volume="multi", bound=True))
    from controlplane.scheduler.framework import CycleState
    fwk = sched.frameworks["default-scheduler"]
    vz = fwk.all_plugins["VolumeZone"]
    state = CycleState()
    pi = PodInfo(with_claims("p", "c"))
    vz.pre_filter(state, pi)
    assert vz.filter(state, pi, cache.node_info("a")) is None
    assert vz.filter(state, pi, cache.node_info("plain")) is None  # nodes without zone labels pass
