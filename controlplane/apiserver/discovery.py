"""API discovery documents (/api, /api/v1, /apis, /apis/<group>, /apis/<group>/<version>) built from the registry.

kubectl reads these to map kinds and short names to resources (`kubectl get po`, `kubectl api-resources`), so
every served resource and subresource appears here with its verbs, short names and categories.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver.registry import Registry, ResourceType

SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
    "binding": ["create"],
    "eviction": ["create"],
    "log": ["get"],
    "exec": ["create", "get"],
    "attach": ["create", "get"],
    "portforward": ["create", "get"],
    "proxy": ["create", "delete", "get", "patch", "update"],
    "finalize": ["update"],
    "token": ["create"],
    "ephemeralcontainers": ["get", "patch", "update"],
    "resize": ["get", "patch", "update"],
}
SUBRESOURCE_KIND = {"scale": ("autoscaling", "v1", "Scale"), "binding": ("", "v1", "Binding"),
                    "eviction": ("policy", "v1", "Eviction"), "log": ("", "v1", "Pod"),
                    "token": ("authentication.k8s.io", "v1", "TokenRequest")}


def _resource_entries(rt: ResourceType) -> list[dict[str, Any]]:
    main: dict[str, Any] = {
        "name": rt.plural, "singularName": rt.singular, "namespaced": rt.namespaced, "kind": rt.kind,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        main["shortNames"] = list(rt.short_names)
    if rt.categories:
        main["categories"] = list(rt.categories)
    entries = [main]
    for sub in rt.subresources:
        entry: dict[str, Any] = {"name": f"{rt.plural}/{sub}", "singularName": "", "namespaced": rt.namespaced,
                                 "kind": rt.kind, "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])}
        if sub in SUBRESOURCE_KIND:
            group, version, kind = SUBRESOURCE_KIND[sub]
            entry["kind"] = kind
            if group:
                entry["group"], entry["version"] = group, version
        entries.append(entry)
    return entries


def resource_list(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": [e for rt in resources for e in _resource_entries(rt)]}


def api_versions(server_address: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def _group(name: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": vs, "preferredVersion": vs[0]}


def group_list(registry: Registry) -> dict[str, Any]:
    groups = [_group(g, vs) for g, vs in registry.group_versions().items() if g]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group(registry: Registry, name: str) -> dict[str, Any] | None:
    versions = registry.group_versions().get(name)
    if not versions or not name:
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(name, versions)}


# ------------------------------------------------------------------------------------------ aggregated discovery
# kubectl ≥1.26 asks for everything in two requests (/api and /apis) with
#   Accept: application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList
# and falls back to the per-group-version documents above when the answer is plain JSON.

AGGREGATED_VERSIONS = ("v2", "v2beta1")


def aggregated_version(accept: str) -> str | None:
    """The apidiscovery.k8s.io version the client asks for first, if it asks for aggregated discovery at all."""
    for part in accept.split(","):
        params = {p.split("=", 1)[0].strip(): p.split("=", 1)[1].strip() for p in part.split(";")[1:] if "=" in p}
        if (params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList"
                and params.get("v") in AGGREGATED_VERSIONS):
            return params["v"]
    return None


def _aggregated_resource(rt: ResourceType) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": rt.plural,
        "responseKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
        "scope": "Namespaced" if rt.namespaced else "Cluster",
        "singularResource": rt.singular,
        "verbs": list(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    subs = []
    for sub in rt.subresources:
        group, version, kind = SUBRESOURCE_KIND.get(sub, (rt.group, rt.version, rt.kind))
        subs.append({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind},
                     "verbs": SUBRESOURCE_VERBS.get(sub, ["get"])})
    if subs:
        entry["subresources"] = subs
    return entry


def aggregated(registry: Registry, legacy: bool, version: str) -> dict[str, Any]:
    items = []
    for group, versions in registry.group_versions().items():
        if (group == "") != legacy:
            continue
        items.append({
            "metadata": {"name": group, "creationTimestamp": None},
            "versions": [{"version": v, "freshness": "Current",
                          "resources": [_aggregated_resource(rt) for rt in registry.in_group_version(group, v)]}
                         for v in versions],
        })
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}", "metadata": {},
            "items": items}


def aggregated_media_type(version: str) -> str:
    return f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
