"""The ResourceQuota controller through a real API server: status.used follows what the namespace holds."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from controlplane.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    PERSISTENTVOLUMECLAIMS,
    PODS,
    PRIORITYCLASSES,
    RESOURCEQUOTAS,
    SECRETS,
    SERVICES,
    ApiClient,
)
from controlplane.controllers.resourcequota_controller import format_quantity

HARD = {
    "pods": "10", "count/pods": "10", "requests.cpu": "4", "cpu": "4", "requests.memory": "4Gi", "memory": "4Gi",
    "limits.cpu": "8", "limits.memory": "8Gi", "services": "5", "services.nodeports": "5",
    "services.loadbalancers": "2", "configmaps": "10", "secrets": "10", "persistentvolumeclaims": "5",
    "requests.storage": "100Gi", "gold.storageclass.storage.k8s.io/requests.storage": "50Gi",
    "gold.storageclass.storage.k8s.io/persistentvolumeclaims": "2", "count/deployments.apps": "3",
}


async def used(client: ApiClient, name: str = "compute", ns: str = "q") -> dict[str, str]:
    return ((await client.get(RESOURCEQUOTAS, name, ns)).get("status") or {}).get("used") or {}


def _resources(cpu: str, memory: str, cpu_limit: str | None = None, mem_limit: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {"requests": {"cpu": cpu, "memory": memory}}
    if cpu_limit:
        res["limits"] = {"cpu": cpu_limit, "memory": mem_limit}
    return res


async def test_quota_usage_tracks_the_namespace(client, kube, start_manager, wait_for):
    await start_manager("resourcequota")
    await client.create(NAMESPACES, {"metadata": {"name": "q"}})  # "default" holds the kubernetes Service
    await client.create(RESOURCEQUOTAS, {"metadata": {"name": "compute"}, "spec": {"hard": HARD}}, "q")

    async def usage_is(expected: dict[str, str]) -> bool:
        current = await used(client)
        # On failure the deadline message shows what differs.
        assert current == expected, {k: (current.get(k), v) for k, v in expected.items() if current.get(k) != v}
        return True

    empty = {k: "0" for k in HARD}
    await wait_for(lambda: usage_is(empty), message="a quota over an empty namespace reports zero for everything")
    quota = await client.get(RESOURCEQUOTAS, "compute", "q")
    assert quota["status"]["hard"] == HARD

    await kube.pod("a", "q", resources=_resources("500m", "256Mi", "1", "512Mi"))
    await kube.pod("b", "q", resources=_resources("250m", "128Mi"))
    await kube.pod("done", "q", resources=_resources("2", "1Gi"))
    await kube.pod_status("done", "q", phase="Succeeded", ready=False)  # terminal pods use nothing
    await client.create(SERVICES, {"metadata": {"name": "np"}, "spec": {"type": "NodePort", "ports": [
        {"name": "a", "port": 80}, {"name": "b", "port": 81}]}}, "q")
    await client.create(SERVICES, {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer",
                                                                       "ports": [{"port": 443}]}}, "q")
    await client.create(CONFIGMAPS, {"metadata": {"name": "c1"}}, "q")
    await client.create(SECRETS, {"metadata": {"name": "s1"}}, "q")
    for name, size, cls in (("gold-1", "10Gi", "gold"), ("plain", "500Mi", "standard")):
        await client.create(PERSISTENTVOLUMECLAIMS, {"metadata": {"name": name}, "spec": {
            "accessModes": ["ReadWriteOnce"], "storageClassName": cls,
            "resources": {"requests": {"storage": size}}}}, "q")
    await client.create(DEPLOYMENTS, {"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": {"app": "w"}},
        "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}}},
        "q")

    expected = {**empty, "pods": "2", "count/pods": "2", "requests.cpu": "750m", "cpu": "750m",
                "requests.memory": "384Mi", "memory": "384Mi", "limits.cpu": "1", "limits.memory": "512Mi",
                "services": "2", "services.nodeports": "3", "services.loadbalancers": "1", "configmaps": "1",
                "secrets": "1", "persistentvolumeclaims": "2", "requests.storage": "10740Mi",
                "gold.storageclass.storage.k8s.io/requests.storage": "10Gi",
                "gold.storageclass.storage.k8s.io/persistentvolumeclaims": "1", "count/deployments.apps": "1"}
    await wait_for(lambda: usage_is(expected))

    # Deleting frees the usage again.
    await client.delete(PODS, "a", "q")
    await client.delete(SERVICES, "lb", "q")
    await wait_for(lambda: usage_is({**expected, "pods": "1", "count/pods": "1", "requests.cpu": "250m",
                                     "cpu": "250m", "requests.memory": "128Mi", "memory": "128Mi",
                                     "limits.cpu": "0", "limits.memory": "0", "services": "1",
                                     "services.nodeports": "2", "services.loadbalancers": "0"}))


async def test_scopes_select_pods(client, kube, start_manager, wait_for):
    await start_manager("resourcequota")
    await client.create(NAMESPACES, {"metadata": {"name": "q"}})
    await client.create(RESOURCEQUOTAS, {"metadata": {"name": "best-effort"},
                                         "spec": {"hard": {"pods": "5"}, "scopes": ["BestEffort"]}}, "q")
    await client.create(RESOURCEQUOTAS, {"metadata": {"name": "high"}, "spec": {
        "hard": {"pods": "5"}, "scopeSelector": {
        "matchExpressions": [{"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}}, "q")
    await kube.pod("plain", "q")
    await kube.pod("sized", "q", resources=_resources("100m", "64Mi"))
    # Priority admission refuses a pod naming a class that does not exist, as upstream's does.
    await client.create(PRIORITYCLASSES, {"metadata": {"name": "high"}, "value": 1000})
    await kube.pod("important", "q", resources=_resources("100m", "64Mi"), priorityClassName="high")

    async def counts() -> tuple[str | None, str | None]:
        return (await used(client, "best-effort")).get("pods"), (await used(client, "high")).get("pods")

    async def counts_are(expected: tuple[str, str]) -> bool:
        return await counts() == expected

    await wait_for(lambda: counts_are(("1", "1")))


def test_quantities_are_formatted_canonically():
    assert format_quantity(Fraction(3, 4), False) == "750m"
    assert format_quantity(Fraction(2), False) == "2"
    assert format_quantity(Fraction(384 << 20), True) == "384Mi"
    assert format_quantity(Fraction(3 << 30), True) == "3Gi"
    assert format_quantity(Fraction(1500), False) == "1500"
    assert format_quantity(Fraction(2000), False) == "2k"
    assert format_quantity(Fraction(0), True) == "0"
