"""Several schedulers in one cluster: two instances side by side, each binding only the pods that name it; two
profiles in one configuration; and two instances behind leader election, only the leader scheduling."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from scheduler_e2e_helpers import (
    create_nodes,
    eventually,
    node,
    node_of,
    pod,
    running_scheduler,
    wait_bound,
    wait_event,
)

from controlplane.client import PODS, ApiClient
from controlplane.controllers.leader_election import LeaderElectionConfig
from controlplane.scheduler.config import parse_config
from controlplane.scheduler.service import SchedulerOptions, SchedulerService
from controlplane.testing import ThreadedApiServer


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


def attempts(svc: SchedulerService, profile: str) -> float:
    return svc.metrics.schedule_attempts.labels("scheduled", profile)._value.get()


async def test_two_schedulers_side_by_side_bind_only_their_own_pods(apiserver: ThreadedApiServer,
                                                                    client: ApiClient) -> None:
    await create_nodes(client, node("n1"), node("n2"))
    second = parse_config({"profiles": [{"schedulerName": "second-scheduler"}]})
    async with running_scheduler(apiserver.url) as first, running_scheduler(apiserver.url, second) as other:
        await client.create(PODS, pod("for-first"))
        await client.create(PODS, pod("for-second", scheduler="second-scheduler"))
        await client.create(PODS, pod("for-nobody", scheduler="third-scheduler"))
        await wait_bound(client, "for-first")
        await wait_bound(client, "for-second")
        ev = await wait_event(client, "for-second", "Scheduled")
        assert ev["source"]["component"] == "second-scheduler"
        assert ev["reportingComponent"] == "second-scheduler"
        assert attempts(first, "default-scheduler") == 1 and attempts(other, "second-scheduler") == 1
        assert attempts(first, "second-scheduler") == 0 and attempts(other, "default-scheduler") == 0
        # Each accounts the other's pods on its nodes.
        assert first.cache is not None and other.cache is not None
        await eventually(lambda: first.cache.pod_count() == 2 and other.cache.pod_count() == 2,  # type: ignore
                         message="both caches hold both bound pods")
    assert await node_of(client, "for-nobody") == ""


async def test_second_profile_in_one_configuration(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await create_nodes(client, *(node(f"n{i}") for i in range(4)))
    cfg = parse_config({"profiles": [
        {"schedulerName": "default-scheduler"},
        # Bin-packing as upstream documents it: MostAllocated, without BalancedAllocation pulling the other way.
        {"schedulerName": "bin-packer",
         "plugins": {"score": {"disabled": [{"name": "NodeResourcesBalancedAllocation"}]}},
         "pluginConfig": [{"name": "NodeResourcesFit", "args": {
            "scoringStrategy": {"type": "MostAllocated", "resources": [{"name": "cpu", "weight": 1},
                                                                       {"name": "memory", "weight": 1}]}}}]},
    ]})
    async with running_scheduler(apiserver.url, cfg) as svc:
        for i in range(3):
            await client.create(PODS, pod(f"packed-{i}", cpu="500m", scheduler="bin-packer"))
            await wait_bound(client, f"packed-{i}")  # one at a time, so each sees the previous one
        for i in range(3):
            await client.create(PODS, pod(f"spread-{i}", cpu="500m"))
            await wait_bound(client, f"spread-{i}")
        packed = Counter([await node_of(client, f"packed-{i}") for i in range(3)])
        spread = Counter([await node_of(client, f"spread-{i}") for i in range(3)])
        assert attempts(svc, "bin-packer") == 3 and attempts(svc, "default-scheduler") == 3
    assert len(packed) == 1  # MostAllocated stacks them
    assert len(spread) == 3 and not set(spread) & set(packed)  # LeastAllocated avoids the busy node


async def test_only_the_leader_schedules_and_a_standby_takes_over(apiserver: ThreadedApiServer,
                                                                  client: ApiClient) -> None:
    await create_nodes(client, node("n1"))

    def candidate(identity: str) -> SchedulerService:
        le = LeaderElectionConfig(name="kube-scheduler", namespace="kube-system", identity=identity,
                                  lease_duration=3.0, renew_deadline=2.0, retry_period=0.3)
        return SchedulerService(apiserver.url, None, SchedulerOptions(leader_election=le, seed=1))

    a, b = candidate("a"), candidate("b")
    await a.start()
    try:
        assert await a.wait_running(10)
        await b.start()
        try:
            await client.create(PODS, pod("p1"))
            await wait_bound(client, "p1")
            assert not b.running and not b.is_leader
            assert attempts(a, "default-scheduler") == 1
            await a.stop()  # releases the lease: b takes over without waiting for it to expire
            assert await b.wait_running(10)
            await client.create(PODS, pod("p2"))
            await wait_bound(client, "p2")
            assert attempts(b, "default-scheduler") == 1
        finally:
            await b.stop()
    finally:
        await a.stop()
