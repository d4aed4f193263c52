"""OpenAPI v3 discovery: `/openapi/v3` and one document per group/version, built from the registry.

kubectl reads these before every write with validation on: when a resource's PATCH operation (tagged with
`x-kubernetes-group-version-kind`) declares the `fieldValidation` query parameter, kubectl leaves validation to the
server instead of downloading the whole v2 schema. The documents list every served path and operation; object
schemas are open (`x-kubernetes-preserve-unknown-fields`) until the schema-driven OpenAPI replaces them.
"""

from __future__ import annotations

import hashlib
from typing import Any

from controlplane.apiserver import jsonutil
from controlplane.apiserver.registry import Registry, ResourceType

_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _params(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "in": "query", "schema": {"type": "string", "uniqueItems": True}} for n in names]


def _path_params(namespaced: bool, named: bool) -> list[dict[str, Any]]:
    params = []
    if named:
        params.append({"name": "name", "in": "path", "required": True, "schema": {"type": "string"}})
    if namespaced:
        params.append({"name": "namespace", "in": "path", "required": True, "schema": {"type": "string"}})
    return params


def _operation(rt: ResourceType, action: str, verb: str, params: list[str], body: bool) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_schema_name(rt)}"}
    op: dict[str, Any] = {
        "operationId": f"{verb}{rt.kind}",
        "parameters": _params(*params),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
    }
    if body:
        op["requestBody"] = {"content": {"*/*": {"schema": ref}}, "required": True}
    return op


def _schema_name(rt: ResourceType) -> str:
    group = rt.group or "core"
    prefix = "io.k8s.api." + group.split(".")[0] if "." not in group or group.endswith(".k8s.io") else group
    return f"{prefix}.{rt.version}.{rt.kind}"


def group_version_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    base = "/" + _gv_path(group, version)
    for rt in resources:
        collection = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{base}/{rt.plural}"
        paths[collection] = {
            "get": _operation(rt, "list", "list", ["labelSelector", "fieldSelector", "limit", "continue",
                                                    "resourceVersion", "watch"], False),
            "post": _operation(rt, "post", "create", list(_QUERY_PARAMS), True),
            "delete": _operation(rt, "deletecollection", "deletecollection", ["labelSelector", "fieldSelector"],
                                 False),
            "parameters": _path_params(rt.namespaced, False),
        }
        item = f"{collection}/{{name}}"
        paths[item] = {
            "get": _operation(rt, "get", "read", ["pretty"], False),
            "put": _operation(rt, "put", "replace", list(_QUERY_PARAMS), True),
            "patch": _operation(rt, "patch", "patch", [*_QUERY_PARAMS, "force"], True),
            "delete": _operation(rt, "delete", "delete", ["gracePeriodSeconds", "propagationPolicy", "dryRun"],
                                 False),
            "parameters": _path_params(rt.namespaced, True),
        }
        for sub in ("status", "scale"):
            if sub in rt.subresources:
                paths[f"{item}/{sub}"] = {
                    "get": _operation(rt, "get", f"read{sub.title()}", ["pretty"], False),
                    "put": _operation(rt, "put", f"replace{sub.title()}", list(_QUERY_PARAMS), True),
                    "parameters": _path_params(rt.namespaced, True),
                }
        schemas[_schema_name(rt)] = {
            "type": "object",
            "description": f"{rt.kind} ({rt.api_version})",
            "x-kubernetes-preserve-unknown-fields": True,
            "x-kubernetes-group-version-kind": [{"group": rt.group, "version": rt.version, "kind": rt.kind}],
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def root_document(registry: Registry, docs: dict[str, bytes]) -> dict[str, Any]:
    paths = {}
    for group, versions in registry.group_versions().items():
        for version in versions:
            key = _gv_path(group, version)
            body = docs.get(key)
            digest = hashlib.sha512(body or key.encode()).hexdigest()[:32].upper()
            paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={digest}"}
    return {"paths": paths}


class OpenApiCache:
    """Serialised documents, rebuilt when the registry changes (a CRD is added or removed)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._docs: dict[str, bytes] | None = None
        registry.on_change(self.invalidate)

    def invalidate(self) -> None:
        self._docs = None

    def _build(self) -> dict[str, bytes]:
        docs = {}
        for group, versions in self.registry.group_versions().items():
            for version in versions:
                doc = group_version_document(self.registry, group, version)
                if doc is not None:
                    docs[_gv_path(group, version)] = jsonutil.dumps(doc)
        return docs

    def document(self, path: str) -> bytes | None:
        if self._docs is None:
            self._docs = self._build()
        return self._docs.get(path)

    def root(self) -> bytes:
        if self._docs is None:
            self._docs = self._build()
        return jsonutil.dumps(root_document(self.registry, self._docs))
