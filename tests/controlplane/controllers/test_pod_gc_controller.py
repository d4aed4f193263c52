"""The pod garbage collector through a real API server: terminated pods over the threshold, orphans of deleted nodes,
terminating pods nobody will finish (never scheduled, or on an out-of-service node).

No kubelet runs: this test code plays the kubelets by writing pod status, which is exactly the situation the
collector exists for. Periods are shortened through the controller options, as ``ccmkit controller-manager
--option`` passes them.
"""

from __future__ import annotations

import time
from typing import Any

from cli_process import ccmkit, stop

from controlplane.client import NODES, PODS, ApiClient
from controlplane.controllers import select

FAST = {"pod_gc_check_period": 0.1}
HOLD = "example.com/hold"  # a finalizer of ours, so a force-deleted pod stays visible until we let it go
OUT_OF_SERVICE = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}


async def node(client: ApiClient, name: str, *, ready: bool = True, taints: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    cond = {"type": "Ready", "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady"}
    return await client.create(NODES, {"metadata": {"name": name}, "spec": {"taints": taints or []},
                                       "status": {"conditions": [cond]}})


async def pod(client: ApiClient, name: str, *, node_name: str | None = None, phase: str | None = "Running",
              reason: str | None = None, finalizers: list[str] | None = None) -> dict[str, Any]:
    """A pod as a kubelet left it: bound (or not), with the given phase. A long grace period, so a graceful
    deletion stays pending for the whole test unless something forces it."""
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox:1.36"}],
                            "terminationGracePeriodSeconds": 3600}
    if node_name:
        spec["nodeName"] = node_name
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if finalizers:
        meta["finalizers"] = finalizers
    created = await client.create(PODS, {"metadata": meta, "spec": spec}, "default")
    if phase is None:
        return created
    status = {**(created.get("status") or {}), "phase": phase}
    if reason:
        status["reason"] = reason
    return await client.update_status(PODS, {**created, "status": status})


async def names(client: ApiClient) -> set[str]:
    return {p["metadata"]["name"] for p in (await client.list(PODS, "default"))["items"]}


async def release(client: ApiClient, name: str) -> None:
    await client.patch(PODS, name, {"metadata": {"finalizers": None}}, "default")


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def test_registered_as_upstream_names_it_and_on_by_default():
    assert select("pod-garbage-collector-controller") == ["podgc"]
    assert "podgc" in select("*")


async def test_terminated_pods_beyond_the_threshold_go_evicted_first_then_oldest(client, start_manager, wait_for):
    # Names run against age, so an order by name would pick the wrong pods.
    old = await pod(client, "z-old", phase="Succeeded")
    created = old["metadata"]["creationTimestamp"]
    # creationTimestamp has one-second resolution: the next pods must be measurably younger.
    await wait_for(lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > created, timeout=3)
    await pod(client, "y-mid", phase="Failed")
    await pod(client, "x-new", phase="Succeeded")
    await pod(client, "w-evicted", phase="Failed", reason="Evicted")
    await pod(client, "running", phase="Running")
    await pod(client, "pending", phase=None)

    await start_manager("podgc", options={**FAST, "terminated_pod_gc_threshold": 2})
    # Four terminated, two allowed: the evicted pod goes first, then the oldest; live pods are never counted.
    await wait_for(lambda: _names_are(client, {"y-mid", "x-new", "running", "pending"}))

    # One more terminated pod is one over again: one of the two older ones goes (which one depends on whether they
    # were created in the same second; the name breaks ties, so the new pod's sorts last), nothing else: a collector
    # deleting more than the excess fails here.
    await pod(client, "zz-newest", phase="Succeeded")

    async def one_more_collected() -> bool:
        left = await names(client)
        return len(left) == 4 and {"zz-newest", "running", "pending"} <= left

    await wait_for(one_more_collected)


async def _names_are(client: ApiClient, expected: set[str]) -> bool:
    return await names(client) == expected


async def test_pods_on_a_deleted_node_are_failed_and_deleted_after_the_quarantine(client, kube, start_manager,
                                                                                   wait_for):
    quarantine = 1.5
    await node(client, "real")
    await start_manager("podgc", options={**FAST, "pod_gc_quarantine_time": quarantine})
    began = time.monotonic()
    await pod(client, "orphan", node_name="ghost")
    await pod(client, "orphan-held", node_name="ghost", finalizers=[HOLD])
    await pod(client, "on-real", node_name="real")
    # A node that shows up within the quarantine (as a newly registered node reaches the cache late) saves its pods.
    await pod(client, "late", node_name="late-node")
    await node(client, "late-node")
    try:
        await wait_for(lambda: kube.gone(PODS, "orphan", "default"))
        assert time.monotonic() - began >= quarantine, "orphans are deleted only after the quarantine"

        async def held_deleted() -> bool:  # deleted too (a finalizer keeps it visible); the two are not ordered
            return bool((await client.get(PODS, "orphan-held", "default"))["metadata"].get("deletionTimestamp"))

        await wait_for(held_deleted)
        held = await client.get(PODS, "orphan-held", "default")
        assert held["metadata"].get("deletionGracePeriodSeconds") == 0
        assert held["status"]["phase"] == "Failed", "nothing else would ever say how it ended"
        target = _condition(held, "DisruptionTarget")
        assert target is not None
        assert (target["status"], target["reason"], target["message"]) == (
            "True", "DeletionByPodGC", "PodGC: node no longer exists")

        for name in ("on-real", "late"):
            live = await client.get(PODS, name, "default")
            assert not live["metadata"].get("deletionTimestamp"), name
            assert live["status"]["phase"] == "Running", name
    finally:
        await release(client, "orphan-held")
    await wait_for(lambda: kube.gone(PODS, "orphan-held", "default"))


async def test_terminating_pods_that_were_never_scheduled_are_failed_and_force_deleted(client, kube,
                                                                                        start_manager, wait_for):
    await node(client, "n1")
    # A terminating pod on a live node is its kubelet's to finish: left alone.
    await pod(client, "graceful", node_name="n1")
    await client.delete(PODS, "graceful", "default")
    # Never scheduled, held by a finalizer: nobody will ever report how it ended.
    await pod(client, "unscheduled", phase="Pending", finalizers=[HOLD])
    await client.delete(PODS, "unscheduled", "default")
    assert (await client.get(PODS, "unscheduled", "default"))["status"]["phase"] == "Pending"

    await start_manager("podgc", options=FAST)

    async def failed() -> dict[str, Any] | None:
        found = await client.get(PODS, "unscheduled", "default")
        return found if found["status"].get("phase") == "Failed" else None

    try:
        unscheduled = await wait_for(failed)
        assert unscheduled["metadata"]["deletionGracePeriodSeconds"] == 0
        graceful = await client.get(PODS, "graceful", "default")
        assert graceful["status"]["phase"] == "Running"
        assert graceful["metadata"]["deletionGracePeriodSeconds"] == 3600
    finally:
        await release(client, "unscheduled")
    await wait_for(lambda: kube.gone(PODS, "unscheduled", "default"))


async def test_terminating_pods_on_out_of_service_not_ready_nodes_are_force_deleted(client, kube,
                                                                                   start_manager, wait_for):
    await node(client, "shut-down", ready=False, taints=[OUT_OF_SERVICE])
    await node(client, "tainted-but-ready", ready=True, taints=[OUT_OF_SERVICE])
    await node(client, "not-ready", ready=False)
    for name, on in (("on-tainted-but-ready", "tainted-but-ready"), ("on-not-ready", "not-ready"),
                     ("on-shut-down", "shut-down"), ("alive-on-shut-down", "shut-down")):
        await pod(client, name, node_name=on)
    # Graceful deletions: with no kubelet to finish them they would wait out their 3600 s. The pod that must go is
    # deleted last, so the pass that sees it terminating sees the others terminating too.
    for name in ("on-tainted-but-ready", "on-not-ready", "on-shut-down"):
        await client.delete(PODS, name, "default")

    await start_manager("podgc", options=FAST)
    await wait_for(lambda: kube.gone(PODS, "on-shut-down", "default"))

    for name in ("on-tainted-but-ready", "on-not-ready"):
        left = await client.get(PODS, name, "default")
        assert left["metadata"]["deletionGracePeriodSeconds"] == 3600, name
        assert left["status"]["phase"] == "Running", name
    alive = await client.get(PODS, "alive-on-shut-down", "default")
    assert not alive["metadata"].get("deletionTimestamp"), "only terminating pods are forced out"


async def test_controller_manager_flag_sets_the_threshold(apiserver, client, wait_for):
    for name in ("p-1", "p-2", "p-3"):  # same second or not, p-3 is the youngest
        await pod(client, name, phase="Succeeded")
    proc = ccmkit("controller-manager", "--server", apiserver.url, "--controllers", "pod-garbage-collector-controller",
                  "--no-leader-elect", "--terminated-pod-gc-threshold", "1", "--option", "pod_gc_check_period=0.2")
    try:
        await wait_for(lambda: _names_are(client, {"p-3"}), timeout=60)
    finally:
        code, err = stop(proc)
    assert code == 0, err
