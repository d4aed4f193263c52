"""The EndpointSlice controller through a real API server: labels, ownership, conditions, ports, placeholder."""

from __future__ import annotations

from typing import Any

from controlplane.client import ENDPOINTSLICES, NODES, PODS, SERVICES

SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"


async def _slices(client, service: str) -> list[dict[str, Any]]:
    listing = await client.list(ENDPOINTSLICES, "default", label_selector=f"{SERVICE_NAME}={service}")
    return listing["items"]


def _endpoints(slices: list[dict[str, Any]]) -> dict[str, tuple[str, dict[str, bool], str | None]]:
    return {e["targetRef"]["name"]: (e["addresses"][0], e["conditions"], e.get("nodeName"))
            for s in slices for e in s.get("endpoints") or []}


async def test_slices_follow_pods(client, kube, start_manager, wait_for):
    await client.create(NODES, {"metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "z1"}}})
    await start_manager("endpointslice")
    svc = await client.create(SERVICES, {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}, "default")

    # No pods yet: one placeholder slice, owned by the Service and labelled for it.
    placeholder = (await wait_for(lambda: _slices(client, "web")))[0]
    assert placeholder["metadata"]["labels"][MANAGED_BY] == "endpointslice-controller.k8s.io"
    assert placeholder["addressType"] == "IPv4"
    assert not placeholder.get("endpoints")
    owner = placeholder["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "Service", "web", svc["metadata"]["uid"], True)

    await kube.pod("web-1", labels={"app": "web"}, node="node-a", ports=[{"name": "http", "containerPort": 8080}])
    await kube.pod("web-2", labels={"app": "web"}, node="node-a", ports=[{"name": "http", "containerPort": 8080}])
    await kube.pod_status("web-1", ip="10.244.0.11", ready=True)
    await kube.pod_status("web-2", ip="10.244.0.12", ready=False)

    async def endpoints_are(expected: dict[str, Any]) -> list[dict[str, Any]] | None:
        slices = await _slices(client, "web")
        return slices if _endpoints(slices) == expected else None

    slices = await wait_for(lambda: endpoints_are({
        "web-1": ("10.244.0.11", {"ready": True, "serving": True, "terminating": False}, "node-a"),
        "web-2": ("10.244.0.12", {"ready": False, "serving": False, "terminating": False}, "node-a"),
    }))
    assert len(slices) == 1, "the placeholder is reused, not joined by a second slice"
    assert slices[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert all(e["zone"] == "z1" for e in slices[0]["endpoints"])

    # A pod being deleted (gracefully: it has a node) stays listed as terminating, not ready, while it shuts down.
    await client.delete(PODS, "web-1", "default", grace_period_seconds=30)
    await wait_for(lambda: endpoints_are({
        "web-1": ("10.244.0.11", {"ready": False, "serving": True, "terminating": True}, "node-a"),
        "web-2": ("10.244.0.12", {"ready": False, "serving": False, "terminating": False}, "node-a"),
    }))

    # Deleting the Service removes its slices.
    await client.delete(SERVICES, "web", "default")
    await wait_for(lambda: _no_slices(client, "web"))


async def _no_slices(client, service: str) -> bool:
    return not await _slices(client, service)


async def test_pods_with_different_port_numbers_get_separate_slices(client, kube, start_manager, wait_for):
    await start_manager("endpointslice", options={"max_endpoints_per_slice": 2})
    await client.create(SERVICES, {"metadata": {"name": "api"}, "spec": {
        "selector": {"app": "api"}, "ports": [{"name": "grpc", "port": 443, "targetPort": "grpc"}]}}, "default")
    for i, port in enumerate([7000, 7000, 7000, 7001]):
        await kube.pod(f"api-{i}", labels={"app": "api"}, node="node-a",
                       ports=[{"name": "grpc", "containerPort": port}])
        await kube.pod_status(f"api-{i}", ip=f"10.244.3.{i + 1}")

    async def layout() -> list[tuple[int, int]] | None:
        slices = await _slices(client, "api")
        shape = sorted((s["ports"][0]["port"], len(s["endpoints"])) for s in slices if s.get("endpoints"))
        return shape if shape == [(7000, 1), (7000, 2), (7001, 1)] and len(slices) == 3 else None

    await wait_for(layout, message="3 pods on port 7000 in slices of at most 2, one pod on 7001 alone")
