"""Preemption end to end: a pod of a high PriorityClass evicts a lower-priority pod, is nominated to the node, and
binds there once the victim is gone."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from scheduler_e2e_helpers import (
    create_nodes,
    eventually,
    finish_deletions,
    node,
    node_of,
    pod,
    running_scheduler,
    wait_bound,
    wait_event,
)

from controlplane.client import PODS, PRIORITYCLASSES, ApiClient, NotFound
from controlplane.testing import ThreadedApiServer


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


async def priority_classes(client: ApiClient) -> None:
    await client.create(PRIORITYCLASSES, {"metadata": {"name": "low"}, "value": 10})
    await client.create(PRIORITYCLASSES, {"metadata": {"name": "high"}, "value": 1000})


async def test_high_priority_pod_preempts_a_low_priority_one(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await priority_classes(client)
    await create_nodes(client, node("only", cpu="2"))
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("victim", cpu="1500m", priorityClassName="low"))
        assert await wait_bound(client, "victim") == "only"
        await client.create(PODS, pod("vip", cpu="1500m", priorityClassName="high"))

        # The victim is marked and deleted gracefully; the preemptor is nominated to the node meanwhile.
        async def terminating() -> dict | None:
            v = await client.get(PODS, "victim", "default")
            return v if v["metadata"].get("deletionTimestamp") else None
        v = await eventually(terminating, message="victim in graceful deletion")
        target = [c for c in v["status"].get("conditions") or [] if c["type"] == "DisruptionTarget"]
        assert target and target[0]["reason"] == "PreemptionByScheduler"

        async def nominated() -> str | None:
            return (await client.get(PODS, "vip", "default"))["status"].get("nominatedNodeName")
        assert await eventually(nominated, message="nominatedNodeName") == "only"
        assert await node_of(client, "vip") == ""  # the room is not free until the victim is gone
        preempted = await wait_event(client, "victim", "Preempted")
        vip_uid = (await client.get(PODS, "vip", "default"))["metadata"]["uid"]
        assert preempted["message"] == f"Preempted by pod {vip_uid} on node only"

        # The kubelet's part: the victim's containers stop and the pod object goes.
        assert await finish_deletions(client) == 1
        assert await wait_bound(client, "vip") == "only"
    with pytest.raises(NotFound):
        await client.get(PODS, "victim", "default")


async def test_equal_priority_pods_do_not_preempt(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await priority_classes(client)
    await create_nodes(client, node("only", cpu="2"))
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("first", cpu="1500m", priorityClassName="low"))
        await wait_bound(client, "first")
        await client.create(PODS, pod("second", cpu="1500m", priorityClassName="low"))
        ev = await wait_event(client, "second", "FailedScheduling")
    assert ev["message"] == ("0/1 nodes are available: 1 Insufficient cpu. preemption: 0/1 nodes are available: "
                             "1 No preemption victims found for incoming pod..")
    first = await client.get(PODS, "first", "default")
    assert first["metadata"].get("deletionTimestamp") is None
    assert (await client.get(PODS, "second", "default"))["status"].get("nominatedNodeName") is None
