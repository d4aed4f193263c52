"""The StatefulSet controller against a real API server: ordered creation and deletion, Parallel, stable identity
and claims, partitioned rolling updates, OnDelete, revisions, and the PVC retention policy."""

from __future__ import annotations

import asyncio
from typing import Any, Self

from workload_harness import FakeKubelet, PodScript, RunningControllers, eventually

from controlplane.client import (
    CONTROLLERREVISIONS,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    STATEFULSETS,
    ApiClient,
    NotFound,
    SharedInformerFactory,
)
from controlplane.controllers.controller_utils import is_pod_ready
from controlplane.controllers.garbage_collector import GarbageCollector
from controlplane.controllers.statefulset_controller import StatefulSetController
from controlplane.testing import ThreadedApiServer


def statefulset(name: str, replicas: int, image: str = "db:v1", claims: bool = False, **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    body: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"replicas": replicas, "serviceName": name, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "db", "image": image}]}}, **spec}}
    if claims:
        body["spec"]["volumeClaimTemplates"] = [{
            "metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]
    return body


class PodLog:
    """Every pod event for one app, with the cache as it stood, to check ordering rules at each moment."""

    def __init__(self, client: ApiClient, app: str) -> None:
        self.factory = SharedInformerFactory(client)
        self.pods = self.factory.informer(PODS, "default", label_selector={"app": app})
        self.violations: list[str] = []
        self.created: list[str] = []
        self.deleting: list[str] = []
        self.check_order = True
        self.pods.add_handler(on_add=self._added, on_update=self._updated)

    def _state(self) -> dict[int, dict[str, Any]]:
        return {int(p["metadata"]["name"].rsplit("-", 1)[1]): p for p in self.pods.list()}

    def _added(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        self.created.append(name)
        ordinal = int(name.rsplit("-", 1)[1])
        state = self._state()
        if self.check_order:
            for lower in range(ordinal):
                p = state.get(lower)
                if p is None or not is_pod_ready(p) or p["metadata"].get("deletionTimestamp"):
                    self.violations.append(f"{name} created while ordinal {lower} was not running and ready")

    def _updated(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        if new["metadata"].get("deletionTimestamp") and not old["metadata"].get("deletionTimestamp"):
            name = new["metadata"]["name"]
            self.deleting.append(name)
            ordinal = int(name.rsplit("-", 1)[1])
            if self.check_order:
                # OrderedReady removes one pod at a time: a higher ordinal must be gone, not just terminating.
                for higher in self._state():
                    if higher > ordinal:
                        self.violations.append(f"{name} deleted while higher ordinal {higher} still existed")

    async def __aenter__(self) -> Self:
        self.factory.start_all()
        assert await self.factory.wait_for_sync(20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.factory.stop_all()


async def sts_status(client: ApiClient, name: str) -> dict[str, Any]:
    sts = await client.get(STATEFULSETS, name, "default")
    return {"generation": sts["metadata"]["generation"], **(sts.get("status") or {})}


async def settled(client: ApiClient, name: str, replicas: int) -> bool:
    s = await sts_status(client, name)
    return (s.get("observedGeneration") == s["generation"] and s.get("replicas") == replicas
            and s.get("readyReplicas") == replicas and s.get("updatedReplicas") == replicas
            and s.get("currentRevision") == s.get("updateRevision"))


async def live_pods(client: ApiClient, app: str) -> dict[str, dict[str, Any]]:
    pods = (await client.list(PODS, "default", label_selector={"app": app}))["items"]
    return {p["metadata"]["name"]: p for p in pods}


async def test_ordered_ready_creates_in_order_and_deletes_in_reverse(apiserver: ThreadedApiServer,
                                                                     client: ApiClient, kubectl: Any) -> None:
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: PodScript(ready_delay=0.1), terminate_delay=0.2)
    async with kubelet, RunningControllers(apiserver.url, StatefulSetController()), PodLog(client, "web") as log:
        await client.create(STATEFULSETS, statefulset("web", 3, claims=True))
        await eventually(lambda: settled(client, "web", 3), message="3 ready in order")
        assert log.created == ["web-0", "web-1", "web-2"]
        assert not log.violations, log.violations

        pods = await live_pods(client, "web")
        sts = await client.get(STATEFULSETS, "web", "default")
        for ordinal in range(3):
            pod = pods[f"web-{ordinal}"]
            labels = pod["metadata"]["labels"]
            assert labels["statefulset.kubernetes.io/pod-name"] == f"web-{ordinal}"
            assert labels["apps.kubernetes.io/pod-index"] == str(ordinal)
            assert labels["controller-revision-hash"] == sts["status"]["updateRevision"]
            assert pod["spec"]["hostname"] == f"web-{ordinal}" and pod["spec"]["subdomain"] == "web"
            volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "data")
            assert volume["persistentVolumeClaim"]["claimName"] == f"data-web-{ordinal}"
            claim = await client.get(PERSISTENTVOLUMECLAIMS, f"data-web-{ordinal}", "default")
            assert claim["metadata"]["labels"] == {"app": "web"}
            assert not claim["metadata"].get("ownerReferences")  # the default policy retains claims
        revisions = (await client.list(CONTROLLERREVISIONS, "default"))["items"]
        assert [r["metadata"]["name"] for r in revisions] == [sts["status"]["currentRevision"]]
        assert revisions[0]["revision"] == 1
        s = sts["status"]
        assert (s["replicas"], s["readyReplicas"], s["currentReplicas"], s["updatedReplicas"],
                s["availableReplicas"]) == (3, 3, 3, 3, 3)

        await asyncio.to_thread(kubectl, "scale", "statefulset/web", "--replicas=1")
        await eventually(lambda: _names_are(client, "web", {"web-0"}), message="scaled down to web-0")
        assert log.deleting == ["web-2", "web-1"], log.deleting
        assert not log.violations, log.violations
        # Claims outlive a scale-down under the default Retain policy.
        for ordinal in range(3):
            await client.get(PERSISTENTVOLUMECLAIMS, f"data-web-{ordinal}", "default")


async def _names_are(client: ApiClient, app: str, names: set[str]) -> bool:
    return set(await live_pods(client, app)) == names


async def test_parallel_creates_without_waiting(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url)
    kubelet.paused = True  # no pod ever starts: OrderedReady would stop at web-0
    async with kubelet, RunningControllers(apiserver.url, StatefulSetController()):
        await client.create(STATEFULSETS, statefulset("par", 4, podManagementPolicy="Parallel"))
        await eventually(lambda: _names_are(client, "par", {f"par-{i}" for i in range(4)}), message="all four")
        await client.create(STATEFULSETS, statefulset("seq", 3))
        await eventually(lambda: _names_are(client, "seq", {"seq-0"}))
        await eventually(lambda: _status_field(client, "seq", "replicas", 1))
        assert set(await live_pods(client, "seq")) == {"seq-0"}  # still waiting for seq-0 to be ready


async def _status_field(client: ApiClient, name: str, field: str, value: Any) -> bool:
    return (await sts_status(client, name)).get(field) == value


async def test_partitioned_rolling_update_goes_from_the_top_down(apiserver: ThreadedApiServer,
                                                                 client: ApiClient) -> None:
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: PodScript(ready_delay=0.05))
    async with kubelet, RunningControllers(apiserver.url, StatefulSetController()), PodLog(client, "db") as log:
        await client.create(STATEFULSETS, statefulset("db", 4, updateStrategy={
            "type": "RollingUpdate", "rollingUpdate": {"partition": 2}}))
        await eventually(lambda: settled(client, "db", 4))
        first = (await sts_status(client, "db"))["currentRevision"]
        log.check_order = False
        log.deleting.clear()
        await client.patch(STATEFULSETS, "db", {"spec": {"template": {"spec": {"containers": [
            {"name": "db", "image": "db:v2"}]}}}}, "default", patch_type="strategic")

        async def partitioned() -> bool:
            s = await sts_status(client, "db")
            pods = await live_pods(client, "db")
            images = {n: p["spec"]["containers"][0]["image"] for n, p in pods.items()
                      if not p["metadata"].get("deletionTimestamp") and is_pod_ready(p)}
            return (s.get("updatedReplicas") == 2 and s.get("currentReplicas") == 2 and s.get("readyReplicas") == 4
                    and images == {"db-0": "db:v1", "db-1": "db:v1", "db-2": "db:v2", "db-3": "db:v2"})

        await eventually(partitioned, message="ordinals >= 2 updated, the rest not")
        s = await sts_status(client, "db")
        assert s["currentRevision"] == first and s["updateRevision"] != first
        assert log.deleting == ["db-3", "db-2"]
        pods = await live_pods(client, "db")
        assert pods["db-0"]["metadata"]["labels"]["controller-revision-hash"] == first
        assert pods["db-3"]["metadata"]["labels"]["controller-revision-hash"] == s["updateRevision"]
        revisions = {r["metadata"]["name"]: r["revision"]
                     for r in (await client.list(CONTROLLERREVISIONS, "default"))["items"]}
        assert revisions == {first: 1, s["updateRevision"]: 2}

        # Lowering the partition releases the rest, still highest first; then the update becomes current.
        await client.patch(STATEFULSETS, "db", {"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}},
                           "default", patch_type="strategic")
        await eventually(lambda: settled(client, "db", 4), message="all updated")
        assert log.deleting == ["db-3", "db-2", "db-1", "db-0"]
        s = await sts_status(client, "db")
        assert s["currentRevision"] == s["updateRevision"] != first
        assert s["currentReplicas"] == 4


async def test_on_delete_replaces_only_deleted_pods(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, StatefulSetController()):
        await client.create(STATEFULSETS, statefulset("od", 2, updateStrategy={"type": "OnDelete"}))
        await eventually(lambda: settled(client, "od", 2))
        await client.patch(STATEFULSETS, "od", {"spec": {"template": {"spec": {"containers": [
            {"name": "db", "image": "db:v2"}]}}}}, "default", patch_type="strategic")
        await eventually(lambda: _status_field(client, "od", "observedGeneration", 2))
        s = await sts_status(client, "od")
        assert s["updateRevision"] != s["currentRevision"] and s.get("updatedReplicas", 0) == 0
        old_uid = (await client.get(PODS, "od-1", "default"))["metadata"]["uid"]
        await client.delete(PODS, "od-1", "default")

        async def replaced() -> bool:
            try:
                pod = await client.get(PODS, "od-1", "default")
            except NotFound:
                return False
            return pod["metadata"]["uid"] != old_uid and is_pod_ready(pod)

        await eventually(replaced, message="od-1 recreated")
        pods = await live_pods(client, "od")
        assert pods["od-1"]["spec"]["containers"][0]["image"] == "db:v2"
        assert pods["od-0"]["spec"]["containers"][0]["image"] == "db:v1"
        await eventually(lambda: _status_field(client, "od", "updatedReplicas", 1))


async def test_claim_retention_policy_delete(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    """whenScaled/whenDeleted=Delete: claims are owned by the set, handed to their pod on scale-down, and the
    garbage collector removes them with their owner."""
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, StatefulSetController(),
                                                              GarbageCollector()):
        sts = await client.create(STATEFULSETS, statefulset("kv", 3, claims=True, persistentVolumeClaimRetentionPolicy={
            "whenDeleted": "Delete", "whenScaled": "Delete"}))
        await eventually(lambda: settled(client, "kv", 3))
        for ordinal in range(3):
            claim = await client.get(PERSISTENTVOLUMECLAIMS, f"data-kv-{ordinal}", "default")
            assert [(r["kind"], r["uid"]) for r in claim["metadata"]["ownerReferences"]] == [
                ("StatefulSet", sts["metadata"]["uid"])]
        await client.patch(STATEFULSETS, "kv", {"spec": {"replicas": 1}}, "default")
        await eventually(lambda: _names_are(client, "kv", {"kv-0"}))

        async def claims() -> set[str]:
            items = (await client.list(PERSISTENTVOLUMECLAIMS, "default"))["items"]
            return {c["metadata"]["name"] for c in items if not c["metadata"].get("deletionTimestamp")}

        await eventually(lambda: _equals(claims(), {"data-kv-0"}), message="scaled-away claims deleted")
        await client.delete(STATEFULSETS, "kv", "default")
        await eventually(lambda: _equals(claims(), set()), message="claims deleted with the set")


async def _equals(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_kubectl_rollout_status_history_and_undo(apiserver: ThreadedApiServer, client: ApiClient,
                                                       kubectl: Any) -> None:
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, StatefulSetController()):
        await client.create(STATEFULSETS, statefulset("db", 2))
        await eventually(lambda: settled(client, "db", 2))
        await client.patch(STATEFULSETS, "db", {"spec": {"template": {"spec": {"containers": [
            {"name": "db", "image": "db:v2"}]}}}}, "default", patch_type="strategic")
        out = await asyncio.to_thread(kubectl, "rollout", "status", "statefulset/db", "--timeout=30s")
        assert "roll out complete: 2 new pods have been updated" in out
        history = await asyncio.to_thread(kubectl, "rollout", "history", "statefulset/db")
        assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]
        await asyncio.to_thread(kubectl, "rollout", "undo", "statefulset/db")
        await eventually(lambda: settled(client, "db", 2), message="rolled back")

        async def on_v1() -> bool:
            pods = await live_pods(client, "db")
            return {p["spec"]["containers"][0]["image"] for p in pods.values()} == {"db:v1"}

        await eventually(on_v1, message="pods back on v1")
        revisions = {r["revision"]: r["metadata"]["name"]
                     for r in (await client.list(CONTROLLERREVISIONS, "default"))["items"]}
        s = await sts_status(client, "db")
        assert sorted(revisions) == [2, 3] and revisions[3] == s["currentRevision"] == s["updateRevision"]
