"""CustomResourceDefinitions: the apiextensions.k8s.io/v1 kind, and serving the resources it defines.

As in upstream's apiextensions-apiserver, a CRD is stored like any object and a controller inside the API server
turns it into served resources: one ResourceType per served version (all versions share one storage key, conversion
`None` only rewrites apiVersion), a Strategy that defaults, prunes and validates against the version's structural
schema, status and scale subresources, and printer columns. The CRD's status reports NamesAccepted and Established.
Deleting a CRD deletes its objects first (the `customresourcecleanup.apiextensions.k8s.io` finalizer).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from typing import TYPE_CHECKING, Any


from controlplane.apiserver import jsonutil
from controlplane.apiserver.errors import ApiError, Cause
from controlplane.apiserver.kinds.base import Column, Strategy, Table, get_path, immutable
from controlplane.apiserver.registry import ResourceType, ScaleSpec
from controlplane.apiserver.resource_store import DeleteOptions, WriteContext
from controlplane.apiserver.selectors import FieldSelector, LabelSelector
from controlplane.storage import ExpiredError

if TYPE_CHECKING:
    import jsonschema

    from controlplane.apiserver.app import ServerState

log = logging.getLogger(__name__)

CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


# ---------------------------------------------------------------------------------------------------- the CRD kind


class CustomResourceDefinitionStrategy(Strategy):
    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"conditions": [], "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": []}

    def prepare_for_create(self, obj: dict[str, Any]) -> None:
        finalizers = obj["metadata"].setdefault("finalizers", [])
        if CLEANUP_FINALIZER not in finalizers:
            finalizers.append(CLEANUP_FINALIZER)

    def defaults(self, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        names = spec.get("names") or {}
        if isinstance(names, dict) and names.get("kind"):
            names.setdefault("singular", names["kind"].lower())
            names.setdefault("listKind", names["kind"] + "List")
        conversion = spec.setdefault("conversion", {"strategy": "None"})
        if isinstance(conversion, dict):
            conversion.setdefault("strategy", "None")

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [Cause("FieldValueRequired", "Required value", "spec")]
        causes: list[Cause] = []
        group = spec.get("group")
        names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
        plural, kind = names.get("plural"), names.get("kind")
        if not group or "." not in str(group):
            causes.append(Cause("FieldValueInvalid", f'Invalid value: "{group}": should be a domain with at least '
                                "one dot", "spec.group"))
        if not plural:
            causes.append(Cause("FieldValueRequired", "Required value", "spec.names.plural"))
        if not kind:
            causes.append(Cause("FieldValueRequired", "Required value", "spec.names.kind"))
        if plural and group and obj["metadata"].get("name") != f"{plural}.{group}":
            causes.append(Cause("FieldValueInvalid", f'Invalid value: "{obj["metadata"].get("name")}": must be '
                                f"spec.names.plural+\".\"+spec.group", "metadata.name"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(Cause("FieldValueNotSupported", f'Unsupported value: "{spec.get("scope")}": supported '
                                'values: "Cluster", "Namespaced"', "spec.scope"))
        versions = spec.get("versions")
        if not isinstance(versions, list) or not versions:
            causes.append(Cause("FieldValueRequired", "Required value: must have exactly one version marked as "
                                "storage version", "spec.versions"))
            return causes
        storage = [v for v in versions if isinstance(v, dict) and v.get("storage")]
        if len(storage) != 1:
            causes.append(Cause("FieldValueInvalid", "Invalid value: must have exactly one version marked as "
                                "storage version", "spec.versions"))
        for i, v in enumerate(versions):
            if not isinstance(v, dict) or not v.get("name"):
                causes.append(Cause("FieldValueRequired", "Required value", f"spec.versions[{i}].name"))
                continue
            schema = get_path(v, "schema.openAPIV3Schema")
            if schema is None:
                causes.append(Cause("FieldValueRequired", "Required value: schemas are required",
                                    f"spec.versions[{i}].schema.openAPIV3Schema"))
            elif not isinstance(schema, dict):
                causes.append(Cause("FieldValueInvalid", "must be an object",
                                    f"spec.versions[{i}].schema.openAPIV3Schema"))
        return causes

    def validate_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        causes = self.validate(new) + immutable(new, old, "spec.group")
        if get_path(old, "status.acceptedNames.plural"):
            causes += immutable(new, old, "spec.names.plural") + immutable(new, old, "spec.scope")
        return causes


def crd_resource() -> ResourceType:
    """The CRD kind itself; stored under /registry/apiextensions.k8s.io/customresourcedefinitions/ as upstream."""
    return ResourceType(
        "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False,
        CustomResourceDefinitionStrategy(table=Table([Column("Created At", type="date")],
                                                     lambda crd: [get_path(crd, "metadata.creationTimestamp")])),
        short_names=("crd", "crds"), categories=("api-extensions",), subresources=("status",),
        storage_prefix="apiextensions.k8s.io/customresourcedefinitions")


CRD_PREFIX = crd_resource().key_prefix()


# ---------------------------------------------------------------------------------------------------- schemas


def to_json_schema(schema: Any) -> Any:
    """OpenAPI v3 structural schema → JSON Schema (draft 4) that `jsonschema` checks."""
    if isinstance(schema, list):
        return [to_json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: to_json_schema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value)
        elif key.startswith("x-kubernetes-") or key in ("default", "nullable", "format", "description", "example",
                                                         "externalDocs"):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def apply_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """Fill `default`s from the schema into missing fields, recursively, as upstream's structural defaulting."""
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name not in obj and isinstance(sub, dict) and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj and isinstance(sub, dict):
                obj[name] = apply_defaults(obj[name], sub)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in obj:
                if name not in props:
                    obj[name] = apply_defaults(obj[name], extra)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in obj]
    return obj


def prune(obj: Any, schema: dict[str, Any], root: bool = False) -> Any:
    """Drop fields the schema does not declare, unless it preserves unknown fields (structural pruning)."""
    props = schema.get("properties") or {}
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        if isinstance(obj, dict) and props:
            return {k: prune(v, props[k]) if k in props else v for k, v in obj.items()}
        return obj
    if isinstance(obj, dict):
        extra = schema.get("additionalProperties")
        out = {}
        for key, value in obj.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                out[key] = value
            elif key in props:
                out[key] = prune(value, props[key])
            elif isinstance(extra, dict):
                out[key] = prune(value, extra)
            elif extra is True:
                out[key] = value
        return out
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in obj]
    return obj


def _error_path(error: jsonschema.ValidationError) -> str:
    parts = []
    for p in error.absolute_path:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    return ".".join(parts)


def _error_cause(error: jsonschema.ValidationError) -> Cause:
    path = _error_path(error)
    value = error.instance
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        field = f"{path}.{missing}" if path else missing
        return Cause("FieldValueRequired", "Required value", field)
    if error.validator == "type":
        return Cause("FieldValueTypeInvalid", f'Invalid value: "{_short(value)}": {path} in body must be of type '
                     f"{error.validator_value}: \"{_short(value)}\"", path)
    if error.validator == "enum":
        allowed = ", ".join(f'"{v}"' for v in error.validator_value)
        return Cause("FieldValueNotSupported", f'Unsupported value: "{_short(value)}": supported values: {allowed}',
                     path)
    return Cause("FieldValueInvalid", f'Invalid value: {jsonutil.dumps(value).decode()[:80]}: {error.message}', path)


def _short(value: Any) -> str:
    return value if isinstance(value, str) else type(value).__name__ if isinstance(value, (dict, list)) else str(value)


# ---------------------------------------------------------------------------------------------------- custom kinds


class CustomResourceStrategy(Strategy):
    def __init__(self, schema: dict[str, Any] | None, table: Table | None, has_status: bool) -> None:
        super().__init__(track_generation=True, table=table)
        self.schema = schema or {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        import jsonschema  # imported when the first CRD is served: it costs ~0.3 s of start-up otherwise

        self.validator = jsonschema.Draft4Validator(to_json_schema(self.schema))
        self.has_status = has_status

    def defaults(self, obj: dict[str, Any]) -> None:
        apply_defaults(obj, self.schema)
        pruned = prune(obj, self.schema, root=True)
        for key in list(obj):
            if key not in pruned:
                del obj[key]
        obj.update(pruned)

    def initial_status(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def validate(self, obj: dict[str, Any]) -> list[Cause]:
        body = {k: v for k, v in obj.items() if k != "metadata"}
        return [_error_cause(e) for e in sorted(self.validator.iter_errors(body), key=lambda e: list(e.path))]

    def validate_status_update(self, new: dict[str, Any], old: dict[str, Any]) -> list[Cause]:
        return self.validate_update(new, old)  # the CRD's schema covers the status too


def _printer_table(columns: list[dict[str, Any]]) -> Table | None:
    if not columns:
        return None
    cols = [Column(c.get("name", ""), type=c.get("type", "string"), format=c.get("format", ""),
                   description=c.get("description", ""), priority=int(c.get("priority", 0))) for c in columns]
    paths = [str(c.get("jsonPath", "")).lstrip(".") for c in columns]

    def cells(obj: dict[str, Any]) -> list[Any]:
        return [get_path(obj, p) if p else None for p in paths]

    return Table(cols, cells)


def custom_resources(crd: dict[str, Any]) -> list[ResourceType]:
    spec = crd["spec"]
    names = spec["names"]
    group = spec["group"]
    out = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        has_status = "status" in subresources
        scale = None
        if "scale" in subresources:
            s = subresources["scale"] or {}
            scale = ScaleSpec(spec_replicas=str(s.get("specReplicasPath", ".spec.replicas")).lstrip("."),
                              status_replicas=str(s.get("statusReplicasPath", ".status.replicas")).lstrip("."),
                              label_selector=str(s.get("labelSelectorPath", "")).lstrip(".") or None)
        strategy = CustomResourceStrategy(get_path(version, "schema.openAPIV3Schema"),
                                          _printer_table(version.get("additionalPrinterColumns") or []), has_status)
        out.append(ResourceType(
            group, version["name"], names["kind"], names["plural"], spec.get("scope") == "Namespaced", strategy,
            singular=names.get("singular", ""), short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            subresources=("status",) if has_status else (), scale=scale,
            storage_prefix=f"{group}/{names['plural']}"))
    return out


# ---------------------------------------------------------------------------------------------------- controller


class CrdController:
    """Keeps the served custom resources in step with the stored CRDs."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.served: dict[str, list[ResourceType]] = {}  # CRD name -> its served resource types
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self.state.store.list(CRD_PREFIX)
        for kv in listing.items:
            await self._sync(jsonutil.loads(kv.value), kv.revision)
        self._task = asyncio.create_task(self._watch(listing.revision), name="crd controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self, revision: int) -> None:
        while True:
            try:
                async for ev in self.state.store.watch(CRD_PREFIX, revision):
                    revision = ev.revision
                    crd = jsonutil.loads(ev.value)
                    if ev.type == "DELETED":
                        self._unserve(crd["metadata"]["name"])
                    else:
                        await self._sync(crd, ev.revision)
                return
            except asyncio.CancelledError:
                raise
            except ExpiredError:
                listing = await self.state.store.list(CRD_PREFIX)
                revision = listing.revision
                for kv in listing.items:
                    await self._sync(jsonutil.loads(kv.value), kv.revision)
            except Exception:  # noqa: BLE001 - keep serving; retry the watch
                log.exception("CRD watch failed; retrying")
                await asyncio.sleep(0.5)

    def _unserve(self, name: str) -> None:
        for rt in self.served.pop(name, []):
            self.state.remove_resource(rt)

    async def _sync(self, crd: dict[str, Any], revision: int) -> None:
        name = crd["metadata"]["name"]
        try:
            resources = custom_resources(crd)
        except Exception as exc:  # noqa: BLE001 - a malformed stored CRD (bad shape, bad schema) must not stop the rest
            log.warning("CRD %s cannot be served: %s", name, exc)
            return
        if crd["metadata"].get("deletionTimestamp"):
            await self._cleanup(crd, resources)
            return
        old = {(rt.group, rt.version, rt.plural) for rt in self.served.get(name, [])}
        new = {(rt.group, rt.version, rt.plural) for rt in resources}
        for rt in self.served.get(name, []):
            if (rt.group, rt.version, rt.plural) not in new:
                self.state.remove_resource(rt)
        for rt in resources:
            self.state.custom_groups.add(rt.group)
            self.state.add_resource(rt, replace=(rt.group, rt.version, rt.plural) in old)
        self.served[name] = resources
        await self._set_established(crd)

    async def _set_established(self, crd: dict[str, Any]) -> None:
        status = crd.get("status") or {}
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in status.get("conditions") or []):
            return
        names = crd["spec"]["names"]
        now = jsonutil.now_rfc3339()
        storage = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
        new_status = {
            "acceptedNames": {k: names[k] for k in ("plural", "singular", "kind", "listKind", "shortNames",
                                                     "categories") if k in names},
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
            "storedVersions": sorted(set(status.get("storedVersions") or []) | set(storage)),
        }
        store = self.state.store_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")

        def change(obj: dict[str, Any]) -> None:
            obj["status"] = new_status

        try:
            await store.mutate(None, crd["metadata"]["name"], change, WriteContext(None), subresource="status")
        except ApiError as exc:
            if exc.code != 404:
                raise

    async def _cleanup(self, crd: dict[str, Any], resources: list[ResourceType]) -> None:
        """Delete every object of the CRD, then drop the cleanup finalizer so the CRD itself goes."""
        for rt in resources:
            key = (rt.group, rt.version, rt.plural)
            store = self.state.stores.get(key)
            if store is None:
                continue
            listing = await store.list(None, LabelSelector(), FieldSelector())
            for item in listing["items"]:
                meta = item["metadata"]
                try:
                    await store.delete(meta.get("namespace"), meta["name"], DeleteOptions(), WriteContext(
                        meta.get("namespace")))
                except ApiError as exc:
                    if exc.code != 404:
                        raise
            break  # all versions share one storage prefix
        remaining = 0
        if resources:
            store = self.state.stores.get((resources[0].group, resources[0].version, resources[0].plural))
            if store is not None:
                remaining = len((await store.list(None, LabelSelector(), FieldSelector()))["items"])
        if remaining:
            return  # objects with finalizers of their own; the next CRD event or relist retries
        self._unserve(crd["metadata"]["name"])
        crds = self.state.store_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")

        def drop(obj: dict[str, Any]) -> None:
            obj["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or []
                                             if f != CLEANUP_FINALIZER]

        try:
            await crds.mutate(None, crd["metadata"]["name"], drop, WriteContext(None))
        except ApiError as exc:
            if exc.code != 404:
                raise
