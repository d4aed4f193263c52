"""Placement constraints end to end: pod anti-affinity, topology spread over zones, and volumes (a claim bound to a
zonal PV, a WaitForFirstConsumer claim that gets the selected-node annotation)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

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

from controlplane.client import (
    PERSISTENTVOLUMECLAIMS,
    PERSISTENTVOLUMES,
    PODS,
    STORAGECLASSES,
    ApiClient,
)
from controlplane.testing import ThreadedApiServer

ZONE = "topology.kubernetes.io/zone"


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


def zonal_nodes(zones: dict[str, int]) -> list[dict[str, Any]]:
    return [node(f"{z}-{i}", labels={ZONE: z}) for z, n in zones.items() for i in range(n)]


async def test_required_anti_affinity_spreads_replicas_over_nodes(apiserver: ThreadedApiServer,
                                                                 client: ApiClient) -> None:
    await create_nodes(client, *(node(f"n{i}") for i in range(3)))
    anti = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    async with running_scheduler(apiserver.url):
        for i in range(3):
            await client.create(PODS, pod(f"web-{i}", labels={"app": "web"}, affinity=anti))
        placed = [await wait_bound(client, f"web-{i}") for i in range(3)]
        assert sorted(placed) == ["n0", "n1", "n2"]
        # A fourth replica has nowhere to go.
        await client.create(PODS, pod("web-3", labels={"app": "web"}, affinity=anti))
        ev = await wait_event(client, "web-3", "FailedScheduling")
    assert ev["message"].startswith("0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.")
    assert await node_of(client, "web-3") == ""


async def test_topology_spread_balances_zones(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    # Zone a has many more nodes: without the constraint, spreading by node would favour it.
    await create_nodes(client, *zonal_nodes({"a": 4, "b": 1, "c": 1}))
    spread = [{"maxSkew": 1, "topologyKey": ZONE, "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "spread"}}}]
    async with running_scheduler(apiserver.url):
        for i in range(6):
            await client.create(PODS, pod(f"s{i}", labels={"app": "spread"}, topologySpreadConstraints=spread))
        placed = [await wait_bound(client, f"s{i}") for i in range(6)]
    per_zone = Counter(name.split("-")[0] for name in placed)
    assert per_zone == {"a": 2, "b": 2, "c": 2}


async def test_claim_bound_to_a_zonal_pv_puts_the_pod_in_that_zone(apiserver: ThreadedApiServer,
                                                                   client: ApiClient) -> None:
    await create_nodes(client, *zonal_nodes({"a": 3, "b": 1}))
    # A PV and a claim already bound to each other (as the PV controller leaves them), the PV usable from zone b.
    pv = {"metadata": {"name": "disk-b"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "manual",
                   "persistentVolumeReclaimPolicy": "Retain",
                   "claimRef": {"namespace": "default", "name": "data"},
                   "nodeAffinity": {"required": {"nodeSelectorTerms": [
                       {"matchExpressions": [{"key": ZONE, "operator": "In", "values": ["b"]}]}]}},
                   "hostPath": {"path": "/tmp/disk-b"}}}
    created = await client.create(PERSISTENTVOLUMES, pv)
    await client.update_status(PERSISTENTVOLUMES, {**created, "status": {"phase": "Bound"}})
    pvc = {"metadata": {"name": "data", "namespace": "default",
                        "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": "manual", "volumeName": "disk-b"}}
    created = await client.create(PERSISTENTVOLUMECLAIMS, pvc)
    await client.update_status(PERSISTENTVOLUMECLAIMS, {**created, "status": {"phase": "Bound"}})
    vol = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("db", volumes=vol))
        assert await wait_bound(client, "db") == "b-0"


async def test_wait_for_first_consumer_claim_gets_the_selected_node(apiserver: ThreadedApiServer,
                                                                    client: ApiClient) -> None:
    await create_nodes(client, *zonal_nodes({"a": 2, "b": 2}))
    await client.create(STORAGECLASSES, {
        "metadata": {"name": "zonal"}, "provisioner": "example.com/zonal", "volumeBindingMode": "WaitForFirstConsumer",
        "allowedTopologies": [{"matchLabelExpressions": [{"key": ZONE, "values": ["b"]}]}]})
    await client.create(PERSISTENTVOLUMECLAIMS, {
        "metadata": {"name": "late", "namespace": "default"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                 "storageClassName": "zonal"}})
    vol = [{"name": "data", "persistentVolumeClaim": {"claimName": "late"}}]
    async with running_scheduler(apiserver.url):
        await client.create(PODS, pod("consumer", volumes=vol))

        async def selected() -> str | None:
            c = await client.get(PERSISTENTVOLUMECLAIMS, "late", "default")
            return ((c["metadata"].get("annotations") or {}).get("volume.kubernetes.io/selected-node"))
        chosen = await eventually(selected, message="selected-node annotation on the claim")
        assert chosen in ("b-0", "b-1")
        # Binding waits until the claim is bound. Play the external provisioner and the PV controller.
        assert await node_of(client, "consumer") == ""
        await client.create(PERSISTENTVOLUMES, {
            "metadata": {"name": "pv-late"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": "zonal",
                     "claimRef": {"namespace": "default", "name": "late"}, "csi": {"driver": "example.com/zonal",
                                                                                 "volumeHandle": "v1"}}})
        c = await client.get(PERSISTENTVOLUMECLAIMS, "late", "default")
        c["spec"]["volumeName"] = "pv-late"
        c["metadata"].setdefault("annotations", {})["pv.kubernetes.io/bind-completed"] = "yes"
        c = await client.update(PERSISTENTVOLUMECLAIMS, c)
        await client.update_status(PERSISTENTVOLUMECLAIMS, {**c, "status": {"phase": "Bound"}})
        assert await wait_bound(client, "consumer") == chosen
