"""Leader election through a real API server: of two managers one acts; killing it hands over within the lease
duration; a clean stop releases the lease so the other takes over at once."""

from __future__ import annotations

import time

from controlplane.client import CONFIGMAPS, LEASES, ApiClient, SharedInformerFactory
from controlplane.controllers.base import DONE, Enqueue, Result
from controlplane.controllers.leader_election import LeaderElectionConfig
from controlplane.controllers.manager import ControllerManager, ManagerConfig

LEASE, RENEW, RETRY = 2.0, 1.5, 0.2


class Probe:
    """A controller that records the ConfigMaps it reconciles."""

    name = "probe"
    workers = 1

    def __init__(self) -> None:
        self.seen: list[str] = []

    def setup(self, client: ApiClient, informers: SharedInformerFactory, enqueue: Enqueue) -> None:
        informers.informer(CONFIGMAPS, "default").add_handler(
            on_add=lambda cm: enqueue(cm["metadata"]["name"]))

    async def reconcile(self, key: str) -> Result:
        self.seen.append(key)
        return DONE


def manager(url: str, identity: str, probe: Probe) -> ControllerManager:
    le = LeaderElectionConfig(name="probe-manager", identity=identity, lease_duration=LEASE, renew_deadline=RENEW,
                              retry_period=RETRY)
    return ControllerManager(url, ManagerConfig(leader_election=le), factories={"probe": lambda ctx: probe})


async def holder(client: ApiClient) -> str | None:
    return (await client.get(LEASES, "probe-manager", "kube-system"))["spec"].get("holderIdentity")


async def test_one_leader_acts_and_a_killed_leader_is_replaced(apiserver, client, wait_for):
    probes = {"a": Probe(), "b": Probe()}
    managers = {k: manager(apiserver.url, k, p) for k, p in probes.items()}
    try:
        await managers["a"].start()
        assert await managers["a"].wait_running(10)
        await managers["b"].start()
        await client.create(CONFIGMAPS, {"metadata": {"name": "first"}}, "default")
        await wait_for(lambda: probes["a"].seen == ["first"])
        assert await holder(client) == "a"
        assert not managers["b"].running and probes["b"].seen == []
        lease = await client.get(LEASES, "probe-manager", "kube-system")
        assert lease["spec"]["leaseDurationSeconds"] == 2
        transitions = lease["spec"].get("leaseTransitions", 0)

        # Kill the leader: it stops without releasing. b must wait out the lease, and not much longer.
        killed_at = time.monotonic()
        await managers["a"].kill()
        await wait_for(lambda: _is_holder(client, "b"), timeout=LEASE + 10)
        took = time.monotonic() - killed_at
        assert await managers["b"].wait_running(10)
        assert LEASE * 0.5 <= took <= LEASE + RETRY * 2.2 + 5.0, took  # slack for two loaded cores
        await client.create(CONFIGMAPS, {"metadata": {"name": "second"}}, "default")
        await wait_for(lambda: "second" in probes["b"].seen)
        assert "second" not in probes["a"].seen
        lease = await client.get(LEASES, "probe-manager", "kube-system")
        assert lease["spec"]["leaseTransitions"] == transitions + 1
    finally:
        for m in managers.values():
            await m.stop()


async def _is_holder(client: ApiClient, identity: str) -> bool:
    return await holder(client) == identity


async def test_clean_stop_releases_the_lease(apiserver, client, wait_for):
    a, b = manager(apiserver.url, "a", Probe()), manager(apiserver.url, "b", Probe())
    try:
        await a.start()
        assert await a.wait_running(10)
        await b.start()
        await a.stop()
        lease = await client.get(LEASES, "probe-manager", "kube-system")
        assert not lease["spec"].get("holderIdentity"), "a clean stop leaves the lease without a holder"
        released_at = time.monotonic()
        assert await b.wait_running(10)
        # b saw an empty holder: it takes over at its next retry, well within the lease duration.
        assert time.monotonic() - released_at < LEASE, "took the released lease without waiting for expiry"
        assert b.is_leader and b.healthy
    finally:
        await a.stop()
        await b.stop()


async def test_leader_that_cannot_renew_steps_down(apiserver, client, wait_for):
    a = manager(apiserver.url, "a", Probe())
    try:
        await a.start()
        assert await a.wait_running(10)
        # Someone else takes the lease over (as if a's renewals had been failing and another won it).
        lease = await client.get(LEASES, "probe-manager", "kube-system")
        lease["spec"]["holderIdentity"] = "usurper"
        await client.update(LEASES, lease)
        await wait_for(lambda: not a.running, timeout=RENEW + 5, message="a stops its controllers")
        assert not a.is_leader
    finally:
        await a.stop()


def test_config_is_validated_as_upstream():
    for bad in ({"lease_duration": 10, "renew_deadline": 10}, {"renew_deadline": 2, "retry_period": 2}):
        try:
            LeaderElectionConfig(**bad)  # type: ignore[arg-type]
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")
