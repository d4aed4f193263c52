"""The Endpoints controller through a real API server: addresses follow pod readiness, named ports resolve per pod."""

from __future__ import annotations

from typing import Any

from controlplane.client import ENDPOINTS, PODS, SERVICES


def _addresses(ep: dict[str, Any], field: str) -> dict[str, tuple[str, str | None, tuple[int, ...]]]:
    """pod name -> (ip, node, ports) for one address list across subsets."""
    out = {}
    for subset in ep.get("subsets") or []:
        ports = tuple(sorted(p["port"] for p in subset.get("ports") or []))
        for a in subset.get(field) or []:
            out[a["targetRef"]["name"]] = (a["ip"], a.get("nodeName"), ports)
    return out


async def test_endpoints_track_pod_readiness_and_named_ports(client, kube, start_manager, wait_for):
    await start_manager("endpoint")
    await client.create(SERVICES, {"metadata": {"name": "web", "labels": {"tier": "front"}},
                                   "spec": {"selector": {"app": "web"},
                                            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
                        "default")
    await kube.pod("web-1", labels={"app": "web"}, node="node-a",
                   ports=[{"name": "http", "containerPort": 8080}])
    await kube.pod("web-2", labels={"app": "web"}, node="node-b",
                   ports=[{"name": "http", "containerPort": 9090}])
    await kube.pod("other", labels={"app": "other"}, node="node-a", ports=[{"name": "http", "containerPort": 8080}])
    await kube.pod_status("web-1", ip="10.244.1.5", ready=True)
    await kube.pod_status("web-2", ip="10.244.2.7", ready=False)
    await kube.pod_status("other", ip="10.244.1.9", ready=True)

    async def endpoints_with(ready: dict[str, Any], not_ready: dict[str, Any]) -> dict[str, Any] | None:
        ep = await client.get(ENDPOINTS, "web", "default")
        if _addresses(ep, "addresses") == ready and _addresses(ep, "notReadyAddresses") == not_ready:
            return ep
        return None

    ep = await wait_for(lambda: endpoints_with({"web-1": ("10.244.1.5", "node-a", (8080,))},
                                               {"web-2": ("10.244.2.7", "node-b", (9090,))}))
    assert ep["metadata"]["labels"] == {"tier": "front"}
    subset = next(s for s in ep["subsets"] if s.get("addresses"))
    assert subset["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert subset["addresses"][0]["targetRef"]["kind"] == "Pod"
    assert subset["addresses"][0]["targetRef"]["uid"]

    # Readiness moves a pod between the lists.
    await kube.pod_status("web-2", ip="10.244.2.7", ready=True)
    await kube.pod_status("web-1", ip="10.244.1.5", ready=False)
    await wait_for(lambda: endpoints_with({"web-2": ("10.244.2.7", "node-b", (9090,))},
                                          {"web-1": ("10.244.1.5", "node-a", (8080,))}))

    # A relabelled pod leaves; a deleted one too; a terminal one is not listed.
    await client.patch(PODS, "web-2", {"metadata": {"labels": {"app": "gone"}}}, "default")
    await wait_for(lambda: endpoints_with({}, {"web-1": ("10.244.1.5", "node-a", (8080,))}))
    await kube.pod_status("web-1", ip="10.244.1.5", ready=False, phase="Failed")
    await wait_for(lambda: endpoints_with({}, {}))

    # The Endpoints go with their Service.
    await client.delete(SERVICES, "web", "default")
    await wait_for(lambda: kube.gone(ENDPOINTS, "web", "default"))


async def test_endpoints_are_restored_and_selectorless_services_left_alone(client, kube, start_manager, wait_for):
    await start_manager("endpoint")
    await client.create(SERVICES, {"metadata": {"name": "db"},
                                   "spec": {"selector": {"app": "db"}, "ports": [{"port": 5432}]}}, "default")
    await client.create(SERVICES, {"metadata": {"name": "external"}, "spec": {"ports": [{"port": 443}]}}, "default")
    manual = await client.create(ENDPOINTS, {"metadata": {"name": "external"},
                                             "subsets": [{"addresses": [{"ip": "192.0.2.10"}],
                                                          "ports": [{"port": 443}]}]}, "default")
    await kube.pod("db-0", labels={"app": "db"}, node="node-a")
    await kube.pod_status("db-0", ip="10.244.0.3")

    async def db_ready() -> bool:
        ep = await client.get(ENDPOINTS, "db", "default")
        return _addresses(ep, "addresses") == {"db-0": ("10.244.0.3", "node-a", (5432,))}

    await wait_for(db_ready)
    await client.delete(ENDPOINTS, "db", "default")
    await wait_for(db_ready, message="deleted Endpoints are recreated")
    assert (await client.get(ENDPOINTS, "external", "default"))["subsets"] == manual["subsets"]
