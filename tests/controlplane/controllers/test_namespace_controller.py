"""The namespace controller through a real API server: deleting a namespace deletes its content, then the namespace."""

from __future__ import annotations

from controlplane.client import CONFIGMAPS, DEPLOYMENTS, NAMESPACES, PODS, SECRETS, SERVICES, Forbidden, Resource

WIDGETS = Resource("example.com", "v1", "widgets", "Widget", True)
CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)


async def _content(client, ns: str) -> dict[str, list[str]]:
    out = {}
    for r in (CONFIGMAPS, SECRETS, SERVICES, PODS, DEPLOYMENTS):
        out[r.plural] = [o["metadata"]["name"] for o in (await client.list(r, ns))["items"]]
    return out


def _conditions(ns) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (ns.get("status") or {}).get("conditions") or []}


async def test_namespace_deletion_removes_content_then_namespace(client, kube, start_manager, wait_for):
    await start_manager("namespace")
    await client.create(CRDS, {"metadata": {"name": "widgets.example.com"}, "spec": {
        "group": "example.com", "scope": "Namespaced", "names": {"plural": "widgets", "kind": "Widget"},
        "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})
    await wait_for(lambda: client.list(WIDGETS, "default"), message="the custom resource is served")
    await client.create(NAMESPACES, {"metadata": {"name": "team-a"}})
    await client.create(NAMESPACES, {"metadata": {"name": "team-b"}})
    for ns in ("team-a", "team-b"):
        await client.create(CONFIGMAPS, {"metadata": {"name": "settings"}, "data": {"k": "v"}}, ns)
        await client.create(SECRETS, {"metadata": {"name": "token"}, "stringData": {"t": "x"}}, ns)
        await client.create(SERVICES, {"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}, ns)
        await kube.pod("unscheduled", ns)
        await client.create(DEPLOYMENTS, {"metadata": {"name": "app"}, "spec": {
            "selector": {"matchLabels": {"app": "x"}},
            "template": {"metadata": {"labels": {"app": "x"}},
                         "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}, ns)
        await client.create(WIDGETS, {"apiVersion": "example.com/v1", "kind": "Widget",
                                      "metadata": {"name": "gadget"}}, ns)

    await client.delete(NAMESPACES, "team-a")
    ns = await client.get(NAMESPACES, "team-a")
    assert ns["status"]["phase"] == "Terminating"

    await wait_for(lambda: kube.gone(NAMESPACES, "team-a"), message="the namespace is finalized and removed")
    assert await _content(client, "team-a") == {r: [] for r in ("configmaps", "secrets", "services", "pods",
                                                                "deployments")}
    assert (await client.list(WIDGETS, "team-a"))["items"] == [], "custom resources are found through discovery"
    assert [w["metadata"]["name"] for w in (await client.list(WIDGETS, "team-b"))["items"]] == ["gadget"]
    # Other namespaces are untouched.
    assert await _content(client, "team-b") == {"configmaps": ["settings"], "secrets": ["token"],
                                                "services": ["web"], "pods": ["unscheduled"],
                                                "deployments": ["app"]}


async def test_content_with_finalizers_holds_the_namespace(client, kube, start_manager, wait_for):
    await start_manager("namespace")
    await client.create(NAMESPACES, {"metadata": {"name": "held"}})
    await client.create(CONFIGMAPS, {"metadata": {"name": "precious", "finalizers": ["example.com/keep"]}}, "held")
    await client.delete(NAMESPACES, "held")

    async def reports_finalizer():
        ns = await client.get(NAMESPACES, "held")
        conds = _conditions(ns)
        if conds.get("NamespaceFinalizersRemaining") == ("True", "SomeFinalizersRemain"):
            return ns
        return None

    ns = await wait_for(reports_finalizer)
    conds = _conditions(ns)
    assert conds["NamespaceContentRemaining"] == ("True", "SomeResourcesRemain")
    assert conds["NamespaceDeletionContentFailure"] == ("False", "ContentDeleted")
    message = next(c["message"] for c in ns["status"]["conditions"] if c["type"] == "NamespaceFinalizersRemaining")
    assert "example.com/keep in 1 resource instances" in message
    assert ns["spec"]["finalizers"] == ["kubernetes"]
    cm = await client.get(CONFIGMAPS, "precious", "held")
    assert cm["metadata"].get("deletionTimestamp")
    try:
        await client.create(CONFIGMAPS, {"metadata": {"name": "late"}}, "held")
        raise AssertionError("creating in a terminating namespace must be refused")
    except Forbidden:
        pass

    # The finalizer's owner finishes: the namespace goes.
    await client.patch(CONFIGMAPS, "precious", {"metadata": {"finalizers": None}}, "held")
    await wait_for(lambda: kube.gone(NAMESPACES, "held"))
