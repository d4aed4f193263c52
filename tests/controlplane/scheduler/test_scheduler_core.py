"""The scheduling cycle: FitError messages, percentageOfNodesToScore with rotation, nominated nodes, the
assume/reserve/permit/bind sequence and the in-process loop."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from scheduler_builders import FakeClock, cluster, node, pod, taint

from controlplane.scheduler.cache import Cache
from controlplane.scheduler.config import load_config
from controlplane.scheduler.core import FitError, Scheduler, num_feasible_nodes_to_find
from controlplane.scheduler.framework import Code, Status
from controlplane.scheduler.plugins import REGISTRY

CP = taint("node-role.kubernetes.io/control-plane")


def test_fit_error_message_like_upstream():
    nodes = [node(f"w{i}", cpu="1") for i in range(2)] + [node(f"cp{i}", taints=[CP]) for i in range(3)]
    _, sched = cluster(*nodes, pods=tuple(pod(f"e{i}", cpu="800m", node_name=f"w{i}") for i in range(2)))
    r = sched.schedule_one(pod("p", cpu="500m"))
    assert r.suggested_host is None and isinstance(r.error, FitError)
    # Insufficient cpu on the workers is resolvable by preemption but nothing has lower priority there.
    assert str(r.error) == (
        "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had untolerated taint "
        "{node-role.kubernetes.io/control-plane: }. preemption: 0/5 nodes are available: "
        "2 No preemption victims found for incoming pod, 3 Preemption is not helpful for scheduling..")
    assert r.fit_error.diagnosis.unschedulable_plugins == {"NodeResourcesFit", "TaintToleration"}


def test_fit_error_when_request_exceeds_every_node():
    nodes = [node(f"w{i}", cpu="1") for i in range(2)] + [node(f"cp{i}", taints=[CP]) for i in range(3)]
    _, sched = cluster(*nodes)
    r = sched.schedule_one(pod("p", cpu="2"))
    assert str(r.error) == (
        "0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had untolerated taint "
        "{node-role.kubernetes.io/control-plane: }. preemption: 0/5 nodes are available: "
        "5 Preemption is not helpful for scheduling..")


def test_fit_error_from_prefilter():
    _, sched = cluster(node("a"), node("b"))
    p = pod("p", volumes=[{"name": "v", "persistentVolumeClaim": {"claimName": "missing"}}])
    r = sched.schedule_one(p)
    assert str(r.error) == ('0/2 nodes are available: persistentvolumeclaim "missing" not found. '
                            'preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling..')
    assert r.fit_error.diagnosis.unschedulable_plugins == {"VolumeBinding"}


def test_multiple_reasons_per_node_are_each_counted():
    _, sched = cluster(node("a", cpu="1", memory="1Gi"), node("b", cpu="1", memory="1Gi"))
    r = sched.schedule_one(pod("p", cpu="2", memory="2Gi", preemptionPolicy="Never"))
    assert str(r.error) == ("0/2 nodes are available: 2 Insufficient cpu, 2 Insufficient memory. "
                            "preemption: not eligible due to preemptionPolicy=Never..")


def test_no_nodes():
    _, sched = cluster()
    r = sched.schedule_one(pod("p"))
    assert r.suggested_host is None and "no nodes available" in str(r.error)


@pytest.mark.parametrize("nodes, pct, want", [
    (50, 0, 50), (99, 0, 99), (100, 0, 100), (1000, 0, 420), (5000, 0, 500), (6250, 0, 312), (10000, 0, 500),
    (5000, 30, 1500), (5000, 1, 100), (5000, 100, 5000),
])
def test_num_feasible_nodes_to_find(nodes, pct, want):
    assert num_feasible_nodes_to_find(None, pct, nodes) == want


def test_percentage_of_nodes_to_score_and_rotation():
    nodes = [node(f"n{i:03d}") for i in range(200)]
    cfg = load_config("percentageOfNodesToScore: 50\n")
    cache, sched = cluster(*nodes, config=cfg)
    r1 = sched.schedule_one(pod("p1"))
    assert r1.feasible_nodes == 100 and r1.evaluated_nodes == 100
    assert sched.next_start_node_index == 100
    r2 = sched.schedule_one(pod("p2"))
    assert r2.feasible_nodes == 100 and sched.next_start_node_index == 0
    # the two cycles looked at disjoint halves of the cluster
    assert r1.suggested_host != r2.suggested_host


def test_rotation_counts_failed_nodes_as_processed():
    nodes = [node(f"n{i:03d}", cpu="1" if i % 2 else "8") for i in range(400)]
    cache, sched = cluster(*nodes, config=load_config("percentageOfNodesToScore: 25\n"))
    r = sched.schedule_one(pod("p", cpu="2"))
    # 100 feasible (even) nodes found after looking at 199 nodes in order
    assert r.feasible_nodes == 100 and sched.next_start_node_index == 199


def test_nominated_node_is_tried_first():
    nodes = [node(f"n{i}") for i in range(10)]
    _, sched = cluster(*nodes)
    p = pod("p")
    p["status"] = {"nominatedNodeName": "n7"}
    r = sched.schedule_one(p)
    assert r.suggested_host == "n7" and r.feasible_nodes == 1


def test_ties_are_broken_at_random_reproducibly():
    nodes = [node(f"n{i}") for i in range(20)]
    picks = set()
    for seed in range(6):
        _, sched = cluster(*nodes, seed=seed)
        picks.add(sched.schedule_one(pod("p")).suggested_host)
    assert len(picks) > 1
    _, s1 = cluster(*nodes, seed=3)
    _, s2 = cluster(*nodes, seed=3)
    assert s1.schedule_one(pod("p")).suggested_host == s2.schedule_one(pod("p")).suggested_host


def test_scores_prefer_less_allocated_nodes():
    _, sched = cluster(node("busy"), node("idle"), pods=(pod("e", cpu="3", memory="20Gi", node_name="busy"),))
    assert sched.schedule_one(pod("p")).suggested_host == "idle"


def test_unknown_scheduler_name():
    _, sched = cluster(node("n"))
    with pytest.raises(KeyError):
        sched.schedule_one(pod("p", schedulerName="other"))


class FakeBinder:
    def __init__(self, fail: bool = False) -> None:
        self.bound: list[tuple[str, str]] = []
        self.fail = fail

    async def bind(self, p: dict[str, Any], node_name: str) -> None:
        if self.fail:
            raise RuntimeError("conflict")
        self.bound.append((p["metadata"]["name"], node_name))


def test_in_process_loop_assumes_then_binds():
    clock = FakeClock()
    binder = FakeBinder()
    cache, sched = cluster(node("a", cpu="1"), node("b", cpu="1"), clock=clock, pod_binder=binder)
    q = sched.new_queue()
    for i in range(3):
        q.add(pod(f"p{i}", cpu="600m"))
    cycles = []
    while True:
        qp, res, bc = sched.schedule_next(q)
        if qp is None:
            break
        if bc is not None:
            assert cache.is_assumed(bc.pod.uid)
            assert asyncio.run(sched.bind(bc)) is None
            cache.add_pod(bc.assumed.pod)  # the informer confirms
            q.done(bc.pod.uid)
        cycles.append((qp.pod_info.name, res.suggested_host if res else None))
    assert sorted(n for _, n in binder.bound) == ["a", "b"]
    assert cycles[-1][1] is None  # the third pod doesn't fit anywhere
    assert len(q.unschedulable) == 1


def test_failed_binding_forgets_the_assumed_pod():
    binder = FakeBinder(fail=True)
    cache, sched = cluster(node("a", cpu="1"), pod_binder=binder)
    q = sched.new_queue()
    q.add(pod("p", cpu="600m"))
    _, _, bc = sched.schedule_next(q)
    st = asyncio.run(sched.bind(bc))
    assert st is not None and st.code == Code.ERROR and "conflict" in st.message()
    assert not cache.has_pod(bc.pod.uid)
    assert cache.free[0, cache.slot_of["a"]] == 1000


class WaitPermit:
    name = "WaitPermit"

    def __init__(self, args, handle):
        self.handle = handle

    def permit(self, state, p, node_name):
        return Status(Code.WAIT), 30.0


def test_permit_wait_is_resolved_by_allow():
    cfg = load_config("profiles: [{plugins: {permit: {enabled: [{name: WaitPermit}]}}}]\n")
    binder = FakeBinder()
    cache = Cache()
    cache.add_node(node("a"))
    sched = Scheduler(cache, config=cfg, pod_binder=binder, registry={**REGISTRY, "WaitPermit": WaitPermit})
    q = sched.new_queue()
    q.add(pod("p"))
    _, _, bc = sched.schedule_next(q)
    fwk = bc.framework

    async def run() -> Status | None:
        task = asyncio.ensure_future(sched.bind(bc))
        assert not task.done()
        fwk.waiting_pods[bc.pod.uid].allow("WaitPermit")
        return await asyncio.wait_for(task, 5)
    assert asyncio.run(run()) is None
    assert binder.bound == [("p", "a")]


def test_vector_mask_and_per_node_filters_agree_on_random_clusters():
    """For every filter plugin, the vector verdict equals the per-node verdict on random clusters and pods."""
    import random

    from controlplane.scheduler.framework import CycleState
    from controlplane.scheduler.podinfo import PodInfo
    rng = random.Random(7)
    zones = ["a", "b", "c"]
    for trial in range(15):
        nodes = []
        for i in range(30):
            labels = {"topology.kubernetes.io/zone": rng.choice(zones), "tier": rng.choice(["1", "2", "3"])}
            if rng.random() < 0.2:
                del labels["topology.kubernetes.io/zone"]
            taints = [taint("dedicated", rng.choice(["x", "y"]))] if rng.random() < 0.2 else []
            nodes.append(node(f"n{i}", cpu=rng.choice(["1", "2", "4"]), labels=labels, taints=taints,
                              unschedulable=rng.random() < 0.1))
        existing = []
        for j in range(40):
            lbl = {"app": rng.choice(["web", "db", "cache"])}
            spec: dict[str, Any] = {}
            if rng.random() < 0.3:
                spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": rng.choice(["web", "db"])}},
                     "topologyKey": rng.choice(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])}]}}
            existing.append(pod(f"e{j}", cpu="200m", labels=lbl, node_name=f"n{rng.randrange(30)}", **spec))
        cache, sched = cluster(*nodes, pods=tuple(existing))
        fwk = sched.frameworks["default-scheduler"]
        for k in range(8):
            spec = {}
            if rng.random() < 0.5:
                spec["affinity"] = {"podAffinity" if rng.random() < 0.5 else "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {"labelSelector": {"matchLabels": {"app": rng.choice(["web", "db", "cache"])}},
                         "topologyKey": rng.choice(["kubernetes.io/hostname", "topology.kubernetes.io/zone"])}]}}
            if rng.random() < 0.5:
                spec["topologySpreadConstraints"] = [{"maxSkew": rng.choice([1, 2]), "topologyKey":
                                                      "topology.kubernetes.io/zone", "whenUnsatisfiable":
                                                      "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]
            if rng.random() < 0.3:
                spec["nodeSelector"] = {"tier": rng.choice(["1", "2"])}
            if rng.random() < 0.3:
                spec["tolerations"] = [{"key": "dedicated", "value": "x"}]
            pi = PodInfo(pod(f"p{trial}-{k}", cpu=rng.choice(["500m", "1500m"]), labels={"app": "web"}, **spec))
            state = CycleState()
            fwk.run_pre_filter(state, pi)
            for pl in fwk.active_filters(state):
                vec = pl.filter_vector(state, pi)
                for info in cache.node_infos():
                    assert bool(vec[info.slot]) == (pl.filter(state, pi, info) is None), (pl.name, info.name)
            # and the whole cycle agrees with a brute-force per-node evaluation
            res = sched.schedule_one(pi, run_post_filter=False)
            ok = {i.name for i in cache.node_infos() if fwk.run_filter(state, pi, i) is None}
            if ok:
                assert res.suggested_host in ok
            else:
                assert res.suggested_host is None and len(res.fit_error.diagnosis.node_to_status) == 30
                assert np.all([not s.is_success() for s in res.fit_error.diagnosis.node_to_status.statuses.values()])


def test_prefilter_result_message_for_nodes_left_out():
    _, sched = cluster(node("a", cpu="1"), node("b"), node("c"))
    aff = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}}
    r = sched.schedule_one(pod("p", cpu="2", affinity=aff), run_post_filter=False)
    assert str(r.error) == ("0/3 nodes are available: 1 Insufficient cpu, "
                            "2 node(s) didn't satisfy plugin(s) [NodeAffinity].")


def test_preemption_round_trip_through_queue_and_nominator():
    clock = FakeClock()
    low = pod("low", cpu="1", memory=None, node_name="n", priority=0)
    cache, sched = cluster(node("n", cpu="1"), pods=(low,), clock=clock)
    q = sched.new_queue()
    q.add(pod("hi", cpu="1", memory=None, priority=10))
    qp, res, bc = sched.schedule_next(q)
    assert bc is None and res.post_filter.nominated_node_name == "n"
    assert [p.name for p in sched.nominator.nominated_pods_for_node("n")] == ["hi"]
    # The victim is deleted (by PreemptionActions in the real loop); the event requeues the preemptor.
    cache.remove_pod(low)
    from controlplane.scheduler.queue import EVENT_ASSIGNED_POD_DELETE
    q.move_all_to_active_or_backoff(EVENT_ASSIGNED_POD_DELETE, None, None)
    # A lower-priority newcomer can't take the freed room while "hi" is nominated there.
    r = sched.schedule_one(pod("sneaky", cpu="1", memory=None, priority=1), run_post_filter=False)
    assert r.suggested_host is None
    clock.advance(2)
    q.flush_backoff_completed()
    qp, res, bc = sched.schedule_next(q)
    assert bc is not None and bc.node_name == "n"
    assert sched.nominator.nominated_pods_for_node("n") == []


def test_priority_resolved_from_priority_classes_when_unset():
    cache, sched = cluster(node("n"))
    cache.upsert_object("PriorityClass", {"metadata": {"name": "high"}, "value": 1000})
    cache.upsert_object("PriorityClass", {"metadata": {"name": "default"}, "value": 7, "globalDefault": True})
    assert sched.pod_info(pod("a", priorityClassName="high")).priority == 1000
    assert sched.pod_info(pod("b")).priority == 7
    assert sched.pod_info(pod("c", priority=3, priorityClassName="high")).priority == 3
