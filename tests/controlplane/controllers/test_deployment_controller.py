"""The Deployment controller (with the ReplicaSet controller under it) against a real API server and real kubectl:
rolling updates watched step by step, Recreate, rollback, pause/resume, restart, history limits, deadlines."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Self

import pytest
from workload_harness import FakeKubelet, PodScript, RunningControllers, eventually

from controlplane.client import DEPLOYMENTS, PODS, REPLICASETS, ApiClient, SharedInformerFactory
from controlplane.controllers.controller_utils import is_pod_ready, parse_time
from controlplane.controllers.deployment_controller import DeploymentController
from controlplane.controllers.replicaset_controller import ReplicaSetController
from controlplane.testing import ThreadedApiServer


def deployment(name: str, replicas: int, image: str = "web:v1", strategy: dict[str, Any] | None = None,
               **spec: Any) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "strategy": strategy or {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}, **spec}}


def controllers(url: str) -> RunningControllers:
    return RunningControllers(url, DeploymentController(), ReplicaSetController())


async def replicasets(client: ApiClient, name: str) -> list[dict[str, Any]]:
    items = (await client.list(REPLICASETS, "default", label_selector={"app": name}))["items"]
    return sorted(items, key=lambda rs: int(rs["metadata"].get("annotations", {}).get(
        "deployment.kubernetes.io/revision", "0")))


async def rolled_out(client: ApiClient, name: str, image: str) -> bool:
    d = await client.get(DEPLOYMENTS, name, "default")
    s = d.get("status") or {}
    n = d["spec"]["replicas"]
    if not (s.get("observedGeneration") == d["metadata"]["generation"] and s.get("updatedReplicas") == n
            and s.get("replicas") == n and s.get("availableReplicas") == n):
        return False
    pods = [p for p in (await client.list(PODS, "default", label_selector={"app": name}))["items"]
            if not p["metadata"].get("deletionTimestamp")]
    return len(pods) == n and all(p["spec"]["containers"][0]["image"] == image for p in pods)


def image_of(pod: dict[str, Any]) -> str:
    return str(pod["spec"]["containers"][0]["image"])


class RolloutObserver:
    """Watches pods and ReplicaSets of one app and records the worst moments it sees."""

    def __init__(self, client: ApiClient, app: str) -> None:
        self.factory = SharedInformerFactory(client)
        self.pods = self.factory.informer(PODS, "default", label_selector={"app": app})
        self.rss = self.factory.informer(REPLICASETS, "default", label_selector={"app": app})
        self.max_pods = 0
        self.min_available: int | None = None
        self.max_rs_total = 0
        self.images_seen: list[set[str]] = []
        self.pods.add_handler(on_add=self._pod, on_update=lambda o, n: self._pod(n), on_delete=self._pod)
        self.rss.add_handler(on_add=self._rs, on_update=lambda o, n: self._rs(n))

    def live(self) -> list[dict[str, Any]]:
        return [p for p in self.pods.list() if not p["metadata"].get("deletionTimestamp")]

    def _pod(self, _: Any) -> None:
        live = self.live()
        self.max_pods = max(self.max_pods, len(live))
        available = sum(1 for p in live if is_pod_ready(p))
        if self.armed:
            self.min_available = available if self.min_available is None else min(self.min_available, available)
        self.images_seen.append({image_of(p) for p in self.pods.list()})

    def _rs(self, _: Any) -> None:
        total = sum(rs["spec"].get("replicas", 0) for rs in self.rss.list())
        if total > self.max_rs_total:
            self.worst_rs = [(rs["metadata"]["name"], rs["metadata"]["resourceVersion"], rs["spec"].get("replicas"),
                              rs["metadata"].get("annotations")) for rs in self.rss.list()]
        self.max_rs_total = max(self.max_rs_total, total)

    armed = False  # availability is only meaningful once the first rollout has finished

    async def __aenter__(self) -> Self:
        self.factory.start_all()
        assert await self.factory.wait_for_sync(20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.factory.stop_all()


@pytest.mark.parametrize(("replicas", "surge", "unavailable"), [(4, 1, 1), (10, "25%", "25%"), (3, 0, 1)])
async def test_rolling_update_stays_within_surge_and_availability(apiserver: ThreadedApiServer, client: ApiClient,
                                                                  kubectl: Any, replicas: int, surge: Any,
                                                                  unavailable: Any) -> None:
    def absolute(value: Any, round_up: bool) -> int:
        if isinstance(value, int):
            return value
        exact = int(value[:-1]) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)

    max_total = replicas + absolute(surge, True)
    min_available = replicas - absolute(unavailable, False)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}
    # Pods take a moment to become ready, so the rollout proceeds in visible steps.
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: PodScript(ready_delay=0.15))
    async with kubelet, controllers(apiserver.url), RolloutObserver(client, "web") as seen:
        await client.create(DEPLOYMENTS, deployment("web", replicas, strategy=strategy))
        await eventually(lambda: rolled_out(client, "web", "web:v1"), message="v1 rolled out")
        seen.armed = True
        seen.max_pods = seen.max_rs_total = 0
        status = asyncio.create_task(asyncio.to_thread(kubectl.run, "rollout", "status", "deployment/web",
                                                       "--timeout=60s", check=False))
        await client.patch(DEPLOYMENTS, "web", {"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "web:v2"}]}}}}, "default", patch_type="strategic")
        await eventually(lambda: rolled_out(client, "web", "web:v2"), timeout=60, message="v2 rolled out")
        result = await status
        assert result.returncode == 0, result.stderr
        assert 'deployment "web" successfully rolled out' in result.stdout

    assert seen.max_rs_total <= max_total, (seen.max_rs_total, max_total, seen.worst_rs)
    assert seen.max_pods <= max_total, (seen.max_pods, max_total)
    assert seen.min_available is not None and seen.min_available >= min_available, (seen.min_available,
                                                                                     min_available)
    # It really was a rollout: at some moment old and new pods ran side by side.
    assert any(images == {"web:v1", "web:v2"} for images in seen.images_seen)

    rss = await replicasets(client, "web")
    assert len(rss) == 2
    old, new = rss
    assert old["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert old["spec"]["replicas"] == 0 and new["spec"]["replicas"] == replicas
    for rs in rss:
        pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
        assert rs["metadata"]["name"] == f"web-{pod_hash}"
        assert rs["spec"]["selector"]["matchLabels"]["pod-template-hash"] == pod_hash
        assert rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == pod_hash
        assert rs["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] == str(replicas)
        assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    d = await client.get(DEPLOYMENTS, "web", "default")
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    conditions = {c["type"]: c for c in d["status"]["conditions"]}
    assert conditions["Available"]["status"] == "True"
    assert conditions["Available"]["reason"] == "MinimumReplicasAvailable"
    assert conditions["Progressing"]["status"] == "True"
    assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert conditions["Progressing"]["message"] == f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.'
    s = d["status"]
    assert (s["replicas"], s["updatedReplicas"], s["readyReplicas"], s["availableReplicas"]) == (replicas,) * 4
    assert not s.get("unavailableReplicas")


async def test_recreate_stops_every_old_pod_before_starting_new_ones(apiserver: ThreadedApiServer,
                                                                     client: ApiClient) -> None:
    # Old pods take a while to terminate, so "all old pods gone" is a real wait.
    kubelet = FakeKubelet(apiserver.url, terminate_delay=0.3)
    async with kubelet, controllers(apiserver.url), RolloutObserver(client, "db") as seen:
        await client.create(DEPLOYMENTS, deployment("db", 3, strategy={"type": "Recreate"}))
        await eventually(lambda: rolled_out(client, "db", "web:v1"), message="v1")
        seen.images_seen.clear()
        await client.patch(DEPLOYMENTS, "db", {"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "web:v2"}]}}}}, "default", patch_type="strategic")
        await eventually(lambda: rolled_out(client, "db", "web:v2"), message="v2")
    # Never did a v2 pod exist while a v1 pod (even a terminating one) was still there.
    assert {"web:v1", "web:v2"} not in seen.images_seen
    assert any(images == {"web:v2"} for images in seen.images_seen)
    d = await client.get(DEPLOYMENTS, "db", "default")
    assert {c["type"]: c["reason"] for c in d["status"]["conditions"]} == {
        "Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}


async def set_image(client: ApiClient, name: str, image: str) -> None:
    await client.patch(DEPLOYMENTS, name, {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": image}]}}}}, "default", patch_type="strategic")


async def test_rollout_undo_history_and_restart_with_kubectl(apiserver: ThreadedApiServer, client: ApiClient,
                                                             kubectl: Any) -> None:
    async with FakeKubelet(apiserver.url), controllers(apiserver.url):
        await client.create(DEPLOYMENTS, deployment("web", 2))
        await eventually(lambda: rolled_out(client, "web", "web:v1"))
        await client.patch(DEPLOYMENTS, "web", {"metadata": {"annotations": {
            "kubernetes.io/change-cause": "upgrade to v2"}}}, "default")
        await set_image(client, "web", "web:v2")
        await eventually(lambda: rolled_out(client, "web", "web:v2"))

        history = await asyncio.to_thread(kubectl, "rollout", "history", "deployment/web")
        lines = [line.split() for line in history.splitlines()[2:] if line.strip()]
        assert [line[0] for line in lines] == ["1", "2"], history
        assert "upgrade to v2" in history

        # kubectl undoes on the client side: it patches the previous ReplicaSet's template back in.
        out = await asyncio.to_thread(kubectl, "rollout", "undo", "deployment/web")
        assert "rolled back" in out
        await eventually(lambda: rolled_out(client, "web", "web:v1"), message="back on v1")
        rss = await replicasets(client, "web")
        by_image = {image_of(rs["spec"]["template"]): rs for rs in rss}
        assert len(rss) == 2  # the old ReplicaSet came back rather than a new one being made
        assert by_image["web:v1"]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
        assert by_image["web:v1"]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "1"
        d = await client.get(DEPLOYMENTS, "web", "default")
        assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
        history = await asyncio.to_thread(kubectl, "rollout", "history", "deployment/web")
        assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["2", "3"]

        await asyncio.to_thread(kubectl, "rollout", "undo", "deployment/web", "--to-revision=2")
        await eventually(lambda: rolled_out(client, "web", "web:v2"), message="forward to v2 again")

        # restart: a new template (restartedAt annotation), so new pods replace every old one.
        before = {p["metadata"]["uid"] for p in (await client.list(PODS, "default",
                                                                   label_selector={"app": "web"}))["items"]}
        await asyncio.to_thread(kubectl, "rollout", "restart", "deployment/web")
        d = await client.get(DEPLOYMENTS, "web", "default")
        assert "kubectl.kubernetes.io/restartedAt" in d["spec"]["template"]["metadata"]["annotations"]
        await eventually(lambda: rolled_out(client, "web", "web:v2"))

        async def all_replaced() -> bool:
            pods = [p for p in (await client.list(PODS, "default", label_selector={"app": "web"}))["items"]
                    if not p["metadata"].get("deletionTimestamp")]
            return len(pods) == 2 and not ({p["metadata"]["uid"] for p in pods} & before)

        await eventually(all_replaced, message="every pod replaced by the restart")
        await asyncio.to_thread(kubectl, "rollout", "status", "deployment/web", "--timeout=30s")


async def test_pause_holds_the_rollout_and_resume_releases_it(apiserver: ThreadedApiServer, client: ApiClient,
                                                              kubectl: Any) -> None:
    async with FakeKubelet(apiserver.url), controllers(apiserver.url):
        await client.create(DEPLOYMENTS, deployment("web", 2))
        await eventually(lambda: rolled_out(client, "web", "web:v1"))
        await asyncio.to_thread(kubectl, "rollout", "pause", "deployment/web")

        async def paused_condition() -> bool:
            d = await client.get(DEPLOYMENTS, "web", "default")
            cond = {c["type"]: c for c in d["status"].get("conditions") or []}.get("Progressing") or {}
            return cond.get("reason") == "DeploymentPaused" and cond.get("status") == "Unknown"

        await eventually(paused_condition, message="Progressing=Unknown DeploymentPaused")
        await set_image(client, "web", "web:v2")
        # A paused deployment still scales, but starts no new ReplicaSet.
        await asyncio.to_thread(kubectl, "scale", "deployment/web", "--replicas=3")
        await eventually(lambda: _scaled(client, 3), message="scaled while paused")
        assert len(await replicasets(client, "web")) == 1
        pods = (await client.list(PODS, "default", label_selector={"app": "web"}))["items"]
        assert {image_of(p) for p in pods} == {"web:v1"}

        await asyncio.to_thread(kubectl, "rollout", "resume", "deployment/web")
        await eventually(lambda: rolled_out(client, "web", "web:v2"), message="resumed rollout")
        assert len(await replicasets(client, "web")) == 2


async def _scaled(client: ApiClient, n: int) -> bool:
    d = await client.get(DEPLOYMENTS, "web", "default")
    s = d.get("status") or {}
    return s.get("availableReplicas") == n and s.get("observedGeneration") == d["metadata"]["generation"]


async def test_progress_deadline_exceeded(apiserver: ThreadedApiServer, client: ApiClient, kubectl: Any) -> None:
    # The new version never becomes ready.
    kubelet = FakeKubelet(apiserver.url, script=lambda pod: PodScript(ready=image_of(pod) != "web:bad"))
    async with kubelet, controllers(apiserver.url):
        await client.create(DEPLOYMENTS, deployment("web", 2, progressDeadlineSeconds=2))
        await eventually(lambda: rolled_out(client, "web", "web:v1"))
        await set_image(client, "web", "web:bad")

        async def timed_out() -> dict[str, Any] | None:
            d = await client.get(DEPLOYMENTS, "web", "default")
            cond = {c["type"]: c for c in d["status"].get("conditions") or []}.get("Progressing") or {}
            return cond if cond.get("reason") == "ProgressDeadlineExceeded" else None

        cond = await eventually(timed_out, message="ProgressDeadlineExceeded")
        assert cond["status"] == "False"
        assert "has timed out progressing" in cond["message"]
        result = await asyncio.to_thread(kubectl.run, "rollout", "status", "deployment/web", "--timeout=20s",
                                         check=False)
        assert result.returncode != 0
        assert "exceeded its progress deadline" in result.stderr
        # maxUnavailable kept the old version serving: one old pod went, the rest still run.
        d = await client.get(DEPLOYMENTS, "web", "default")
        assert d["status"]["availableReplicas"] >= 1
        assert {c["type"]: c["status"] for c in d["status"]["conditions"]}["Available"] == "True"


async def test_revision_history_limit_deletes_old_replicasets(apiserver: ThreadedApiServer,
                                                              client: ApiClient) -> None:
    async with FakeKubelet(apiserver.url), controllers(apiserver.url):
        await client.create(DEPLOYMENTS, deployment("web", 1, revisionHistoryLimit=1))
        for version in ("v1", "v2", "v3", "v4"):
            if version != "v1":
                await set_image(client, "web", f"web:{version}")
            await eventually(lambda version=version: rolled_out(client, "web", f"web:{version}"), message=version)

        async def pruned() -> bool:
            return len(await replicasets(client, "web")) == 2

        await eventually(pruned, message="only the current and one old ReplicaSet remain")
        revisions = [rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                     for rs in await replicasets(client, "web")]
        assert revisions == ["3", "4"]


async def test_min_ready_seconds_delays_availability(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    async with FakeKubelet(apiserver.url), controllers(apiserver.url):
        await client.create(DEPLOYMENTS, deployment("slow", 2, minReadySeconds=2))

        async def available() -> bool:
            d = await client.get(DEPLOYMENTS, "slow", "default")
            return (d.get("status") or {}).get("availableReplicas") == 2

        await eventually(available, message="available after minReadySeconds")
        seen_at = time.time()
        pods = (await client.list(PODS, "default", label_selector={"app": "slow"}))["items"]
        ready_since = max(parse_time(next(c["lastTransitionTime"] for c in p["status"]["conditions"]
                                          if c["type"] == "Ready")) or 0 for p in pods)
        # Available only once every pod had been ready for minReadySeconds (timestamps have 1 s resolution).
        assert seen_at >= ready_since + 2
        rs = (await replicasets(client, "slow"))[0]
        assert rs["spec"]["minReadySeconds"] == 2
