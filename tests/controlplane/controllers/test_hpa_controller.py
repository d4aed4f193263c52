"""The HorizontalPodAutoscaler controller against a real API server, a Deployment (with its ReplicaSet), the fake
kubelet and simulated CPU/memory usage served through metrics.k8s.io: scaling up and down on utilization with a
short stabilization window, AverageValue targets with rate-limiting policies and a disabled direction, and the
conditions for missing metrics and a target at zero."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from workload_harness import FakeKubelet, RunningControllers, eventually

from controlplane.apiserver.metrics_api import InMemoryMetricsSource
from controlplane.client import DEPLOYMENTS, HORIZONTALPODAUTOSCALERS, PODS, ApiClient
from controlplane.controllers.deployment_controller import DeploymentController
from controlplane.controllers.hpa_controller import HorizontalPodAutoscalerController
from controlplane.controllers.replicaset_controller import ReplicaSetController
from controlplane.scheduler.quantity import milli_value, value
from controlplane.testing import ThreadedApiServer


def deployment(name: str, replicas: int = 1) -> dict[str, Any]:
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                         "name": "main", "image": "web:v1",
                         "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}}


def hpa(name: str, metrics: list[dict[str, Any]], min_replicas: int = 1, max_replicas: int = 5,
        behavior: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                 "minReplicas": min_replicas, "maxReplicas": max_replicas, "metrics": metrics}}
    if behavior is not None:
        body["spec"]["behavior"] = behavior
    return body


def cpu_utilization(percent: int) -> list[dict[str, Any]]:
    return [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization",
                                                                        "averageUtilization": percent}}}]


class Load:
    """Simulated load spread evenly over an app's running pods, published as metrics (a metrics-server stand-in)."""

    def __init__(self, client: ApiClient, source: InMemoryMetricsSource, app: str, cpu: str = "0",
                 memory: str = "0") -> None:
        self.client, self.source, self.app = client, source, app
        self.cpu_milli, self.memory_bytes = milli_value(cpu), value(memory)

    def set(self, cpu: str | None = None, memory: str | None = None) -> None:
        if cpu is not None:
            self.cpu_milli = milli_value(cpu)
        if memory is not None:
            self.memory_bytes = value(memory)

    async def publish(self) -> None:
        pods = [p for p in (await self.client.list(PODS, "default", label_selector={"app": self.app}))["items"]
                if (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
        live = {p["metadata"]["name"] for p in pods}
        for (ns, name) in list(self.source.pods):
            if name not in live:
                self.source.remove_pod(ns, name)
        for pod in pods:
            n = len(pods)
            self.source.set_pod("default", pod["metadata"]["name"], cpu=f"{self.cpu_milli // n}m",
                                memory=str(self.memory_bytes // n))

    async def run(self) -> None:
        while True:
            await self.publish()
            await asyncio.sleep(0.05)  # a sampling interval, like metrics-server's scrape period


@contextlib.asynccontextmanager
async def scaled_app(apiserver: ThreadedApiServer, client: ApiClient, name: str, replicas: int = 1,
                     publish: bool = True, **load: str) -> AsyncIterator[Load]:
    source = InMemoryMetricsSource()
    assert apiserver.server is not None and apiserver.server.state is not None
    apiserver.server.state.metrics_source = source
    autoscaler = HorizontalPodAutoscalerController(sync_period=0.2, cpu_initialization_period=0)
    async with FakeKubelet(apiserver.url), RunningControllers(apiserver.url, DeploymentController(),
                                                              ReplicaSetController(), autoscaler):
        await client.create(DEPLOYMENTS, deployment(name, replicas))
        generator = Load(client, source, name, **load)
        task = asyncio.create_task(generator.run() if publish else asyncio.Event().wait())
        try:
            yield generator
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def replicas(client: ApiClient, name: str) -> int:
    return int((await client.get(DEPLOYMENTS, name, "default"))["spec"]["replicas"])


async def hpa_status(client: ApiClient, name: str) -> dict[str, Any]:
    return (await client.get(HORIZONTALPODAUTOSCALERS, name, "default")).get("status") or {}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status.get("conditions") or []}


async def test_scales_up_and_down_on_cpu_utilization(apiserver: ThreadedApiServer, client: ApiClient,
                                                    kubectl: Any) -> None:
    async with scaled_app(apiserver, client, "web", cpu="300m") as load:
        await client.create(HORIZONTALPODAUTOSCALERS, hpa("web", cpu_utilization(50), behavior={
            "scaleDown": {"stabilizationWindowSeconds": 1}}))
        # 300m on one pod requesting 100m is 300% of a 50% target: 6 wanted, capped at maxReplicas.
        await eventually(lambda: _is(replicas(client, "web"), 5), message="scaled up to the maximum")

        async def limited() -> dict[str, Any] | None:
            s = await hpa_status(client, "web")
            c = conditions(s)
            ok = (s.get("currentReplicas") == 5 and s.get("desiredReplicas") == 5
                  and c.get("ScalingLimited", {}).get("reason") == "TooManyReplicas"
                  and c["ScalingLimited"]["status"] == "True")
            return s if ok else None

        status = await eventually(limited, message="held at maxReplicas")
        assert conditions(status)["ScalingActive"]["reason"] == "ValidMetricFound"
        assert conditions(status)["AbleToScale"]["status"] == "True"
        assert status["lastScaleTime"]

        # Load falls to 100m: 20% per pod, 2 replicas wanted — but only after the 1 s stabilization window.
        load.set(cpu="100m")
        seen_stabilized = False
        while await replicas(client, "web") == 5:
            s = await hpa_status(client, "web")
            seen_stabilized |= conditions(s).get("AbleToScale", {}).get("reason") == "ScaleDownStabilized"
            await asyncio.sleep(0.02)
        assert seen_stabilized, "scale-down was not held back by the stabilization window"
        await eventually(lambda: _is(replicas(client, "web"), 2), message="scaled down to 2")

        async def settled() -> dict[str, Any] | None:
            s = await hpa_status(client, "web")
            metric = (s.get("currentMetrics") or [{}])[0].get("resource", {}).get("current", {})
            return s if s.get("currentReplicas") == 2 and metric.get("averageUtilization") == 50 else None

        status = await eventually(settled, message="2 replicas at 50%")
        assert status["currentMetrics"][0] == {"type": "Resource", "resource": {
            "name": "cpu", "current": {"averageUtilization": 50, "averageValue": "50m"}}}
        assert conditions(status)["ScalingLimited"]["status"] == "False"
        table = await asyncio.to_thread(kubectl, "get", "hpa", "web")
        assert "cpu: 50%/50%" in table and "Deployment/web" in table


async def _is(value_: Any, expected: Any) -> bool:
    return (await value_) == expected


async def test_average_value_with_policies_and_disabled_scale_down(apiserver: ThreadedApiServer,
                                                                  client: ApiClient) -> None:
    memory = [{"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue",
                                                                             "averageValue": "100Mi"}}}]
    behavior = {"scaleUp": {"policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]},
                "scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}}
    async with scaled_app(apiserver, client, "cache", memory="400Mi") as load:
        await client.create(HORIZONTALPODAUTOSCALERS, hpa("cache", memory, behavior=behavior))

        async def limited_by(reason: str, current: int) -> dict[str, Any] | None:
            s = await hpa_status(client, "cache")
            c = conditions(s).get("ScalingLimited") or {}
            return s if c.get("reason") == reason and c.get("status") == "True" and s.get(
                "currentReplicas") == current else None

        # 400Mi on average wants 4 replicas; the Pods policy allows one more per 60 s.
        status = await eventually(lambda: limited_by("ScaleUpLimit", 2), message="rate-limited at 2")
        assert status["desiredReplicas"] == 2 and await replicas(client, "cache") == 2
        assert status["currentMetrics"][0]["resource"]["current"]["averageValue"] == str(200 * 1024 * 1024)

        # Scale-down is disabled: a tiny load changes nothing.
        load.set(memory="10Mi")
        await eventually(lambda: limited_by("ScaleDownLimit", 2), message="scale-down disabled")
        assert await replicas(client, "cache") == 2


async def test_missing_metrics_and_disabled_target(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    async with scaled_app(apiserver, client, "quiet", replicas=2, publish=False):  # no metrics at all
        await eventually(lambda: _available(client, "quiet", 2), message="pods running")
        await client.create(HORIZONTALPODAUTOSCALERS, hpa("quiet", cpu_utilization(50)))

        async def failing() -> dict[str, Any] | None:
            c = conditions(await hpa_status(client, "quiet")).get("ScalingActive") or {}
            return c if c.get("status") == "False" and c.get("reason") == "FailedGetResourceMetric" else None

        cond = await eventually(failing, message="ScalingActive=False")
        assert "did not receive metrics" in cond["message"]
        assert await replicas(client, "quiet") == 2

        # A target scaled to zero by hand switches autoscaling off.
        await client.patch(DEPLOYMENTS, "quiet", {"spec": {"replicas": 0}}, "default")

        async def disabled() -> bool:
            c = conditions(await hpa_status(client, "quiet")).get("ScalingActive") or {}
            return c.get("reason") == "ScalingDisabled" and c.get("status") == "False"

        await eventually(disabled, message="ScalingDisabled")
        assert await replicas(client, "quiet") == 0


async def _available(client: ApiClient, name: str, n: int) -> bool:
    return ((await client.get(DEPLOYMENTS, name, "default")).get("status") or {}).get("availableReplicas") == n


async def test_replicas_outside_the_range_are_clamped(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    async with scaled_app(apiserver, client, "big", replicas=7, cpu="100m"):
        await client.create(HORIZONTALPODAUTOSCALERS, hpa("big", cpu_utilization(50), max_replicas=4))
        await eventually(lambda: _is(replicas(client, "big"), 4), message="clamped to maxReplicas")


async def test_kubectl_autoscale_creates_an_hpa(apiserver: ThreadedApiServer, client: ApiClient,
                                                kubectl: Any) -> None:
    await client.create(DEPLOYMENTS, deployment("auto"))
    await asyncio.to_thread(kubectl, "autoscale", "deployment", "auto", "--min=2", "--max=6", "--cpu-percent=70")
    created = await client.get(HORIZONTALPODAUTOSCALERS, "auto", "default")
    assert created["spec"]["maxReplicas"] == 6 and created["spec"]["minReplicas"] == 2
    assert created["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 70
    # The same object read through autoscaling/v1, which kubectl wrote it with.
    v1 = (await client.raw("GET", "/apis/autoscaling/v1/namespaces/default/horizontalpodautoscalers/auto")).json()
    assert v1["apiVersion"] == "autoscaling/v1" and v1["spec"]["targetCPUUtilizationPercentage"] == 70
