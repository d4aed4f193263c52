"""The snapshot: pod requests, incremental node/pod accounting in arrays and NodeInfos, assumed pods, order."""

from __future__ import annotations

import numpy as np
import pytest
from scheduler_builders import FakeClock, node, pod

from controlplane.scheduler.cache import Cache
from controlplane.scheduler.podinfo import PodInfo, pod_requests


def spec(*containers, init=(), overhead=None):
    def c(name, req, policy=None):
        d = {"name": name, "resources": {"requests": req}}
        if policy:
            d["restartPolicy"] = policy
        return d
    s = {"containers": [c(f"c{i}", r) for i, r in enumerate(containers)],
         "initContainers": [c(f"i{i}", r, p) for i, (r, p) in enumerate(init)]}
    if overhead:
        s["overhead"] = overhead
    return s


@pytest.mark.parametrize("s, want", [
    (spec({"cpu": "100m", "memory": "1Gi"}, {"cpu": "200m"}), {"cpu": 300, "memory": 1 << 30}),
    # init containers define a floor: max(sum(containers), max(init))
    (spec({"cpu": "100m"}, init=[({"cpu": "1"}, None)]), {"cpu": 1000}),
    # overhead is added on top
    (spec({"cpu": "100m"}, overhead={"cpu": "50m", "memory": "10Mi"}), {"cpu": 150, "memory": 10 << 20}),
    # a sidecar (restartPolicy Always) adds to the containers and to every later init container
    (spec({"cpu": "100m"}, init=[({"cpu": "200m"}, "Always"), ({"cpu": "250m"}, None)]), {"cpu": 450}),
    (spec({"cpu": "100m"}, init=[({"cpu": "200m"}, "Always"), ({"cpu": "500m"}, None)]), {"cpu": 700}),
    # extended and hugepages resources are accounted, unknown unqualified names are not
    (spec({"example.com/gpu": "2", "hugepages-2Mi": "4Mi", "foo": "1"}),
     {"example.com/gpu": 2, "hugepages-2Mi": 4 << 20}),
])
def test_pod_requests(s, want):
    got, _, _ = pod_requests(s)
    assert got == want


def test_limits_default_requests_and_non_zero_defaults():
    s = {"containers": [{"name": "a", "resources": {"limits": {"cpu": "300m"}}}, {"name": "b"}]}
    req, nz_cpu, nz_mem = pod_requests(s)
    assert req == {"cpu": 300}
    # b has no cpu and neither has memory: 100m / 200Mi are assumed for scoring only.
    assert nz_cpu == 400
    assert nz_mem == 2 * 200 * 1024 * 1024


def _check_consistent(c: Cache) -> None:
    """Arrays agree with the NodeInfos for every used slot."""
    for slot in range(c.size):
        info = c.infos[slot]
        if info is None:
            assert c.req[:, slot].sum() == 0
            continue
        for name, row in c.resource_index.items():
            want_req = len(info.pods) if name == "pods" else info.requested.get(name, 0)
            assert c.req[row, slot] == want_req, (info.name, name)
            assert c.alloc[row, slot] == info.allocatable.get(name, 0)
            assert c.free[row, slot] == c.alloc[row, slot] - c.req[row, slot]
        assert c.nz_cpu[slot] == info.nonzero_cpu
        assert c.live[slot] == (info.node is not None)


def test_nodes_and_pods_update_arrays_incrementally():
    c = Cache(initial_capacity=2)
    for i in range(5):
        c.add_node(node(f"n{i}", cpu="2", labels={"zone": f"z{i % 2}"}))
    p1 = pod("p1", cpu="500m", node_name="n1")
    p2 = pod("p2", cpu="1", memory="1Gi", node_name="n1", requests={"example.com/gpu": "1"})
    c.add_pod(p1)
    c.add_pod(p2)
    _check_consistent(c)
    s1 = c.slot_of["n1"]
    assert c.free[c.resource_index["cpu"], s1] == 500
    assert c.req[c.resource_index["example.com/gpu"], s1] == 1
    # update: the pod's labels change; accounting stays
    p1b = {**p1, "metadata": {**p1["metadata"], "labels": {"a": "b"}}}
    c.update_pod(p1, p1b)
    _check_consistent(c)
    c.remove_pod(p2)
    _check_consistent(c)
    assert c.free[c.resource_index["cpu"], s1] == 1500
    # node update: labels and allocatable
    c.update_node(None, node("n1", cpu="8", labels={"zone": "z9"}))
    assert c.codes("zone")[s1] == c.value_code("zone", "z9")
    assert c.free[c.resource_index["cpu"], s1] == 7500
    _check_consistent(c)


def test_deleted_node_keeps_its_pods_as_ghost_until_they_go():
    c = Cache()
    c.add_node(node("n1"))
    p = pod("p", node_name="n1")
    c.add_pod(p)
    c.remove_node("n1")
    assert c.num_nodes == 0 and c.node_info("n1") is None
    slot = c.slot_of["n1"]
    assert not c.live[slot]
    assert c.req[c.resource_index["pods"], slot] == 1
    c.remove_pod(p)
    assert "n1" not in c.slot_of
    c.add_node(node("n2"))
    _check_consistent(c)


def test_pod_before_node_is_accounted_when_node_arrives():
    c = Cache()
    c.add_pod(pod("p", cpu="1", node_name="late"))
    c.add_node(node("late", cpu="2"))
    assert c.free[c.resource_index["cpu"], c.slot_of["late"]] == 1000
    _check_consistent(c)


def test_assume_confirm_forget_and_expire():
    clock = FakeClock()
    c = Cache(assumed_pod_ttl=30, clock=clock)
    c.add_node(node("n1", cpu="1"))
    pi = PodInfo(pod("p", cpu="600m"))
    assumed = c.assume_pod(pi, "n1")
    assert assumed.node_name == "n1" and c.is_assumed(pi.uid)
    assert c.free[0, c.slot_of["n1"]] == 400
    with pytest.raises(ValueError):
        c.assume_pod(pi, "n1")
    c.forget_pod(pi.uid)
    assert c.free[0, c.slot_of["n1"]] == 1000 and not c.has_pod(pi.uid)

    # assumed + binding finished + never confirmed -> expires after the TTL
    c.assume_pod(pi, "n1")
    c.finish_binding(pi.uid)
    clock.advance(29)
    assert c.cleanup_assumed_pods() == []
    clock.advance(2)
    assert [p.uid for p in c.cleanup_assumed_pods()] == [pi.uid]
    assert c.free[0, c.slot_of["n1"]] == 1000

    # confirmed by the informer's Add: no longer assumed, accounting unchanged
    c.assume_pod(pi, "n1")
    c.add_pod(assumed.pod)
    assert not c.is_assumed(pi.uid)
    assert c.free[0, c.slot_of["n1"]] == 400
    _check_consistent(c)


def test_confirmed_on_another_node_moves_the_pod():
    c = Cache()
    c.add_node(node("a"))
    c.add_node(node("b"))
    pi = PodInfo(pod("p", cpu="1"))
    c.assume_pod(pi, "a")
    c.add_pod(pi.assigned_to("b").pod)
    assert c.free[0, c.slot_of["a"]] == 4000 and c.free[0, c.slot_of["b"]] == 3000


def test_terminal_pods_leave_the_cache():
    c = Cache()
    c.add_node(node("n"))
    p = pod("p", node_name="n")
    c.add_pod(p)
    done = {**p, "status": {"phase": "Succeeded"}}
    c.update_pod(p, done)
    assert not c.has_pod(PodInfo(p).uid)
    _check_consistent(c)


def test_node_order_round_robins_zones():
    c = Cache()
    for name, zone in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b"), ("c1", "c"), ("b2", "b")]:
        c.add_node(node(name, labels={"topology.kubernetes.io/zone": zone}))
    names = [c.names[s] for s in c.node_order()]
    assert names == ["a1", "b1", "c1", "a2", "b2", "a3"]
    c.remove_node("b1")
    assert [c.names[s] for s in c.node_order()] == ["a1", "b2", "c1", "a2", "a3"]


def test_pod_groups_and_terms_index():
    c = Cache()
    c.add_node(node("n1"))
    c.add_node(node("n2"))
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    for i, n in enumerate(["n1", "n1", "n2"]):
        c.add_pod(pod(f"p{i}", labels={"app": "x"}, node_name=n, affinity=anti))
    groups = c.groups_matching(("t",), lambda g: g.labels.get("app") == "x")
    counts = c.pod_counts(groups)
    assert counts[c.slot_of["n1"]] == 2 and counts[c.slot_of["n2"]] == 1
    (entry,) = c.terms["req_anti"].values()
    assert entry.counter.total == 3
    # a new group is picked up by the memoised match incrementally
    c.add_pod(pod("q", labels={"app": "x", "v": "2"}, node_name="n2"))
    assert len(c.groups_matching(("t",), lambda g: g.labels.get("app") == "x")) == 2


def test_requirement_masks_cover_operators():
    c = Cache()
    c.add_node(node("a", labels={"k": "1", "g": "10"}))
    c.add_node(node("b", labels={"k": "2", "g": "x"}))
    c.add_node(node("c", labels={}))
    from controlplane.scheduler.labels import parse_node_selector_term

    def names(expr, field=False):
        term = parse_node_selector_term({"matchFields" if field else "matchExpressions": [expr]})
        m = c.term_mask(term)
        return sorted(c.names[s] for s in np.flatnonzero(m & c.live))
    assert names({"key": "k", "operator": "In", "values": ["1", "3"]}) == ["a"]
    assert names({"key": "k", "operator": "NotIn", "values": ["1"]}) == ["b", "c"]
    assert names({"key": "k", "operator": "Exists"}) == ["a", "b"]
    assert names({"key": "k", "operator": "DoesNotExist"}) == ["c"]
    assert names({"key": "g", "operator": "Gt", "values": ["5"]}) == ["a"]
    assert names({"key": "g", "operator": "Lt", "values": ["5"]}) == []
    assert names({"key": "metadata.name", "operator": "In", "values": ["b"]}, field=True) == ["b"]
    assert names({"key": "metadata.name", "operator": "NotIn", "values": ["b"]}, field=True) == ["a", "c"]
    assert names({"key": "nope", "operator": "In", "values": ["x"]}) == []
