"""DefaultPreemption: candidate nodes, victim selection (priority, PDBs, reprieves) and node choice."""

from __future__ import annotations

import asyncio

from scheduler_builders import cluster, node, pod

from controlplane.scheduler.framework import CycleState
from controlplane.scheduler.podinfo import PodInfo
from controlplane.scheduler.preemption import (
    Candidate,
    Victims,
    execute_preemption,
    filter_pods_with_pdb_violation,
    pick_one_node_for_preemption,
)

T0 = "2024-01-01T00:00:00Z"


def running(name, node_name, cpu, prio, start=T0, labels=None):
    p = pod(name, cpu=cpu, memory=None, node_name=node_name, priority=prio, labels=labels)
    p["status"] = {"startTime": start, "phase": "Running"}
    return p


def victims_of(result):
    return sorted(v.name for v in result.post_filter.victims)


def test_preempts_lowest_priority_pods_that_free_enough():
    cache, sched = cluster(node("n1", cpu="3"), pods=(
        running("p1", "n1", "1", 1), running("p2", "n1", "1", 2), running("p3", "n1", "1", 3)))
    r = sched.schedule_one(pod("hi", cpu="2", memory=None, priority=10))
    assert r.suggested_host is None
    assert r.post_filter.nominated_node_name == "n1"
    # Remove all three, then reprieve highest priority first: p3 fits back, p2 does not, p1 does not.
    assert victims_of(r) == ["p1", "p2"]
    # this cycle still fails; the message carries the filter verdict and preemption's empty message
    assert str(r.error) == "0/1 nodes are available: 1 Insufficient cpu."


def test_higher_or_equal_priority_pods_are_never_victims():
    cache, sched = cluster(node("n1", cpu="2"), pods=(running("eq", "n1", "2", 10),))
    r = sched.schedule_one(pod("hi", cpu="1", memory=None, priority=10))
    assert r.post_filter is None or not r.post_filter.nominated_node_name
    assert str(r.error) == ("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
                            "1 No preemption victims found for incoming pod..")


def test_preemption_policy_never():
    cache, sched = cluster(node("n1", cpu="1"), pods=(running("low", "n1", "1", 0),))
    r = sched.schedule_one(pod("hi", cpu="1", memory=None, priority=10, preemptionPolicy="Never"))
    assert r.post_filter is None
    assert str(r.error).endswith("preemption: not eligible due to preemptionPolicy=Never..")


def test_pdb_violations_are_avoided_when_possible():
    pdb = {"metadata": {"name": "pdb", "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": "guarded"}}}, "status": {"disruptionsAllowed": 0}}
    cache, sched = cluster(node("a", cpu="1"), node("b", cpu="1"), pods=(
        running("guarded", "a", "1", 1, labels={"app": "guarded"}), running("free", "b", "1", 5)))
    cache.upsert_object("PodDisruptionBudget", pdb)
    r = sched.schedule_one(pod("hi", cpu="1", memory=None, priority=10))
    # b's victim has higher priority, but a's would violate the PDB: fewest violations wins first.
    assert r.post_filter.nominated_node_name == "b"
    assert victims_of(r) == ["free"]


def test_filter_pods_with_pdb_violation_counts_budget_and_disrupted_pods():
    pdb = {"metadata": {"name": "pdb", "namespace": "default"},
           "spec": {"selector": {"matchLabels": {"app": "x"}}},
           "status": {"disruptionsAllowed": 1, "disruptedPods": {"already": T0}}}
    pods = [PodInfo(pod(n, labels={"app": "x"})) for n in ("already", "one", "two")] + [PodInfo(pod("nolabels"))]
    violating, ok = filter_pods_with_pdb_violation(pods, [pdb])
    assert [p.name for p in violating] == ["two"]
    assert [p.name for p in ok] == ["already", "one", "nolabels"]


def test_pick_one_node_criteria_in_order():
    def c(name, prios, viol=0, start=0.0):
        ps = []
        for i, pr in enumerate(prios):
            pi = PodInfo(pod(f"{name}-{i}", priority=pr))
            pi.start_time = start
            ps.append(pi)
        return Candidate(name, Victims(ps, viol))
    assert pick_one_node_for_preemption([c("a", [1], viol=1), c("b", [9])]) == "b"  # fewest PDB violations
    assert pick_one_node_for_preemption([c("a", [5, 1]), c("b", [3, 3])]) == "b"  # lowest highest priority
    assert pick_one_node_for_preemption([c("a", [3, 3]), c("b", [3, 1])]) == "b"  # smallest priority sum
    # every priority is offset by MaxInt32+1 in the sum, so more victims means a larger sum
    assert pick_one_node_for_preemption([c("a", [3, 0, 0]), c("b", [3, 1])]) == "b"
    assert pick_one_node_for_preemption([c("a", [3], start=10.0), c("b", [3], start=20.0)]) == "b"  # latest start


def test_unresolvable_nodes_are_not_candidates():
    cache, sched = cluster(node("tainted", cpu="1", taints=[{"key": "k", "effect": "NoSchedule"}]),
                           node("busy", cpu="1"),
                           pods=(running("t", "tainted", "1", 0), running("b", "busy", "1", 0)))
    r = sched.schedule_one(pod("hi", cpu="1", memory=None, priority=10))
    assert r.post_filter.nominated_node_name == "busy"


def test_nominated_pods_hold_room_for_lower_priority_pods():
    cache, sched = cluster(node("n", cpu="2"))
    nominated = PodInfo(pod("nom", cpu="1500m", memory=None, priority=100))
    sched.nominator.add_nominated_pod(nominated, "n")
    low = sched.schedule_one(pod("low", cpu="1", memory=None, priority=1))
    assert low.suggested_host is None  # the room is held for the nominated pod
    high = sched.schedule_one(pod("high", cpu="1", memory=None, priority=1000))
    assert high.suggested_host == "n"  # higher priority may take it


def test_victim_selection_respects_affinity_state_on_clones():
    # The preemptor wants to be away from app=web; the web pod is a lower-priority victim: evicting it helps.
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    cache, sched = cluster(node("n", cpu="4"), pods=(running("web", "n", "100m", 0, labels={"app": "web"}),
                                                     running("other", "n", "100m", 0)))
    r = sched.schedule_one(pod("hi", priority=5, affinity=anti))
    assert r.post_filter.nominated_node_name == "n"
    assert victims_of(r) == ["web"]
    # the cached snapshot is untouched by the dry run
    assert len(cache.node_info("n").pods) == 2


class RecordingActions:
    def __init__(self):
        self.calls = []

    async def evict(self, victim, preemptor, node_name):
        self.calls.append(("evict", victim["metadata"]["name"], node_name))

    async def set_nominated_node_name(self, pod, node_name):
        self.calls.append(("nominate", pod["metadata"]["name"], node_name))


def test_execute_preemption_goes_through_actions():
    cache, sched = cluster(node("n1", cpu="1"), pods=(running("low", "n1", "1", 0),))
    lower_nominee = PodInfo(pod("waiting", cpu="1", priority=1))
    sched.nominator.add_nominated_pod(lower_nominee, "n1")
    pi = PodInfo(pod("hi", cpu="1", memory=None, priority=10))
    r = sched.schedule_one(pi)
    actions = RecordingActions()
    asyncio.run(execute_preemption(pi, r.post_filter, actions))
    assert actions.calls == [("evict", "low", "n1"), ("nominate", "waiting", ""), ("nominate", "hi", "n1")]


def test_select_victims_direct():
    cache, sched = cluster(node("n", cpu="2"), pods=(running("a", "n", "1", 1), running("b", "n", "1", 2)))
    fwk = sched.frameworks["default-scheduler"]
    pre = fwk.all_plugins["DefaultPreemption"]
    pi = PodInfo(pod("p", cpu="1", memory=None, priority=5))
    st = CycleState()
    fwk.run_pre_filter(st, pi)
    victims, viol, status = pre.select_victims_on_node(st, pi, cache.node_info("n").clone(), [])
    assert status is None and viol == 0 and [v.name for v in victims] == ["a"]
