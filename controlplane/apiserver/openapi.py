"""OpenAPI v3 discovery: `/openapi/v3` and one document per group/version, built from the registry.

kubectl reads these before every write with validation on: when a resource's PATCH operation (tagged with
`x-kubernetes-group-version-kind`) declares the `fieldValidation` query parameter, kubectl leaves validation to the
server instead of downloading the whole v2 schema. The documents list every served path and operation; object
schemas are upstream's for built-in kinds (from `schemas.py`) and the CRD's own for custom resources, so
`kubectl explain` works for both.
"""

from __future__ import annotations

import hashlib
from typing import Any

from controlplane.apiserver import jsonutil, schemas
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
    """Upstream's definition name for built-ins; reversed-domain names for custom kinds, as upstream makes them."""
    builtin = schemas.definition_name(rt.group, rt.version, rt.kind)
    if builtin:
        return builtin
    reversed_group = ".".join(reversed(rt.group.split("."))) if rt.group else "core"
    return f"{reversed_group}.{rt.version}.{rt.kind}"


def _kind_schema(rt: ResourceType) -> dict[str, Any]:
    gvk = [{"group": rt.group, "version": rt.version, "kind": rt.kind}]
    custom = getattr(rt.strategy, "schema", None)
    if isinstance(custom, dict):
        schema = dict(custom)
        props = dict(schema.get("properties") or {})
        props.setdefault("apiVersion", {"type": "string", "description": "APIVersion defines the versioned schema "
                                        "of this representation of an object."})
        props.setdefault("kind", {"type": "string", "description": "Kind is a string value representing the REST "
                                  "resource this object represents."})
        props.setdefault("metadata", {"type": "object", "description": "Standard object's metadata."})
        schema["properties"] = props
    else:
        schema = {"type": "object", "description": f"{rt.kind} ({rt.api_version})",
                  "x-kubernetes-preserve-unknown-fields": True}
    schema["x-kubernetes-group-version-kind"] = gvk
    return schema


def group_version_document(registry: Registry, group: str, version: str) -> dict[str, Any] | None:
    resources = registry.in_group_version(group, version)
    if not resources:
        return None
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {}
    builtin: list[str] = []
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
        # Operations for verbs the kind does not serve (bindings: create only) are left out, as upstream does.
        served = {"list": "list", "post": "create", "deletecollection": "deletecollection", "get": "get",
                  "put": "update", "patch": "patch", "delete": "delete"}
        for path in (collection, item):
            for method in [m for m in paths[path] if m != "parameters"]:
                if served[paths[path][method]["x-kubernetes-action"]] not in rt.verbs:
                    del paths[path][method]
            if len(paths[path]) == 1:
                del paths[path]
        for sub in ("status", "scale"):
            if sub in rt.subresources:
                paths[f"{item}/{sub}"] = {
                    "get": _operation(rt, "get", f"read{sub.title()}", ["pretty"], False),
                    "put": _operation(rt, "put", f"replace{sub.title()}", list(_QUERY_PARAMS), True),
                    "parameters": _path_params(rt.namespaced, True),
                }
        if schemas.definition_name(rt.group, rt.version, rt.kind):
            builtin.append(_schema_name(rt))
        else:
            components[_schema_name(rt)] = _kind_schema(rt)
    components.update(schemas.component_schemas(builtin))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": components},
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
