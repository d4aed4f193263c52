"""The generic resource store: create, get, list, update, patch, delete and watch for any kind, over a Store.

This is ccmkit's genericregistry.Store. It owns the object-level rules every kind shares (system metadata,
generateName, generation, resourceVersion preconditions, status vs spec, finalizers and deletionTimestamp, dry run)
and calls the kind's Strategy at the points where kinds differ. HTTP concerns stay in the handlers.
"""

from __future__ import annotations

import base64
import functools
import datetime as _dt
import os
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.apiserver import errors, jsonutil, schemas
from controlplane.apiserver.allocators import ServiceAllocator
from controlplane.apiserver.cacher import Cacher, Transform, Watcher, feed_from_store
from controlplane.apiserver.errors import ApiError, Cause
from controlplane.apiserver.fieldmanager import record_update
from controlplane.apiserver.kinds.base import Strategy
from controlplane.apiserver.registry import ResourceType
from controlplane.apiserver.selectors import FieldSelector, LabelSelector
from controlplane.apiserver.validation import validate_metadata
from controlplane.storage import (
    ConflictError,
    ExpiredError,
    GuardedCreate,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    Store,
    guaranteed_update,
)

SYSTEM_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink")
GENERATE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # upstream's: no vowels, no look-alike digits


@dataclass
class WriteContext:
    namespace: str | None
    dry_run: bool = False
    field_manager: str | None = None
    allocator: ServiceAllocator | None = None
    applying: bool = False  # a server-side apply computed managedFields itself
    store: Store | None = None  # for admission lookups of other objects (PriorityClasses), read-only
    field_validation: str = "Warn"  # Ignore | Warn | Strict, for fields the kind's schema does not declare
    warnings: list[str] = field(default_factory=list)  # sent back as `Warning: 299 - "..."` headers


@dataclass
class DeleteOptions:
    grace_period_seconds: int | None = None
    propagation_policy: str | None = None
    precondition_uid: str | None = None
    precondition_rv: str | None = None
    dry_run: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any] | None, query: dict[str, str]) -> DeleteOptions:
        body = body or {}
        mistyped = schemas.type_errors(body, schemas.definition("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions"))
        if mistyped:
            raise errors.bad_request("DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions: "
                                     + "; ".join(mistyped))
        pre = body.get("preconditions") or {}
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        policy = body.get("propagationPolicy") or query.get("propagationPolicy")
        orphan = body.get("orphanDependents", query.get("orphanDependents"))
        if policy is None and orphan is not None:
            policy = "Orphan" if str(orphan).lower() == "true" else "Background"
        if policy not in (None, "Orphan", "Foreground", "Background"):
            raise errors.ApiError(422, "Invalid", f'DeleteOptions.meta.k8s.io "" is invalid: propagationPolicy: '
                                  f'Unsupported value: "{policy}": supported values: "Foreground", "Background", '
                                  '"Orphan"', causes=[Cause("FieldValueNotSupported", "Unsupported value",
                                                            "propagationPolicy")])
        dry = body.get("dryRun") or ([query["dryRun"]] if query.get("dryRun") else [])
        try:
            grace_int = int(grace) if grace is not None else None
        except (TypeError, ValueError):
            raise errors.bad_request(f"invalid gracePeriodSeconds: {grace!r}") from None
        return cls(grace_int, policy, pre.get("uid"), pre.get("resourceVersion"), "All" in dry)


class _DeleteInstead(Exception):
    """Raised inside an update that removed the last finalizer of an object being deleted."""

    def __init__(self, kv: KeyValue, obj: dict[str, Any]) -> None:
        self.kv = kv
        self.obj = obj


def _now() -> str:
    return jsonutil.now_rfc3339()


_UID_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}
_uid_pool = b""
_uid_at = 0


def _new_uid() -> str:
    """A random (version 4) UUID, as str(uuid.uuid4()), from a pool of os.urandom bytes: one getrandom() per 256
    UIDs instead of one per create, and a quarter of uuid4's formatting cost. os.urandom releases the GIL, and
    under load the sqlite writer thread takes it there: a profile at 16 connections showed creates waiting ~30 us
    in uuid4 for a call that takes 1 us alone."""
    global _uid_pool, _uid_at
    at = _uid_at
    if at >= len(_uid_pool):
        _uid_pool, at = os.urandom(4096), 0
    _uid_at = at + 16
    h = _uid_pool[at:at + 16].hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_UID_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


def _forget_uid_pool() -> None:
    global _uid_pool, _uid_at
    _uid_pool, _uid_at = b"", 0


os.register_at_fork(after_in_child=_forget_uid_pool)  # a forked child must never hand out its parent's UIDs


def _strip_rv(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("resourceVersion", None)
    return obj


def _without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


# ObjectMeta fields tagged omitempty upstream, with their empty value: Go serialises an empty map or list as nothing,
# so a label map emptied by a patch reads back absent, never as {}.
_OMIT_EMPTY_METADATA: dict[str, Any] = {"labels": {}, "annotations": {}, "finalizers": [], "ownerReferences": [],
                                        "managedFields": []}


def _omit_empty_metadata(meta: dict[str, Any]) -> None:
    for name, empty in _OMIT_EMPTY_METADATA.items():
        if name in meta and (meta[name] is None or meta[name] == empty):
            del meta[name]


def _spec_part(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ResourceStore:
    def __init__(self, rt: ResourceType, store: Store, namespaces: NamespaceChecker,
                 allocator: ServiceAllocator | None = None, watch_window: int = 2048) -> None:
        self.rt = rt
        self.store = store
        self.strategy = rt.strategy
        self.namespaces = namespaces
        self.allocator = allocator
        self.getters = self.strategy.all_field_getters()
        self.serves_other_versions = rt.storage_prefix == f"{rt.group}/{rt.plural}"
        self.cacher = Cacher(store, rt.key_prefix(), self.decode, window=watch_window)
        # Admission that allocates (a Service's IPs and node ports, given back by `released`) must not run for a
        # name that is taken, so create looks first. For every other kind the store's create answers AlreadyExists
        # by itself; not looking saves a store round trip per create (on etcd, a third of a ConfigMap create).
        self._admit_allocates = type(self.strategy).released is not Strategy.released
        # Checked once: isinstance against a runtime Protocol costs more than a dict lookup per create.
        self._guarded_store: GuardedCreate | None = store if isinstance(store, GuardedCreate) else None
        # On a store whose reads are round trips (the GuardedCreate ones: etcd), an update starts from the value
        # this server last saw for the key, when it has one, instead of reading it first: guaranteed_update only
        # lets a successful compare-and-swap on it stand, and redoes anything else on a fresh read. Kinds whose
        # admission allocates are left out, so an attempt on a stale value never allocates.
        self._recent: dict[str, KeyValue] | None = (
            {} if self._guarded_store is not None and not self._admit_allocates else None)
        # Whether the object a write returns is what decoding its stored value gives, so that the watch cache can
        # take it instead (Cacher.written): not for kinds converted on the way in and out of storage.
        self._shares_written = type(self.strategy).from_storage is Strategy.from_storage

    # ------------------------------------------------------------------------------------------- encoding

    def decode(self, value: bytes, revision: int) -> dict[str, Any]:
        obj = jsonutil.loads(value)
        obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
        if self.serves_other_versions:
            # Versions of a custom resource share storage; conversion "None" only changes apiVersion.
            obj["apiVersion"] = self.rt.api_version
        return self.strategy.from_storage(obj)

    def _decode_kv(self, kv: KeyValue) -> dict[str, Any]:
        return self.decode(kv.value, kv.revision)

    def encode(self, obj: dict[str, Any]) -> bytes:
        stored = self.strategy.to_storage(obj)
        meta = stored.get("metadata") or {}
        rv = meta.pop("resourceVersion", None)
        try:
            return jsonutil.dumps(stored)
        finally:
            if rv is not None:
                meta["resourceVersion"] = rv

    def _not_found(self, name: str) -> ApiError:
        return errors.not_found(self.rt.plural, self.rt.group, name)

    _RECENT_MAX = 1024  # keys per resource whose last seen value is kept for updates (see __init__)

    def _saw(self, kv: KeyValue) -> None:
        recent = self._recent
        if recent is not None:
            recent.pop(kv.key, None)  # re-inserted last: the dict's order is the order of use
            if len(recent) >= self._RECENT_MAX:
                del recent[next(iter(recent))]
            recent[kv.key] = kv

    def _forget(self, key: str) -> None:
        if self._recent is not None:
            self._recent.pop(key, None)

    def _ctx(self, ctx: WriteContext) -> WriteContext:
        ctx.allocator = self.allocator
        ctx.store = self.store
        return ctx

    # ------------------------------------------------------------------------------------------- reads

    async def get(self, namespace: str | None, name: str) -> dict[str, Any]:
        try:
            kv = await self.store.get(self.rt.key(namespace, name))
        except KeyNotFoundError:
            raise self._not_found(name) from None
        self._saw(kv)
        return self._decode_kv(kv)

    async def list(self, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
                   limit: int = 0, continue_token: str | None = None) -> dict[str, Any]:
        prefix = self.rt.key_prefix(namespace)
        start_after, list_rv = None, None
        if continue_token:
            start_after, list_rv = _decode_continue(continue_token, prefix)
        filtered = not (labels.empty and fields.empty)
        items: list[dict[str, Any]] = []
        revision = 0
        next_key: str | None = None
        remaining = 0
        done = False
        while not done:
            # Every page is read at the first page's revision (carried in the continue token), so a paginated list
            # is one consistent snapshot, as upstream's is; once that revision is compacted the token expires (410).
            if not limit:
                page_size = 0
            elif filtered:
                page_size = max(limit - len(items), 256)
            else:
                page_size = limit - len(items)
            try:
                page = await self.store.list(prefix, limit=page_size, start_after=start_after,
                                             revision=list_rv or 0)
            except ExpiredError:
                raise errors.ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                      "consistent list result. You can start a new list without the continue "
                                      "parameter.") from None
            revision = revision or page.revision
            for i, kv in enumerate(page.items):
                obj = self._decode_kv(kv)
                if filtered and not (labels.matches(obj["metadata"].get("labels"))
                                     and fields.matches(obj, self.getters)):
                    continue
                items.append(obj)
                if limit and len(items) >= limit:
                    done = True
                    if i < len(page.items) - 1 or page.continue_key is not None:
                        next_key = kv.key
                        remaining = len(page.items) - 1 - i + page.remaining
                    break
            if page.continue_key is None:
                break
            start_after = page.continue_key
        rv = list_rv or revision
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if next_key is not None:
            meta["continue"] = _encode_continue(next_key, rv, prefix)
            if not filtered:
                meta["remainingItemCount"] = remaining
        return {"kind": self.rt.list_kind, "apiVersion": self.rt.api_version, "metadata": meta, "items": items}

    # ------------------------------------------------------------------------------------------- create

    async def create(self, namespace: str | None, obj: Any, ctx: WriteContext) -> dict[str, Any]:
        self._ctx(ctx)
        obj = self._check_body(obj, namespace, None)
        self._check_fields(obj, ctx)
        meta = obj["metadata"]
        for field in SYSTEM_METADATA + ("resourceVersion", "generation"):
            meta.pop(field, None)
        _omit_empty_metadata(meta)
        meta["uid"] = _new_uid()
        meta["creationTimestamp"] = _now()
        if self.strategy.track_generation:
            meta["generation"] = 1
        generate = not meta.get("name") and meta.get("generateName")
        self.strategy.defaults(obj)
        if self.rt.has_status:
            status = self.strategy.initial_status(obj)
            if status is None:
                obj.pop("status", None)
            else:
                obj["status"] = status
        if generate:
            meta["name"] = _generate_name(meta["generateName"])
        self.strategy.prepare_for_create(obj)
        self._validate(obj, None)
        if not ctx.applying:
            record_update(obj, None, ctx.field_manager)
        namespace_kv: KeyValue | None = None
        if self.rt.namespaced:
            namespace_kv = await self.namespaces.check_writable(namespace or "", self.rt, fresh=ctx.dry_run)
        for attempt in range(8):
            key = self.rt.key(namespace, meta["name"])
            if generate and attempt:
                meta["name"] = _generate_name(meta["generateName"])
                key = self.rt.key(namespace, meta["name"])
            if ctx.dry_run:
                await self.strategy.admit(ctx, obj, None)
                try:
                    await self.store.get(key)
                    raise errors.already_exists(self.rt.plural, self.rt.group, meta["name"])
                except KeyNotFoundError:
                    pass
                if self.allocator is not None and self.rt.kind == "Service":
                    self.allocator.release_service(obj)
                return obj
            if self._admit_allocates:
                try:
                    await self.store.get(key)
                except KeyNotFoundError:
                    pass
                else:
                    if generate:
                        continue
                    raise errors.already_exists(self.rt.plural, self.rt.group, meta["name"])
            await self.strategy.admit(ctx, obj, None)
            try:
                kv = await self._store_create(key, self.encode(obj), namespace or "", namespace_kv)
            except KeyExistsError:
                if generate:
                    continue
                raise errors.already_exists(self.rt.plural, self.rt.group, meta["name"]) from None
            self._saw(kv)
            meta["resourceVersion"] = str(kv.revision)
            if self._shares_written:
                self.cacher.written(key, kv.revision, obj)
            return obj
        raise errors.ApiError(500, "ServerTimeout", "could not generate a unique name; please retry")

    async def _store_create(self, key: str, value: bytes, namespace: str, namespace_kv: KeyValue | None) -> KeyValue:
        """Create in the store; where it can, only while the namespace is still the one found writable."""
        guarded = self._guarded_store
        while namespace_kv is not None and guarded is not None:
            try:
                return await guarded.create_guarded(key, value, namespace_kv.key, namespace_kv.revision)
            except ConflictError:
                # The namespace changed since it was checked: check it again (404 if gone, 403 if terminating).
                namespace_kv = await self.namespaces.check_writable(namespace, self.rt, fresh=True)
        return await self.store.create(key, value)

    @functools.cached_property
    def schema(self) -> dict[str, Any] | None:
        """The kind's schema: upstream's for built-ins, the CRD's structural schema for custom resources."""
        custom_schema = getattr(self.strategy, "schema", None)
        if isinstance(custom_schema, dict):
            return custom_schema
        return schemas.schema_for(self.rt.group, self.rt.version, self.rt.kind)

    def _undecodable(self, mistyped: list[str]) -> ApiError:
        return errors.bad_request(f'{self.rt.kind} in version "{self.rt.version}" cannot be handled as a '
                                  f"{self.rt.kind}: {'; '.join(mistyped)}")

    def check_types(self, obj: Any) -> None:
        """400 for a body whose values have the wrong JSON types, for paths (apply) that work on the body before
        the write's own decoding step sees it."""
        if self.schema is None or getattr(self.strategy, "schema", None) is not None:
            return
        mistyped = schemas.type_errors(obj, self.schema)
        if mistyped:
            raise self._undecodable(mistyped)

    def _check_fields(self, obj: dict[str, Any], ctx: WriteContext, stored: dict[str, Any] | None = None) -> None:
        """Drop fields the schema does not know, as upstream's decoder does; report them per fieldValidation.

        ``stored``: the object as stored before this write (a patch's target). Top-level fields equal to it passed
        this check when they were written, so only the others are walked: a pod status patch walks the status,
        not the whole pod. Not for custom resources, whose schema may have changed since.
        """
        schema = self.schema
        if schema is None:
            return
        mistyped: list[str] = []
        if stored is not None and getattr(self.strategy, "schema", None) is None:
            changed = {k: v for k, v in obj.items() if k not in stored or stored[k] != v}
            walked = list(changed)
            # Changes `obj`'s values too; below the top level, what equals the stored value is not walked again.
            dropped = schemas.drop_unknown_fields(changed, schema, mistyped=mistyped, stored=stored)
            for key in walked:
                if key not in changed:  # an unknown top-level field
                    del obj[key]
            self._report_fields(dropped, mistyped, ctx)
            return
        if getattr(self.strategy, "schema", None) is not None:
            # A CRD schema rarely declares apiVersion/kind/metadata; those are always allowed at the root.
            body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
            dropped = schemas.drop_unknown_fields(body, schema)
            for key in [k for k in obj if k not in ("apiVersion", "kind", "metadata") and k not in body]:
                del obj[key]
        else:
            dropped = schemas.drop_unknown_fields(obj, schema, mistyped=mistyped)
        self._report_fields(dropped, mistyped, ctx)

    def _report_fields(self, dropped: list[str], mistyped: list[str], ctx: WriteContext) -> None:
        if mistyped:
            # Upstream cannot even decode such a body into its typed object: a 400 whatever fieldValidation says,
            # and never a strategy tripping over a number where it expects a string.
            raise self._undecodable(mistyped)
        if not dropped:
            return
        names = [f'unknown field "{p[1:]}"' for p in dropped]
        if ctx.field_validation == "Strict":
            raise errors.bad_request("strict decoding error: " + ", ".join(names))
        if ctx.field_validation == "Warn":
            ctx.warnings.extend(names)

    def _check_body(self, obj: Any, namespace: str | None, name: str | None) -> dict[str, Any]:
        """Shape checks every write body needs: an object of this kind, in this namespace, with metadata."""
        if not isinstance(obj, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        # Upstream's decoder fills a missing kind or apiVersion from the endpoint (gvkWithDefaults), so a body that
        # leaves them out is accepted; only one that names something else is refused.
        if not obj.get("kind"):
            obj["kind"] = self.rt.kind
        if not obj.get("apiVersion"):
            obj["apiVersion"] = self.rt.api_version
        kind, api_version = obj["kind"], obj["apiVersion"]
        if kind != self.rt.kind or api_version != self.rt.api_version:
            raise errors.bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version "
                f"({self.rt.api_version})" if kind == self.rt.kind else
                f"the kind in the data ({kind}) does not match the expected kind ({self.rt.kind})")
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if self.rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if name is not None and meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL "
                                     f"({name})")
        if name is not None:
            meta["name"] = name
        return obj

    def _validate(self, obj: dict[str, Any], old: dict[str, Any] | None, subresource: str | None = None) -> None:
        causes = validate_metadata(obj, self.rt.name_rule, self.rt.namespaced)
        if not causes:
            if old is None:
                causes = self.strategy.validate(obj)
            elif subresource == "status":
                causes = self.strategy.validate_status_update(obj, old)
            elif subresource == "binding":
                causes = []  # the server set the node (and annotations, checked with the metadata), as upstream
            else:
                causes = self.strategy.validate_update(obj, old)
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = set(obj["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
            if added:
                causes.append(Cause("FieldValueForbidden", "Forbidden: no new finalizers can be added if the object "
                                    "is being deleted, found new finalizers " + str(sorted(added)),
                                    "metadata.finalizers"))
        if causes:
            raise errors.invalid(self.rt.kind, self.rt.group, obj["metadata"].get("name", ""), causes)

    # ------------------------------------------------------------------------------------------- update

    async def update(self, namespace: str | None, name: str, body: Any, ctx: WriteContext,
                     subresource: str | None = None) -> dict[str, Any]:
        self._ctx(ctx)
        body = self._check_body(body, namespace, name)
        self._check_fields(body, ctx)
        wanted_rv = body["metadata"].get("resourceVersion")

        def compute(old: dict[str, Any]) -> dict[str, Any]:
            return jsonutil.copy_json(body)  # a retried compare-and-swap starts again from the body as sent

        return await self._update(namespace, name, compute, ctx, subresource, wanted_rv)

    async def patch(self, namespace: str | None, name: str, patcher: Callable[[dict[str, Any]], dict[str, Any]],
                    ctx: WriteContext, subresource: str | None = None) -> dict[str, Any]:
        self._ctx(ctx)

        def compute(old: dict[str, Any]) -> dict[str, Any]:
            new = self._check_body(patcher(old), namespace, name)
            ctx.warnings.clear()  # a retried compare-and-swap must not repeat the warnings
            # The patchers of patch.py and fieldmanager.apply return a new object and leave `old` as stored; one
            # that changes `old` in place (the scale subresource) gets the whole object checked.
            self._check_fields(new, ctx, stored=old if new is not old else None)
            return new

        return await self._update(namespace, name, compute, ctx, subresource, None, rv_from_result=True)

    async def mutate(self, namespace: str | None, name: str, change: Callable[[dict[str, Any]], None],
                     ctx: WriteContext, subresource: str | None = None) -> dict[str, Any]:
        """Apply a server-side change (binding, scale, finalize) through the same update path."""

        def compute(old: dict[str, Any]) -> dict[str, Any]:
            # `old` is the caller's own copy (see _update), so it can be changed in place.
            _strip_rv(old)
            change(old)
            return old

        return await self._update(namespace, name, compute, self._ctx(ctx), subresource, None)

    async def _update(self, namespace: str | None, name: str, compute: Callable[[dict[str, Any]], dict[str, Any]],
                      ctx: WriteContext, subresource: str | None, wanted_rv: str | None,
                      rv_from_result: bool = False) -> dict[str, Any]:
        key = self.rt.key(namespace, name)
        result: dict[str, Any] = {}

        async def try_update(kv: KeyValue) -> bytes | None:
            old = self._decode_kv(kv)
            # compute() gets its own copy to change: decoding the value again is several times cheaper than
            # copying the decoded object.
            new = compute(self._decode_kv(kv))
            rv = wanted_rv
            if rv_from_result:
                rv = (new.get("metadata") or {}).get("resourceVersion")
            if rv and rv != str(kv.revision):
                raise errors.conflict(self.rt.plural, self.rt.group, name, errors.STALE_OBJECT)
            new = self._prepare_update(new, old, subresource)
            self._validate(new, old, subresource)
            await self.strategy.admit(ctx, new, old)
            meta = new["metadata"]
            if (meta.get("deletionTimestamp") and not meta.get("finalizers") and not self.strategy.blocks_deletion(new)
                    and (old["metadata"].get("finalizers") or self.strategy.blocks_deletion(old))
                    and not meta.get("deletionGracePeriodSeconds")):
                # Upstream's ShouldDeleteDuringUpdate: only the update that removes the last finalizer ends the
                # object, and only once its grace period is over; a pod in graceful deletion keeps taking status
                # updates until its kubelet deletes it with gracePeriodSeconds=0.
                raise _DeleteInstead(kv, new)
            _strip_rv(new)
            _strip_rv(old)
            if _without_managed_fields(new) == _without_managed_fields(old):
                new["metadata"]["resourceVersion"] = str(kv.revision)
                new["metadata"].pop("managedFields", None)
                if "managedFields" in old["metadata"]:
                    new["metadata"]["managedFields"] = old["metadata"]["managedFields"]
                result["obj"] = new
                return None
            if not ctx.applying:
                record_update(new, old, ctx.field_manager, subresource if subresource == "status" else "")
            result["obj"] = new
            if ctx.dry_run:
                new["metadata"]["resourceVersion"] = str(kv.revision)
                return None
            result["wrote"] = new
            return self.encode(new)

        while True:
            try:
                kv = await guaranteed_update(self.store, key, try_update,
                                             suggestion=self._recent.get(key) if self._recent is not None else None)
            except KeyNotFoundError:
                self._forget(key)
                raise self._not_found(name) from None
            except _DeleteInstead as pending:
                if ctx.dry_run:
                    return pending.obj
                self._forget(key)
                try:
                    gone = await self.store.delete(key, expected_revision=pending.kv.revision)
                except ConflictError:
                    continue
                except KeyNotFoundError:
                    raise self._not_found(name) from None
                await self.strategy.released(ctx, pending.obj)
                pending.obj["metadata"]["resourceVersion"] = str(gone.revision)
                return pending.obj
            self._saw(kv)
            obj = result["obj"]
            if not ctx.dry_run:
                obj["metadata"]["resourceVersion"] = str(kv.revision)
                if self._shares_written and result.get("wrote") is obj:
                    self.cacher.written(key, kv.revision, obj)
            return obj

    def _prepare_update(self, new: dict[str, Any], old: dict[str, Any], subresource: str | None) -> dict[str, Any]:
        if subresource == "status":
            # The stored object with the new status. `old` is this attempt's own decoded copy and is only read from
            # here on, so the rest is shared with it; metadata is the one part the write changes (managedFields,
            # resourceVersion), so it is copied.
            merged = {**old, "metadata": dict(old["metadata"])}
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            if "managedFields" in (new.get("metadata") or {}):
                merged["metadata"]["managedFields"] = new["metadata"]["managedFields"]  # an apply to /status
            return merged
        meta, old_meta = new["metadata"], old["metadata"]
        for field in SYSTEM_METADATA:
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        _omit_empty_metadata(meta)
        if self.rt.has_status and subresource is None:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        if subresource != "binding":  # a binding changes nothing that defaulting fills in
            self.strategy.defaults(new)
        if subresource is None:
            self.strategy.prepare_for_update(new, old)
        if self.strategy.track_generation:
            generation = old_meta.get("generation", 1)
            if _spec_part(new) != _spec_part(old):
                generation += 1
            meta["generation"] = generation
        else:
            meta.pop("generation", None)
            if "generation" in old_meta:
                meta["generation"] = old_meta["generation"]
        return new

    # ------------------------------------------------------------------------------------------- delete

    async def delete(self, namespace: str | None, name: str, options: DeleteOptions,
                     ctx: WriteContext) -> tuple[dict[str, Any], bool]:
        """Delete, or mark for deletion. Returns (object, deleted_now)."""
        self._ctx(ctx)
        key = self.rt.key(namespace, name)
        self._forget(key)
        while True:
            try:
                kv = await self.store.get(key)
            except KeyNotFoundError:
                raise self._not_found(name) from None
            obj = self._decode_kv(kv)
            meta = obj["metadata"]
            if options.precondition_uid and options.precondition_uid != meta.get("uid"):
                raise errors.conflict(self.rt.plural, self.rt.group, name,
                                      f"Precondition failed: UID in precondition: {options.precondition_uid}, UID in "
                                      f"object meta: {meta.get('uid')}")
            if options.precondition_rv and options.precondition_rv != meta.get("resourceVersion"):
                raise errors.conflict(self.rt.plural, self.rt.group, name,
                                      f"Precondition failed: ResourceVersion in precondition: "
                                      f"{options.precondition_rv}, ResourceVersion in object meta: "
                                      f"{meta.get('resourceVersion')}")
            finalizers = list(meta.get("finalizers") or [])
            policy = options.propagation_policy
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            elif policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            grace = self._grace_period(obj, options.grace_period_seconds)
            if not finalizers and grace == 0 and not self.strategy.blocks_deletion(obj):
                if options.dry_run or ctx.dry_run:
                    return obj, True
                try:
                    gone = await self.store.delete(key, expected_revision=kv.revision)
                except ConflictError:
                    continue
                except KeyNotFoundError:
                    raise self._not_found(name) from None
                await self.strategy.released(ctx, obj)
                meta["resourceVersion"] = str(gone.revision)
                return obj, True
            # Graceful or finalized deletion: mark it and let the kubelet or the finalizers' owners finish.
            now = _dt.datetime.now(_dt.timezone.utc)
            deadline = (now + _dt.timedelta(seconds=grace)).strftime("%Y-%m-%dT%H:%M:%SZ")
            if meta.get("deletionTimestamp") and finalizers == list(meta.get("finalizers") or []):
                current_grace = meta.get("deletionGracePeriodSeconds")
                if current_grace is not None and grace >= current_grace:
                    return obj, False  # already being deleted at least this fast
            meta["finalizers"] = finalizers
            if not meta.get("deletionTimestamp") or grace < (meta.get("deletionGracePeriodSeconds") or 0):
                meta["deletionTimestamp"] = deadline
            meta["deletionGracePeriodSeconds"] = grace
            self.strategy.mark_deleting(obj)
            if options.dry_run or ctx.dry_run:
                return obj, False
            try:
                new_kv = await self.store.update(key, self.encode(obj), kv.revision)
            except ConflictError:
                continue
            except KeyNotFoundError:
                raise self._not_found(name) from None
            meta["resourceVersion"] = str(new_kv.revision)
            return obj, False

    def _grace_period(self, obj: dict[str, Any], requested: int | None) -> int:
        """Graceful deletion applies to pods on a node that may still run them, as upstream's pod strategy says."""
        if self.rt.kind != "Pod" or self.rt.group != "":
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        grace = requested if requested is not None else spec.get("terminationGracePeriodSeconds", 30)
        return max(0, int(grace))

    async def delete_collection(self, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
                                options: DeleteOptions, ctx: WriteContext) -> dict[str, Any]:
        listing = await self.list(namespace, labels, fields)
        deleted = []
        for item in listing["items"]:
            meta = item["metadata"]
            try:
                obj, _ = await self.delete(meta.get("namespace"), meta["name"], options, ctx)
            except ApiError as exc:
                if exc.code == 404:
                    continue
                raise
            deleted.append(obj)
        return {"kind": self.rt.list_kind, "apiVersion": self.rt.api_version,
                "metadata": {"resourceVersion": listing["metadata"]["resourceVersion"]}, "items": deleted}

    # ------------------------------------------------------------------------------------------- watch

    async def open_watch(self, namespace: str | None, labels: LabelSelector, fields: FieldSelector,
                         resource_version: str | None, transform: Transform | None,
                         max_pending: int) -> tuple[Watcher, Callable[[], Awaitable[None]]]:
        """Start a watch; returns the watcher and a coroutine function that ends it."""
        prefix = self.rt.key_prefix(namespace)
        initial: list[dict[str, Any]] = []
        if resource_version in (None, "", "0"):
            # No revision: start with synthetic ADDED events for what exists now, as upstream does.
            listing = await self.store.list(prefix)
            revision = listing.revision
            for kv in listing.items:
                obj = self._decode_kv(kv)
                if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj, self.getters):
                    initial.append(obj)
        else:
            try:
                revision = int(resource_version)
            except ValueError:
                raise errors.bad_request(f'invalid resource version: "{resource_version}"') from None
        await self.cacher.ensure_started(revision)
        watcher = Watcher(prefix, labels, fields, self.getters, revision, transform, self.decode, max_pending)
        for obj in initial:
            watcher.push_raw(transform("ADDED", obj) if transform else jsonutil.dumps({"type": "ADDED", "object": obj}))
        if revision < self.cacher.revision:
            # The cache window may still hold events the store has compacted away; a client resuming from there
            # must get 410 (as it would from the store) and relist, not a replay of history that no longer exists.
            # Watching from R needs the changes after R, which exist as long as the snapshot at R + 1 is readable
            # (R itself may be compacted: the store forgets "through R"); R + 1 is at most the cache's revision.
            try:
                await self.store.list(prefix, limit=1, revision=revision + 1)
            except ExpiredError as exc:
                # As upstream's cacher: a watch that cannot start ends with one ERROR event, not an HTTP error.
                watcher.close(exc)

                async def nothing_to_stop() -> None:
                    return None

                return watcher, nothing_to_stop
        if self.cacher.can_serve(revision):
            self.cacher.register(watcher)

            async def stop() -> None:
                self.cacher.unregister(watcher)
        else:
            import asyncio
            task = asyncio.create_task(feed_from_store(self.store, prefix, revision, watcher, self.decode))

            async def stop() -> None:
                task.cancel()
        return watcher, stop


class NamespaceChecker:
    """Answers "may objects be created in this namespace?" — it must exist and not be terminating.

    On a store with guarded creates (etcd) a writable namespace is remembered with its revision and returned to
    the create, which checks that revision in the same transaction: steady creates read no namespace, and one that
    changed in between (terminating, deleted, relabelled) fails the guard and is checked again with ``fresh``.
    The answer is therefore never stale, on any backend.
    """

    _MAX_REMEMBERED = 10_000

    def __init__(self, store: Store) -> None:
        self.store = store
        self._guarded = isinstance(store, GuardedCreate)
        self._writable: dict[str, KeyValue] = {}
        self._seen: dict[str, tuple[int, bool]] = {}  # namespace -> (revision read, terminating at that revision)

    def _terminating(self, namespace: str, kv: KeyValue) -> bool:
        # The same revision is the same value: decoding it once per revision spares every create on an in-memory
        # store (which reads the namespace each time) a decode of the namespace.
        seen = self._seen.get(namespace)
        if seen is not None and seen[0] == kv.revision:
            return seen[1]
        ns = jsonutil.loads(kv.value)
        terminating = bool((ns.get("status") or {}).get("phase") == "Terminating" or (ns.get("metadata") or {}).get(
            "deletionTimestamp"))
        if len(self._seen) >= self._MAX_REMEMBERED:
            self._seen.clear()
        self._seen[namespace] = (kv.revision, terminating)
        return terminating

    async def check_writable(self, namespace: str, rt: ResourceType, *, fresh: bool = False) -> KeyValue | None:
        """The namespace as checked, for a guarded create to hold it to (None if the store cannot guard)."""
        if self._guarded and not fresh:
            remembered = self._writable.get(namespace)
            if remembered is not None:
                return remembered
        self._writable.pop(namespace, None)
        try:
            kv = await self.store.get(f"/registry/namespaces/{namespace}")
        except KeyNotFoundError:
            raise errors.not_found("namespaces", "", namespace) from None
        if self._terminating(namespace, kv):
            if rt.kind == "Event" and rt.group == "":
                # Upstream lets events in so that the deletion itself can be reported (not remembered: most
                # kinds may not be created here).
                return kv if self._guarded else None
            err = errors.forbidden(f'{rt.plural} "" is forbidden: unable to create new content in namespace '
                                   f"{namespace} because it is being terminated", rt.plural, rt.group)
            err.causes = [Cause("NamespaceTerminating", f"namespace {namespace} is being terminated",
                                "metadata.namespace")]
            raise err
        if not self._guarded:
            return None
        if len(self._writable) >= self._MAX_REMEMBERED:
            self._writable.clear()
        self._writable[namespace] = kv
        return kv


def _generate_name(prefix: str) -> str:
    return prefix + "".join(random.choice(GENERATE_ALPHABET) for _ in range(5))


def _encode_continue(key: str, revision: int, prefix: str) -> str:
    start = key[len(prefix):] if key.startswith(prefix) else key
    raw = jsonutil.dumps({"v": "meta.k8s.io/v1", "rv": revision, "start": start})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str, prefix: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = jsonutil.loads(raw)
        return prefix + data["start"], int(data["rv"])
    except Exception:  # noqa: BLE001 - any malformed token is the client's error
        raise errors.bad_request("continue key is not valid: illegal base64 data or JSON") from None


__all__ = ["DeleteOptions", "ExpiredError", "NamespaceChecker", "ResourceStore", "WriteContext"]
