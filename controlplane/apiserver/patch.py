"""The patch formats a PATCH request may carry: JSON merge patch, JSON patch and strategic merge patch.

JSON merge patch (RFC 7386) and JSON patch (RFC 6902, via `jsonpatch`) are generic. Strategic merge patch is
Kubernetes' own: lists of objects merge by a key (containers by name, ports by containerPort, ...) and directives
(`$patch`, `$retainKeys`, `$deleteFromPrimitiveList`, `$setElementOrder`) refine the merge. Its merge keys come from
the kind's upstream schema (`schemas.py`), falling back to a small table of the usual fields; custom resources use
merge patch, as upstream does.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import schemas
from controlplane.apiserver.errors import bad_request, unsupported_media_type
from controlplane.apiserver.jsonutil import copy_json

Schema = dict[str, Any] | None

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> merge key for lists of objects, from upstream's `patchMergeKey` tags. A field not listed here is
# replaced wholesale, as upstream does for lists without a merge key.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "taints": "key",
    "addresses": "type",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
    "readinessGates": "conditionType",
    "secrets": "name",
    "podCIDRs": "",
    "finalizers": "",  # a set of strings: merged, not replaced
}
# `ports` merges by containerPort in a container and by port in a Service (upstream tags both).
PORT_KEYS = ("containerPort", "port")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, patch: Any) -> Any:
    import jsonpatch  # on first use: JSON patches are rare, and the API server's start need not wait for it

    if not isinstance(patch, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        # in place: the caller passes a copy (jsonpatch would otherwise deep-copy the object once more)
        return jsonpatch.JsonPatch(patch).apply(target, in_place=True)
    except jsonpatch.JsonPatchConflict as exc:
        raise _unprocessable(str(exc)) from exc
    except jsonpatch.JsonPatchTestFailed as exc:
        raise _unprocessable(f"the test operation failed: {exc}") from exc
    except (jsonpatch.InvalidJsonPatch, jsonpatch.JsonPointerException, KeyError, TypeError, IndexError) as exc:
        raise _unprocessable(f"the server rejected our request due to an error in our request: {exc}") from exc


def _unprocessable(message: str):  # type: ignore[no-untyped-def]
    from controlplane.apiserver.errors import ApiError
    return ApiError(422, "Invalid", message)


def strategic_merge_patch(target: Any, patch: Any, schema: Schema = None) -> Any:
    """Strategic merge patch; with the kind's upstream schema the merge keys come from its patch metadata,
    without one from the MERGE_KEYS table."""
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch must be a JSON object")
    return _smp_map(target if isinstance(target, dict) else {}, patch, schema)


def _smp_map(target: dict[str, Any], patch: dict[str, Any], schema: Schema = None) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy_json(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    result = dict(target)
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if key.startswith("$setElementOrder/"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, dict):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = _smp_map(current if isinstance(current, dict) else {}, value,
                                       schemas.child(schema, key))
        elif isinstance(value, list):
            result[key] = _smp_list(key, current if isinstance(current, list) else [], value,
                                    schemas.child(schema, key) if schema is not None else None)
        else:
            result[key] = copy_json(value)
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [x for x in result[field] if x not in value]
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        for candidate in PORT_KEYS:
            if any(isinstance(i, dict) and candidate in i for i in items):
                return candidate
        return None
    return MERGE_KEYS.get(field)


def _smp_list(field: str, current: list[Any], patch: list[Any], schema: Schema = None) -> list[Any]:
    key = schemas.list_merge_key(schema) if schema is not None else _merge_key(field, current + patch)
    item_schema = schemas.items(schema) if schema is not None else None
    if key is None:
        if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
            return [copy_json(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
        return copy_json(patch)
    if key == "":  # a merged set of primitives
        merged = list(current)
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [copy_json(p) for p in patch if not (isinstance(p, dict) and "$patch" in p)]
    result = [copy_json(c) for c in current]
    index = {c.get(key): i for i, c in enumerate(result) if isinstance(c, dict)}
    removed: set[Any] = set()
    for item in patch:
        if not isinstance(item, dict):
            raise bad_request(f"strategic merge patch: list {field} with merge key {key} holds a non-object")
        ident = item.get(key)
        if item.get("$patch") == "delete":
            removed.add(ident)
            continue
        if ident in index:
            result[index[ident]] = _smp_map(result[index[ident]], item, item_schema)
        else:
            index[ident] = len(result)
            result.append(_smp_map({}, item, item_schema))
    return [r for r in result if not (isinstance(r, dict) and r.get(key) in removed)]


def apply_patch(content_type: str, target: dict[str, Any], patch: Any, custom: bool,
                schema: Schema = None) -> dict[str, Any]:
    """Apply a PATCH body of ``content_type`` to ``target`` (a copy is returned; the target is not changed)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == MERGE_PATCH:
        result = merge_patch(target, patch)
    elif media == JSON_PATCH:
        result = json_patch(copy_json(target), patch)
    elif media == STRATEGIC_MERGE_PATCH:
        if custom:
            raise unsupported_media_type(content_type)
        result = strategic_merge_patch(target, patch, schema)
    else:
        raise unsupported_media_type(content_type)
    if not isinstance(result, dict):
        raise bad_request("the patch did not produce an object")
    return result
