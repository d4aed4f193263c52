"""The scheduling queue: ordering, backoff, parking until relevant events, flushes, gates -- on a fake clock."""

from __future__ import annotations

import asyncio

import pytest
from scheduler_builders import FakeClock, cluster, node, pod

from controlplane.scheduler.framework import ActionType, ClusterEvent
from controlplane.scheduler.podinfo import PodInfo
from controlplane.scheduler.queue import (
    EVENT_ASSIGNED_POD_DELETE,
    EVENT_NODE_ADD,
    EVENT_PVC_ADD,
    PriorityQueue,
    node_update_event,
)


def make_queue(clock: FakeClock, **kw) -> PriorityQueue:
    _, sched = cluster(node("n"), clock=clock)
    return sched.new_queue(**kw)


def names(q: PriorityQueue) -> list[str]:
    out = []
    while (x := q.pop_nowait()) is not None:
        out.append(x.pod_info.name)
    return out


def test_active_queue_orders_by_priority_then_arrival():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("low", priority=1))
    clock.advance(1)
    q.add(pod("high", priority=10))
    clock.advance(1)
    q.add(pod("low2", priority=1))
    q.add(pod("mid", priority=5))
    assert names(q) == ["high", "mid", "low", "low2"]


def test_backoff_doubles_up_to_max():
    clock = FakeClock()
    q = make_queue(clock, pod_initial_backoff=1, pod_max_backoff=10)
    qp = q.add(pod("p"))
    durations = []
    for attempts in range(1, 7):
        qp.attempts = attempts
        durations.append(q.backoff_duration(qp))
    assert durations == [1, 2, 4, 8, 10, 10]


def fail(q: PriorityQueue, plugins: set[str]):
    qp = q.pop_nowait()
    assert qp is not None
    qp.unschedulable_plugins = set(plugins)
    q.add_unschedulable_if_not_present(qp, q.scheduling_cycle)
    return qp


def test_failed_pod_without_rejector_backs_off_then_returns():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p"))
    fail(q, set())  # an error, not a rejection: backoffQ
    assert len(q.backoff_q) == 1 and q.pop_nowait() is None
    clock.advance(0.5)
    assert q.flush_backoff_completed() == 0
    clock.advance(0.6)
    assert q.flush_backoff_completed() == 1
    assert names(q) == ["p"]


def test_unschedulable_pod_moves_only_on_registered_events():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p", cpu="64"))
    fail(q, {"NodeResourcesFit"})
    assert list(q.unschedulable) and q.pop_nowait() is None
    # A PVC event is irrelevant to NodeResourcesFit.
    assert q.move_all_to_active_or_backoff(EVENT_PVC_ADD) == 0
    # An assigned pod going away frees resources: it moves (to backoffQ, since it failed just now).
    assert q.move_all_to_active_or_backoff(EVENT_ASSIGNED_POD_DELETE) == 1
    assert len(q.backoff_q) == 1
    clock.advance(1.01)
    q.flush_backoff_completed()
    assert names(q) == ["p"]


def test_queueing_hint_skips_nodes_that_would_not_help():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p", cpu="8"))
    fail(q, {"NodeResourcesFit"})
    small = node("small", cpu="4")
    assert q.move_all_to_active_or_backoff(EVENT_NODE_ADD, None, small) == 0
    big = node("big", cpu="16")
    clock.advance(5)
    assert q.move_all_to_active_or_backoff(EVENT_NODE_ADD, None, big) == 1
    assert names(q) == ["p"]  # backoff already over: straight to activeQ


def test_node_update_event_types():
    old = node("n", labels={"a": "1"})
    assert node_update_event(old, node("n", labels={"a": "2"})).action == ActionType.UPDATE_NODE_LABEL
    assert node_update_event(old, node("n", labels={"a": "1"}, unschedulable=True)).action == \
        ActionType.UPDATE_NODE_TAINT
    assert node_update_event(old, node("n", cpu="8", labels={"a": "1"})).action == ActionType.UPDATE_NODE_ALLOCATABLE
    assert node_update_event(old, old) is None


def test_node_label_update_moves_node_affinity_pods_only_if_node_matches():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p", nodeSelector={"disk": "ssd"}))
    fail(q, {"NodeAffinity"})
    old = node("n")
    hdd = node("n", labels={"disk": "hdd"})
    assert q.move_all_to_active_or_backoff(node_update_event(old, hdd), old, hdd) == 0
    ssd = node("n", labels={"disk": "ssd"})
    assert q.move_all_to_active_or_backoff(node_update_event(hdd, ssd), hdd, ssd) == 1


def test_move_request_during_scheduling_sends_failure_to_backoff():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p"))
    qp = q.pop_nowait()
    cycle = q.scheduling_cycle
    # While p was being scheduled, a node appeared: its failure must not park it.
    q.move_all_to_active_or_backoff(EVENT_NODE_ADD, None, node("new"))
    qp.unschedulable_plugins = {"NodeResourcesFit"}
    q.add_unschedulable_if_not_present(qp, cycle)
    assert not q.unschedulable and len(q.backoff_q) == 1


def test_unschedulable_leftover_flush_after_five_minutes():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p"))
    fail(q, {"NodeAffinity"})
    clock.advance(299)
    assert q.flush_unschedulable_leftover() == 0
    clock.advance(2)
    assert q.flush_unschedulable_leftover() == 1
    assert names(q) == ["p"]


def test_update_of_parked_pod_gives_it_another_try():
    clock = FakeClock()
    q = make_queue(clock)
    p = pod("p", nodeSelector={"disk": "ssd"})
    q.add(p)
    fail(q, {"NodeAffinity"})
    # status-only change: stays parked
    q.update(p, {**p, "status": {"conditions": [{"type": "PodScheduled", "status": "False"}]}})
    assert list(q.unschedulable)
    changed = {**p, "spec": {**p["spec"], "nodeSelector": {}}}
    clock.advance(2)
    q.update(p, changed)
    assert names(q) == ["p"]


def test_update_while_in_flight_retries_promptly():
    clock = FakeClock()
    q = make_queue(clock)
    p = pod("p")
    q.add(p)
    qp = q.pop_nowait()
    q.update(p, {**p, "metadata": {**p["metadata"], "labels": {"x": "y"}}})
    qp.unschedulable_plugins = {"NodeAffinity"}
    q.add_unschedulable_if_not_present(qp)
    assert not q.unschedulable and len(q.backoff_q) == 1
    assert q.backoff_q.get(qp.uid).pod_info.labels == {"x": "y"}


def test_scheduling_gates_keep_pod_out_until_removed():
    clock = FakeClock()
    q = make_queue(clock)
    p = pod("gated", schedulingGates=[{"name": "example.com/wait"}])
    qp = q.add(p)
    assert qp.gated and q.pop_nowait() is None
    assert qp.gating_status.message() == "waiting for scheduling gates: [example.com/wait]"
    # cluster events don't move gated pods
    q.move_all_to_active_or_backoff(ClusterEvent("*", ActionType.ALL))
    assert q.pop_nowait() is None
    q.update(p, {**p, "spec": {**p["spec"], "schedulingGates": []}})
    assert names(q) == ["gated"]


def test_delete_removes_from_every_queue_and_nomination():
    clock = FakeClock()
    q = make_queue(clock)
    p = pod("p")
    p["status"] = {"nominatedNodeName": "n"}
    q.add(p)
    assert [x.name for x in q.nominator.nominated_pods_for_node("n")] == ["p"]
    q.delete(p)
    assert q.pop_nowait() is None and q.nominator.nominated_pods_for_node("n") == []


def test_activate_moves_parked_pods():
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p"))
    qp = fail(q, {"NodeAffinity"})
    q.activate([qp.uid])
    assert names(q) == ["p"]


async def test_async_pop_waits_for_a_pod():
    clock = FakeClock()
    q = make_queue(clock)
    got = asyncio.ensure_future(q.pop())
    assert not got.done()
    q.add(pod("p"))
    qp = await asyncio.wait_for(got, 5)
    assert qp.pod_info.name == "p"
    q.close()
    assert await asyncio.wait_for(q.pop(), 5) is None


def test_add_existing_pod_is_an_update():
    clock = FakeClock()
    q = make_queue(clock)
    p = pod("p")
    q.add(p)
    q.add({**p, "metadata": {**p["metadata"], "labels": {"v": "2"}}})
    assert len(q) == 1
    assert q.pop_nowait().pod_info.labels == {"v": "2"}


@pytest.mark.parametrize("moved_by", ["assigned pod delete", "node add"])
def test_pods_rejected_by_several_plugins_move_on_any_of_their_events(moved_by):
    clock = FakeClock()
    q = make_queue(clock)
    q.add(pod("p"))
    fail(q, {"NodePorts", "TaintToleration"})
    if moved_by == "node add":
        assert q.move_all_to_active_or_backoff(EVENT_NODE_ADD, None, node("x")) == 1
    else:
        assert q.move_all_to_active_or_backoff(EVENT_ASSIGNED_POD_DELETE, PodInfo(pod("gone")), None) == 1
