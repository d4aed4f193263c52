"""The ReplicaSet controller against a real API server: pods to match replicas, adoption and release, the order in
which surplus pods go, status, and expectations (a burst of creates is never repeated)."""

from __future__ import annotations

import asyncio
from typing import Any

from workload_harness import FakeKubelet, RunningControllers, eventually

from controlplane.client import PODS, REPLICASETS, ApiClient, NotFound
from controlplane.controllers.replicaset_controller import ReplicaSetController
from controlplane.testing import ThreadedApiServer


def replicaset(name: str, replicas: int, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}, **spec}}


async def owned_pods(client: ApiClient, rs: dict[str, Any], active_only: bool = True) -> list[dict[str, Any]]:
    pods = (await client.list(PODS, "default"))["items"]
    uid = rs["metadata"]["uid"]
    out = []
    for p in pods:
        refs = [r for r in p["metadata"].get("ownerReferences") or [] if r.get("uid") == uid and r.get("controller")]
        if refs and (not active_only or not p["metadata"].get("deletionTimestamp")):
            out.append(p)
    return out


async def test_creates_pods_reports_status_and_scales(apiserver: ThreadedApiServer, client: ApiClient,
                                                      kubectl: Any) -> None:
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, ReplicaSetController()):
        rs = await client.create(REPLICASETS, replicaset("web", 3))

        async def status_is(n: int) -> bool:
            s = (await client.get(REPLICASETS, "web", "default")).get("status") or {}
            return (s.get("replicas") == n and s.get("readyReplicas", 0) == n and s.get("availableReplicas", 0) == n
                    and s.get("fullyLabeledReplicas", 0) == n and s.get("observedGeneration") == rs["metadata"]
                    .get("generation", 1) + 0)

        await eventually(lambda: status_is(3), message="3 ready replicas")
        pods = await owned_pods(client, rs)
        assert len(pods) == 3
        for pod in pods:
            assert pod["metadata"]["name"].startswith("web-")
            assert pod["metadata"]["generateName"] == "web-"
            ref = pod["metadata"]["ownerReferences"][0]
            assert ref == {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": rs["metadata"]["uid"],
                           "controller": True, "blockOwnerDeletion": True}
            assert pod["metadata"]["labels"] == {"app": "web"}

        # `kubectl scale` goes through the scale subresource; the generation moves and the status follows it.
        await asyncio.to_thread(kubectl, "scale", "rs/web", "--replicas=5")
        rs = await client.get(REPLICASETS, "web", "default")
        await eventually(lambda: status_is(5), message="5 ready replicas")
        assert len(await owned_pods(client, rs)) == 5
        await asyncio.to_thread(kubectl, "scale", "rs/web", "--replicas=1")
        rs = await client.get(REPLICASETS, "web", "default")
        await eventually(lambda: status_is(1), message="scaled down to 1")
        await eventually(lambda: _count(owned_pods(client, rs, active_only=False), 1), message="surplus pods gone")


async def _count(pods: Any, n: int) -> bool:
    return len(await pods) == n


async def test_adopts_orphans_and_releases_pods_that_stop_matching(apiserver: ThreadedApiServer,
                                                                    client: ApiClient) -> None:
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, ReplicaSetController()):
        orphan = await client.create(PODS, {"metadata": {"name": "orphan", "labels": {"app": "api"}},
                                            "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
                                     "default")
        other = await client.create(PODS, {"metadata": {"name": "other", "labels": {"app": "other"}},
                                           "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
                                    "default")
        rs = await client.create(REPLICASETS, replicaset("api", 2))
        await eventually(lambda: _count(owned_pods(client, rs), 2), message="two pods owned")
        adopted = await client.get(PODS, "orphan", "default")
        assert adopted["metadata"]["uid"] == orphan["metadata"]["uid"]
        assert adopted["metadata"]["ownerReferences"][0]["uid"] == rs["metadata"]["uid"]
        assert not (await client.get(PODS, "other", "default"))["metadata"].get("ownerReferences")
        assert other  # a pod that never matched is left alone

        # Relabel the adopted pod: the ReplicaSet lets it go (ownerReference removed) and makes a replacement.
        await client.patch(PODS, "orphan", {"metadata": {"labels": {"app": "debug"}}}, "default")
        await eventually(lambda: _released(client), message="relabelled pod released")
        await eventually(lambda: _count(owned_pods(client, rs), 2), message="replacement created")
        names = {p["metadata"]["name"] for p in await owned_pods(client, rs)}
        assert "orphan" not in names


async def _released(client: ApiClient) -> bool:
    pod = await client.get(PODS, "orphan", "default")
    return not pod["metadata"].get("ownerReferences")


async def test_scale_down_deletes_in_upstream_preference_order(apiserver: ThreadedApiServer,
                                                               client: ApiClient) -> None:
    """No kubelet runs here: the test reports pod status itself, to put each pod in a known state first."""
    labels = {"app": "rank"}
    now_ready = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    states: dict[str, tuple[str | None, dict[str, Any] | None, str | None]] = {
        # name: (node, status, pod-deletion-cost)
        "unscheduled": (None, None, None),
        "pending": ("node-1", {"phase": "Pending"}, None),
        "not-ready": ("node-1", {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}, None),
        "ready-cheap": ("node-1", now_ready, "-5"),
        "ready-default": ("node-1", now_ready, None),
        "ready-precious": ("node-1", now_ready, "100"),
    }
    for name, (node, status, cost) in states.items():
        body: dict[str, Any] = {"metadata": {"name": name, "labels": labels},
                                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}
        if node:
            body["spec"]["nodeName"] = node
        if cost:
            body["metadata"]["annotations"] = {"controller.kubernetes.io/pod-deletion-cost": cost}
        pod = await client.create(PODS, body, "default")
        if status:
            await client.update_status(PODS, {**pod, "status": status})
    async with RunningControllers(apiserver.url, ReplicaSetController()):
        await client.create(REPLICASETS, replicaset("rank", 6, labels))
        rs = await client.get(REPLICASETS, "rank", "default")
        await eventually(lambda: _count(owned_pods(client, rs), 6), message="all six adopted")
        for replicas, victim in [(5, "unscheduled"), (4, "pending"), (3, "not-ready"), (2, "ready-cheap"),
                                 (1, "ready-default")]:
            await client.patch(REPLICASETS, "rank", {"spec": {"replicas": replicas}}, "default")
            await eventually(lambda victim=victim: _deleting(client, victim),
                             message=f"{victim} deleted at {replicas}")
            active = {p["metadata"]["name"] for p in await owned_pods(client, rs)}
            assert len(active) == replicas, active
        assert {p["metadata"]["name"] for p in await owned_pods(client, rs)} == {"ready-precious"}


async def _deleting(client: ApiClient, name: str) -> bool:
    try:
        pod = await client.get(PODS, name, "default")
    except NotFound:
        return True
    return bool(pod["metadata"].get("deletionTimestamp"))


async def test_a_burst_of_creates_is_not_repeated(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    """Expectations: however often the ReplicaSet is reconciled while its pods are being created, each pod is
    created once. Every pod ever created is counted from a watch opened before the ReplicaSet exists."""
    created: set[str] = set()
    listing = await client.list(PODS, "default")
    from controlplane.client import watch

    async def count() -> None:
        async for event in watch(client, PODS, "default", resource_version=listing["metadata"]["resourceVersion"]):
            if event.type == "ADDED":
                created.add(event.object["metadata"]["name"])

    counter = asyncio.create_task(count())
    try:
        async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, ReplicaSetController()):
            rs = await client.create(REPLICASETS, replicaset("burst", 20))
            # Poke the controller while it works: each update is another reconcile of the same key.
            for i in range(5):
                await client.patch(REPLICASETS, "burst", {"metadata": {"annotations": {"poke": str(i)}}}, "default")
            await eventually(lambda: _ready(client, "burst", 20), message="20 ready")
            await eventually(lambda: len(created) >= 20)
            assert len(created) == 20, sorted(created)
            assert len(await owned_pods(client, rs)) == 20
    finally:
        counter.cancel()
        await asyncio.gather(counter, return_exceptions=True)


async def _ready(client: ApiClient, name: str, n: int) -> bool:
    s = (await client.get(REPLICASETS, name, "default")).get("status") or {}
    return s.get("readyReplicas") == n and s.get("replicas") == n
