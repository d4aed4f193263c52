"""The scheduler end to end through a real API server: binding, events, the Unschedulable condition, requeueing on
cluster events, taints and node affinity, and the metrics endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from scheduler_e2e_helpers import (
    create_nodes,
    eventually,
    node,
    node_of,
    pod,
    running_scheduler,
    scheduled_condition,
    taint,
    wait_bound,
    wait_event,
)

from controlplane.client import NODES, PODS, ApiClient
from controlplane.testing import ThreadedApiServer


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


async def test_pod_is_bound_to_a_fitting_node_and_a_scheduled_event_appears(apiserver: ThreadedApiServer,
                                                                           client: ApiClient) -> None:
    await create_nodes(client, node("small", cpu="1"), node("big", cpu="8"))
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("p", cpu="2"))
        assert await wait_bound(client, "p") == "big"
        ev = await wait_event(client, "p", "Scheduled")
    assert ev["message"] == "Successfully assigned default/p to big"
    assert ev["type"] == "Normal"
    assert ev["source"]["component"] == "default-scheduler"
    assert ev["reportingComponent"] == "default-scheduler"
    p = await client.get(PODS, "p", "default")
    assert ev["involvedObject"]["uid"] == p["metadata"]["uid"]
    assert ev["involvedObject"]["kind"] == "Pod"
    cond = scheduled_condition(p)
    assert cond is not None and cond["status"] == "True"


async def test_insufficient_cpu_reports_failed_scheduling_and_the_unschedulable_condition(
        apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, node("n1", cpu="1"), node("n2", cpu="2"))
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("hungry", cpu="3"))
        ev = await wait_event(client, "hungry", "FailedScheduling")
        # Upstream's FitError text (the double full stop included); more than any node's allocatable is
        # unresolvable, so preemption cannot help.
        want = ("0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: "
                "2 Preemption is not helpful for scheduling..")
        assert ev["message"] == want
        assert ev["type"] == "Warning"
        assert ev["source"]["component"] == "default-scheduler"

        async def condition() -> dict | None:
            c = scheduled_condition(await client.get(PODS, "hungry", "default"))
            return c if c is not None and c.get("status") == "False" else None
        cond = await eventually(condition, message="PodScheduled=False")
    assert cond["reason"] == "Unschedulable"
    assert cond["message"] == want
    assert await node_of(client, "hungry") == ""


async def test_unschedulable_pod_is_scheduled_once_a_fitting_node_is_added(apiserver: ThreadedApiServer,
                                                                         client: ApiClient) -> None:
    await create_nodes(client, node("tiny", cpu="500m"))
    # A pod rejected by a plugin is parked among the unschedulable pods until an event that plugin registered for
    # (or the 5-minute leftover flush): only the NodeAdd can bring it back within the deadline.
    async with running_scheduler(apiserver.url) as svc:
        await client.create(PODS, pod("waiting", cpu="2"))
        await wait_event(client, "waiting", "FailedScheduling")
        session = svc.session
        assert session is not None
        await eventually(lambda: session.pending_counts()["unschedulable"] == 1, message="pod parked")
        await create_nodes(client, node("roomy", cpu="4"))
        assert await wait_bound(client, "waiting", timeout=10) == "roomy"


async def test_taints_keep_pods_away_unless_tolerated(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, node("tainted", cpu="8", taints=[taint("dedicated", "gpu")]),
                       node("plain", cpu="1"))
    async with running_scheduler(apiserver.url):
        # Both pods would prefer the big node; only the tolerating one may go there.
        await client.create(PODS, pod("ordinary", cpu="500m"))
        await client.create(PODS, pod("tolerant", cpu="500m", tolerations=[
            {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
            nodeSelector={"kubernetes.io/hostname": "tainted"}))
        assert await wait_bound(client, "ordinary") == "plain"
        assert await wait_bound(client, "tolerant") == "tainted"
        await client.create(PODS, pod("too-big", cpu="2"))
        ev = await wait_event(client, "too-big", "FailedScheduling")
    assert "1 node(s) had untolerated taint {dedicated: gpu}" in ev["message"]
    assert "1 Insufficient cpu" in ev["message"]


async def test_node_affinity_picks_the_matching_zone(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, *(node(f"a{i}", labels={"topology.kubernetes.io/zone": "zone-a"}) for i in range(3)),
                       node("b0", labels={"topology.kubernetes.io/zone": "zone-b"}))
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-b"]}]}]}}}
    async with running_scheduler(apiserver.url):
        for i in range(3):
            await client.create(PODS, pod(f"z{i}", affinity=affinity))
        for i in range(3):
            assert await wait_bound(client, f"z{i}") == "b0"
        await client.create(PODS, pod("nowhere", affinity={"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-c"]}]}]}}}))
        ev = await wait_event(client, "nowhere", "FailedScheduling")
    assert ev["message"].startswith("0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector.")


async def test_pods_of_other_schedulers_are_left_alone(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, node("n1"))
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("theirs", scheduler="someone-else"))
        await client.create(PODS, pod("ours"))
        assert await wait_bound(client, "ours") == "n1"
        # "ours" was created after "theirs" and is bound: the scheduler has seen "theirs" and skipped it.
        assert await node_of(client, "theirs") == ""


async def test_metrics_endpoint_counts_attempts_and_pending_pods(apiserver: ThreadedApiServer,
                                                                client: ApiClient) -> None:
    await create_nodes(client, node("n1", cpu="1"))
    async with running_scheduler(apiserver.url, metrics_port=0) as svc:
        assert svc.metrics_url is not None
        await client.create(PODS, pod("ok", cpu="500m"))
        await client.create(PODS, pod("nope", cpu="4"))
        await wait_bound(client, "ok")
        await wait_event(client, "nope", "FailedScheduling")

        async def scrape() -> str | None:
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"{svc.metrics_url}/metrics")).text
            ok = 'scheduler_schedule_attempts_total{profile="default-scheduler",result="scheduled"} 1.0' in text
            return text if ok and 'scheduler_pending_pods{queue="unschedulable"} 1.0' in text else None
        text = await eventually(scrape, message="metrics")
        assert 'scheduler_schedule_attempts_total{profile="default-scheduler",result="unschedulable"}' in text
        assert "scheduler_scheduling_attempt_duration_seconds_bucket" in text
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{svc.metrics_url}/healthz")).text == "ok"


async def test_deleted_node_is_no_longer_used(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, node("gone", cpu="8"), node("stays", cpu="1"))
    async with running_scheduler(apiserver.url) as svc:
        await client.delete(NODES, "gone")
        await eventually(lambda: svc.cache is not None and svc.cache.num_nodes == 1, message="node removed")
        await client.create(PODS, pod("p", cpu="500m"))
        assert await wait_bound(client, "p") == "stays"


async def test_pod_bound_by_someone_else_leaves_the_queue(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, node("n1", cpu="1", taints=[taint("maintenance")]))
    async with running_scheduler(apiserver.url) as svc:
        await client.create(PODS, pod("manual"))
        await wait_event(client, "manual", "FailedScheduling")
        session = svc.session
        assert session is not None
        await eventually(lambda: session.pending_counts()["unschedulable"] == 1, message="pod parked")
        # An operator binds it by hand (as `kubectl create -f binding.yaml` would).
        await client.create_subresource(PODS, "manual", "binding", {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": "manual"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}}, "default")
        await eventually(lambda: sum(session.pending_counts().values()) == 0, message="pod left the queue")
        cache = svc.cache
        assert cache is not None
        info = cache.node_info("n1")
        assert info is not None and [p.name for p in info.pods.values()] == ["manual"]


async def test_kubectl_describe_shows_the_scheduler_events(apiserver: ThreadedApiServer, client: ApiClient,
                                                           kubectl: Any) -> None:
    await create_nodes(client, node("n1", cpu="1"))
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("fits"))
        await client.create(PODS, pod("hungry", cpu="2"))
        await wait_event(client, "fits", "Scheduled")
        await wait_event(client, "hungry", "FailedScheduling")
    fits = kubectl("describe", "pod", "fits")
    assert "Normal  Scheduled" in fits and "default-scheduler  Successfully assigned default/fits to n1" in fits
    hungry = kubectl("describe", "pod", "hungry")
    assert "Warning  FailedScheduling" in hungry
    assert "default-scheduler  0/1 nodes are available: 1 Insufficient cpu." in hungry
    assert "PodScheduled   False" in hungry
