"""The metrics.k8s.io/v1beta1 API the HPA reads, through real kubectl (`kubectl top pods|nodes`) and raw requests:
discovery only while a metrics source is set, pods and nodes joined with the stored objects, label selectors,
404s for unknown objects."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from controlplane.apiserver.metrics_api import InMemoryMetricsSource
from controlplane.client import NODES, PODS, ApiClient, NotFound
from controlplane.testing import ThreadedApiServer


async def seed(client: ApiClient) -> None:
    for name, cpu in (("n1", "4"), ("n2", "2")):
        await client.create(NODES, {"metadata": {"name": name, "labels": {"pool": "a" if name == "n1" else "b"}}})
        node = await client.get(NODES, name)
        node["status"] = {"capacity": {"cpu": cpu, "memory": "8Gi"}, "allocatable": {"cpu": cpu, "memory": "8Gi"}}
        await client.update_status(NODES, node)
    for name, app in (("web-1", "web"), ("web-2", "web"), ("db-1", "db")):
        await client.create(PODS, {"metadata": {"name": name, "labels": {"app": app}}, "spec": {"containers": [
            {"name": "main", "image": "x"}, {"name": "sidecar", "image": "y"}]}}, "default")


async def test_kubectl_top_reads_the_metrics_api(apiserver: ThreadedApiServer, client: ApiClient,
                                                 kubectl: Any) -> None:
    await seed(client)
    # Without a source the API is absent, as without metrics-server.
    result = await asyncio.to_thread(kubectl.run, "top", "pods", check=False)
    assert result.returncode != 0 and "Metrics API not available" in result.stderr
    groups = orjson.loads((await client.raw("GET", "/apis")).content)
    assert "metrics.k8s.io" not in {g["name"] for g in groups["groups"]}

    source = InMemoryMetricsSource()
    assert apiserver.server is not None and apiserver.server.state is not None
    apiserver.server.state.metrics_source = source
    source.set_pod("default", "web-1", containers={"main": {"cpu": "250m", "memory": "64Mi"},
                                                   "sidecar": {"cpu": "10m", "memory": "16Mi"}})
    source.set_pod("default", "web-2", cpu="500m", memory="128Mi")
    source.set_pod("default", "db-1", cpu="1", memory="1Gi")
    source.set_pod("default", "ghost", cpu="1", memory="1Gi")  # no such pod: not reported
    source.set_node("n1", cpu="2", memory="2Gi")
    source.set_node("n2", cpu="500m", memory="4Gi")

    top = await asyncio.to_thread(kubectl, "top", "pods")
    rows = {line.split()[0]: line.split()[1:] for line in top.splitlines()[1:]}
    assert rows == {"db-1": ["1000m", "1024Mi"], "web-1": ["260m", "80Mi"], "web-2": ["500m", "128Mi"]}

    top = await asyncio.to_thread(kubectl, "top", "pods", "-l", "app=web", "--containers")
    rows_c = {(line.split()[0], line.split()[1]): line.split()[2:] for line in top.splitlines()[1:]}
    assert rows_c[("web-1", "main")] == ["250m", "64Mi"] and rows_c[("web-1", "sidecar")] == ["10m", "16Mi"]
    assert {pod for pod, _ in rows_c} == {"web-1", "web-2"}

    top = await asyncio.to_thread(kubectl, "top", "nodes")
    rows = {line.split()[0]: line.split()[1:] for line in top.splitlines()[1:]}
    assert rows["n1"] == ["2000m", "50%", "2048Mi", "25%"]
    assert rows["n2"] == ["500m", "25%", "4096Mi", "50%"]

    top = await asyncio.to_thread(kubectl, "top", "nodes", "-l", "pool=b")
    assert [line.split()[0] for line in top.splitlines()[1:]] == ["n2"]


async def test_raw_metrics_api(apiserver: ThreadedApiServer, client: ApiClient) -> None:
    await seed(client)
    source = InMemoryMetricsSource()
    assert apiserver.server is not None and apiserver.server.state is not None
    apiserver.server.state.metrics_source = source
    source.set_pod("default", "web-1", cpu="250m", memory="64Mi")
    source.set_node("n1", cpu="2", memory="2Gi")

    async def get(path: str) -> dict[str, Any]:
        return orjson.loads((await client.raw("GET", path)).content)  # type: ignore[no-any-return]

    resources = await get("/apis/metrics.k8s.io/v1beta1")
    assert {r["name"]: r["kind"] for r in resources["resources"]} == {"nodes": "NodeMetrics", "pods": "PodMetrics"}
    groups = await get("/apis")
    assert "metrics.k8s.io" in {g["name"] for g in groups["groups"]}
    pod = await get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/web-1")
    assert pod["kind"] == "PodMetrics" and pod["metadata"]["labels"] == {"app": "web"}
    assert pod["containers"] == [{"name": "main", "usage": {"cpu": "250m", "memory": "64Mi"}}]
    assert pod["window"] == "10s" and pod["timestamp"].endswith("Z")
    everywhere = await get("/apis/metrics.k8s.io/v1beta1/pods")
    assert [p["metadata"]["name"] for p in everywhere["items"]] == ["web-1"]
    node = await get("/apis/metrics.k8s.io/v1beta1/nodes/n1")
    assert node["usage"] == {"cpu": "2", "memory": "2Gi"}
    for missing in ("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/db-1",
                    "/apis/metrics.k8s.io/v1beta1/nodes/n2"):
        try:
            await client.raw("GET", missing)
        except NotFound as exc:
            assert exc.reason == "NotFound"
        else:
            raise AssertionError(f"{missing} should be 404")
