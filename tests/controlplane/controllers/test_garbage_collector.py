"""The garbage collector through a real API server: background, foreground and orphan cascading deletion.

Owners and dependents are ConfigMaps, Secrets and a custom resource (a CRD served by the same API server), so the
collector must find resources through discovery rather than a fixed list.
"""

from __future__ import annotations

from typing import Any

from controlplane.client import CONFIGMAPS, SECRETS, ApiClient, Resource

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False)
WIDGETS = Resource("example.com", "v1", "widgets", "Widget", True)


def owner_ref(owner: dict[str, Any], block: bool = False) -> dict[str, Any]:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    if block:
        ref["blockOwnerDeletion"] = True
    return ref


async def configmap(client: ApiClient, name: str, *owners: dict[str, Any], block: bool = False,
                    finalizers: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if owners:
        meta["ownerReferences"] = [owner_ref(o, block) for o in owners]
    if finalizers:
        meta["finalizers"] = finalizers
    obj = await client.create(CONFIGMAPS, {"metadata": meta}, "default")
    return {"apiVersion": "v1", "kind": "ConfigMap", **obj}


async def secret(client: ApiClient, name: str, owner: dict[str, Any]) -> dict[str, Any]:
    obj = await client.create(SECRETS, {"metadata": {"name": name, "ownerReferences": [owner_ref(owner)]}},
                              "default")
    return {"apiVersion": "v1", "kind": "Secret", **obj}


async def names(client: ApiClient) -> set[str]:
    found = set()
    for r in (CONFIGMAPS, SECRETS):
        found |= {o["metadata"]["name"] for o in (await client.list(r, "default"))["items"]}
    return found - {"kube-root-ca.crt"}


async def test_background_deletion_removes_dependents_down_the_chain(client, start_manager, wait_for):
    await start_manager("garbagecollector")
    root = await configmap(client, "root")
    other = await configmap(client, "other")
    child = await configmap(client, "child", root)
    await secret(client, "child-secret", root)
    await configmap(client, "grandchild", child)
    await configmap(client, "two-owners", root, other)
    await configmap(client, "unrelated")

    await client.delete(CONFIGMAPS, "root", "default")  # background, the default
    await wait_for(lambda: _names_are(client, {"other", "two-owners", "unrelated"}))

    # The dependent with a surviving owner keeps only the live reference.
    async def dangling_ref_removed() -> bool:
        obj = await client.get(CONFIGMAPS, "two-owners", "default")
        return [r["name"] for r in obj["metadata"]["ownerReferences"]] == ["other"]

    await wait_for(dangling_ref_removed)


async def _names_are(client: ApiClient, expected: set[str]) -> bool:
    return await names(client) == expected


async def test_dependents_of_an_owner_that_never_existed_are_deleted(client, start_manager, wait_for):
    await start_manager("garbagecollector")
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ghost",
                                                                  "uid": "00000000-0000-0000-0000-000000000001"}}
    await configmap(client, "orphaned-at-birth", ghost)
    await configmap(client, "keeper")
    await wait_for(lambda: _names_are(client, {"keeper"}))


async def test_foreground_deletion_waits_for_blocking_dependents(client, start_manager, wait_for):
    await start_manager("garbagecollector")
    owner = await configmap(client, "owner")
    await configmap(client, "blocker", owner, block=True, finalizers=["example.com/hold"])
    await configmap(client, "plain", owner)

    await client.delete(CONFIGMAPS, "owner", "default", propagation_policy="Foreground")

    async def owner_waits() -> dict[str, Any] | None:
        obj = await client.get(CONFIGMAPS, "owner", "default")
        blocker = await client.get(CONFIGMAPS, "blocker", "default")
        if obj["metadata"].get("deletionTimestamp") and blocker["metadata"].get("deletionTimestamp") and \
                await names(client) == {"owner", "blocker"}:
            return obj
        return None

    # The dependents are deleted; the blocking one is held by its own finalizer, so the owner waits for it.
    obj = await wait_for(owner_waits)
    assert obj["metadata"]["finalizers"] == ["foregroundDeletion"]

    await client.patch(CONFIGMAPS, "blocker", {"metadata": {"finalizers": None}}, "default")
    await wait_for(lambda: _names_are(client, set()))


async def test_foreground_deletion_without_dependents_completes(client, start_manager, wait_for):
    await start_manager("garbagecollector")
    await configmap(client, "lonely")
    await client.delete(CONFIGMAPS, "lonely", "default", propagation_policy="Foreground")
    await wait_for(lambda: _names_are(client, set()))


async def test_orphan_deletion_keeps_dependents_without_the_reference(client, start_manager, wait_for):
    await start_manager("garbagecollector")
    owner = await configmap(client, "owner")
    second = await configmap(client, "second")
    await configmap(client, "kept", owner)
    await secret(client, "kept-secret", owner)
    await configmap(client, "shared", owner, second)

    await client.delete(CONFIGMAPS, "owner", "default", propagation_policy="Orphan")
    await wait_for(lambda: _names_are(client, {"second", "kept", "kept-secret", "shared"}))
    assert not (await client.get(CONFIGMAPS, "kept", "default"))["metadata"].get("ownerReferences")
    assert not (await client.get(SECRETS, "kept-secret", "default"))["metadata"].get("ownerReferences")
    shared = await client.get(CONFIGMAPS, "shared", "default")
    assert [r["name"] for r in shared["metadata"]["ownerReferences"]] == ["second"]


async def _widget_crd(client: ApiClient, wait_for) -> None:
    await client.create(CRDS, {
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}})

    async def served() -> bool:
        return bool((await client.list(WIDGETS, "default"))["metadata"])

    await wait_for(served)


async def test_custom_resource_chain_created_after_start(client, start_manager, wait_for):
    # The CRD appears after the collector started: periodic discovery must pick it up.
    await start_manager("garbagecollector", options={"gc_resync_period": 0.5})
    await _widget_crd(client, wait_for)
    widget = await client.create(WIDGETS, {"apiVersion": "example.com/v1", "kind": "Widget",
                                           "metadata": {"name": "w1"}, "spec": {"size": 3}}, "default")
    part = await client.create(WIDGETS, {"apiVersion": "example.com/v1", "kind": "Widget",
                                         "metadata": {"name": "w1-part", "ownerReferences": [owner_ref(widget)]}},
                               "default")
    await configmap(client, "w1-config", part)
    await secret(client, "w1-secret", widget)

    await client.delete(WIDGETS, "w1", "default", propagation_policy="Foreground")

    async def all_gone() -> bool:
        return not (await client.list(WIDGETS, "default"))["items"] and await names(client) == set()

    await wait_for(all_gone, message="the widget, its part widget, and their ConfigMap and Secret are deleted")
