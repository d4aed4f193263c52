"""The REST surface: parse a Kubernetes API path and query, call the resource store, answer in the wire format.

Paths are parsed by hand rather than by one route per resource, because `/api/v1/namespaces/...` is ambiguous
(the namespaces resource itself, or a namespaced resource inside one) and because custom resources appear at run
time. Every error leaves here as a Status object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from controlplane.apiserver import errors, fieldmanager, jsonutil, patch, protobuf, tables, tokens
from controlplane.apiserver.cacher import WatchClosed
from controlplane.apiserver.errors import ApiError
from controlplane.apiserver.kinds.base import get_path, set_path
from controlplane.apiserver.registry import ResourceType
from controlplane.apiserver.resource_store import DeleteOptions, ResourceStore, WriteContext
from controlplane.apiserver.selectors import FieldSelector, LabelSelector
from controlplane.storage import ExpiredError, StorageError, UnavailableError

if TYPE_CHECKING:
    from controlplane.apiserver.app import ServerState

log = logging.getLogger(__name__)

MAX_BODY = 3 * 1024 * 1024
JSON = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(jsonutil.dumps(body), status_code=status, media_type=JSON, headers=headers)


def error_response(exc: ApiError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return Response(exc.body(), status_code=exc.code, media_type=JSON, headers=headers)


@dataclass
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool  # the deprecated /watch/ prefix


def parse_target(state: ServerState, group: str, version: str, path: str) -> Target:
    segs = path.split("/") if path else []
    if segs and segs[-1] == "":
        segs.pop()
    watch_path = False
    if segs and segs[0] == "watch":
        watch_path = True
        segs = segs[1:]
    if not segs or any(s == "" for s in segs):
        raise errors.not_found_path()
    namespace = name = sub = None
    if segs[0] == "namespaces" and len(segs) >= 3 and not (group == "" and len(segs) == 3
                                                            and segs[2] in ("status", "finalize")):
        namespace, resource, rest = segs[1], segs[2], segs[3:]
    else:
        resource, rest = segs[0], segs[1:]
    if len(rest) > 2:
        raise errors.not_found_path()
    if rest:
        name = rest[0]
    if len(rest) == 2:
        sub = rest[1]
    rt = state.registry.lookup(group, version, resource)
    if rt is None:
        raise errors.not_found_path()
    if namespace is not None and not rt.namespaced:
        raise errors.not_found_path()
    if rt.namespaced and name is not None and namespace is None:
        raise errors.not_found_path()
    if sub is not None and sub not in rt.subresources:
        raise errors.not_found_path()
    return Target(rt, namespace, name, sub, watch_path)


_JSON_BODIES = frozenset({JSON, patch.MERGE_PATCH, patch.JSON_PATCH, patch.STRATEGIC_MERGE_PATCH})
_YAML_BODIES = frozenset({"application/yaml", patch.APPLY_PATCH, "text/yaml"})


class _YamlAsJsonLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML as upstream reads it (sigs.k8s.io/yaml: YAML converted to JSON): an unquoted timestamp stays the string
    it was written as, not a datetime."""


_YamlAsJsonLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _yaml_body(raw: bytes) -> Any:
    """A YAML body as JSON values: keys as strings (upstream writes a number key as its text), and a clear error
    for what JSON cannot hold (binary, sets)."""
    return jsonutil.loads(jsonutil.dumps(yaml.load(raw, Loader=_YamlAsJsonLoader), non_str_keys=True))


def _header(request: Request, name: bytes) -> str | None:
    """``request.headers.get(name)`` for a lower-case name (ASGI servers lower-case header names), without building
    Starlette's Headers: a write looks up three or four headers."""
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(request: Request) -> Any:
    length = _header(request, b"content-length")
    if length and length.isdigit() and int(length) > MAX_BODY:
        raise errors.too_large()
    # The ASGI messages read directly (what Request.stream() does, less its async generator).
    receive = request.receive
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > MAX_BODY:
                    raise errors.too_large()
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()
    raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if not raw.strip():
        return None
    ctype = (_header(request, b"content-type") or JSON).split(";", 1)[0].strip().lower()
    if ctype == protobuf.MEDIA_TYPE:
        # kubectl's typed generators send protobuf; decode to the same dicts the JSON path yields.
        try:
            return protobuf.decode_object(raw)
        except protobuf.UnsupportedProtobuf as exc:
            raise ApiError(415, "UnsupportedMediaType", str(exc)) from None
        except protobuf.MalformedProtobuf as exc:
            raise errors.bad_request(f"unable to decode protobuf body: {exc}") from None
    if ctype not in _JSON_BODIES and ctype not in _YAML_BODIES:
        # Upstream negotiates the body's decoder by media type: anything it has no decoder for is a 415, not a
        # guess at JSON.
        raise errors.unsupported_media_type(ctype)
    if ctype in _YAML_BODIES:
        try:
            # As upstream converts YAML to JSON before decoding: a body is JSON values from here on, whichever way
            # it came (the watch cache shares written objects as they are; see Cacher.written).
            return _yaml_body(raw)
        except (yaml.YAMLError, TypeError) as exc:
            raise errors.bad_request(f"error converting YAML to JSON: {exc}") from None
    try:
        return jsonutil.loads(raw)
    except ValueError as exc:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {exc}") from None


def _query_bool(query: Any, name: str) -> bool:
    return str(query.get(name, "")).lower() in ("true", "1")


def _dry_run(query: Any) -> bool:
    values = query.getlist("dryRun") if hasattr(query, "getlist") else []
    for value in values:
        if value != "All":
            raise errors.bad_request(f'Invalid dry run value: "{value}": supported values: "All"')
    return bool(values)


_NO_QUERY = QueryParams()


class _ApiRequest(Request):
    """A Request whose empty query string (most writes and gets) shares one empty QueryParams instead of parsing."""

    @property
    def query_params(self) -> QueryParams:
        if not self.scope["query_string"]:
            return _NO_QUERY
        return super().query_params


# Methods the resource routes accept (HEAD rides along with GET, as Starlette adds it); any other is a 405 Status.
_RESOURCE_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})


class ApiHandlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @staticmethod
    def resource_path(path: str) -> tuple[str, str, str] | None:
        """(group, version, rest) when ``path`` is one the REST handlers serve — what the routes
        `/api/v1/{path:path}` and `/apis/{group}/{version}/{path:path}` match — else None."""
        if path.startswith("/api/v1/"):
            return "", "v1", path[8:]
        if path.startswith("/apis/"):
            parts = path[6:].split("/", 2)
            if len(parts) == 3 and parts[0] and parts[1]:
                return parts[0], parts[1], parts[2]
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send, group: str, version: str, path: str) -> None:
        """A resource request as a plain ASGI app, without Starlette's router and middleware (see app.create_app).
        `dispatch` answers every error with a Status itself, so nothing here needs the exception middleware."""
        request = _ApiRequest(scope, receive, send)
        if scope["method"] in _RESOURCE_METHODS:
            response = await self.dispatch(request, group, version, path)
        else:
            response = error_response(errors.method_not_allowed())
        await response(scope, receive, send)

    async def core(self, request: Request) -> Response:
        return await self.dispatch(request, "", "v1", request.path_params.get("path", ""))

    async def pod_stream(self, websocket: WebSocket) -> None:
        """pods/exec (and attach, portforward) over a WebSocket: handed to the node proxy, which relays it to the
        pod's kubelet. Errors refuse the upgrade with a Status, which kubectl prints."""
        p = websocket.path_params
        try:
            t = parse_target(self.state, "", "v1", f"namespaces/{p['namespace']}/pods/{p['name']}/{p['subresource']}")
            if t.subresource not in ("exec", "attach", "portforward"):
                raise errors.not_found_path()
            proxy = self.state.node_proxy
            if proxy is None:
                raise errors.unavailable(f"pods/{t.subresource} needs a kubelet; none is connected to this server")
            await proxy(websocket, self.state.stores[(t.rt.group, t.rt.version, t.rt.plural)], t)
        except ApiError as exc:
            try:
                await websocket.send_denial_response(error_response(exc))
            except RuntimeError:
                await websocket.close()

    async def grouped(self, request: Request) -> Response:
        p = request.path_params
        return await self.dispatch(request, p["group"], p["version"], p.get("path", ""))

    async def dispatch(self, request: Request, group: str, version: str, path: str) -> Response:
        try:
            target = parse_target(self.state, group, version, path)
            return await self._route(request, target)
        except ApiError as exc:
            return error_response(exc)
        except UnavailableError as exc:
            return error_response(errors.unavailable(f"storage is unavailable: {exc}"))
        except ExpiredError as exc:
            return error_response(errors.gone(str(exc)))
        except StorageError as exc:
            return error_response(errors.internal(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug must still answer with a Status, not a reset connection
            # Starlette's last-resort handler re-raises after answering, which drops the keep-alive connection
            # under the client; answering here keeps the failure an ordinary 500 Status.
            log.exception("unhandled error serving %s %s", request.method, request.url.path)
            return error_response(errors.internal(f"{type(exc).__name__}: {exc}"))

    async def _route(self, request: Request, t: Target) -> Response:
        method = request.method
        store = self.state.stores[(t.rt.group, t.rt.version, t.rt.plural)]
        query = request.query_params
        if t.subresource is None:
            # A kind may serve only some verbs (bindings: create); the others are 405, as upstream's installer
            # registers no route for them.
            verb = _verb(method, t.name is None, t.watch_path or _query_bool(query, "watch"))
            if verb is not None and verb not in t.rt.verbs:
                raise errors.method_not_allowed()
        if t.rt.group == "" and t.rt.plural == "bindings" and t.name is None and method == "POST":
            return await self.bind_collection(request, t)
        if t.name is None:
            if method == "GET":
                if t.watch_path or _query_bool(query, "watch"):
                    return await self.watch(request, store, t)
                return await self.list(request, store, t)
            if method == "POST":
                return await self.create(request, store, t)
            if method == "DELETE":
                return await self.delete_collection(request, store, t)
            raise errors.method_not_allowed()
        if t.watch_path and method == "GET":
            return await self.watch(request, store, t, name=t.name)
        sub = t.subresource
        if sub is None or sub == "status":
            if method == "GET":
                obj = await store.get(t.namespace, t.name)
                return self._respond(request, store.rt, obj)
            if method == "PUT":
                return await self.update(request, store, t)
            if method == "PATCH":
                return await self.patch(request, store, t)
            if method == "DELETE" and sub is None:
                return await self.delete(request, store, t)
            raise errors.method_not_allowed()
        if sub == "scale":
            return await self.scale(request, store, t)
        if sub == "binding" and method == "POST":
            return await self.bind(request, store, t)
        if sub == "finalize" and method == "PUT":
            return await self.finalize(request, store, t)
        if sub == "eviction" and method == "POST":
            return await self.evict(request, store, t)
        if sub == "token" and method == "POST" and t.rt.group == "" and t.rt.plural == "serviceaccounts":
            return await self.token_request(request, store, t)
        if sub in ("log", "exec", "attach", "portforward", "proxy"):
            proxy = self.state.node_proxy
            if proxy is None:
                raise errors.unavailable(f"{t.rt.plural}/{sub} needs a kubelet; none is connected to this server")
            return await proxy(request, store, t)
        raise errors.method_not_allowed()

    # ---------------------------------------------------------------------------------------------- reads

    def _respond(self, request: Request, rt: ResourceType, obj: dict[str, Any], status: int = 200) -> Response:
        accept = _header(request, b"accept") or ""
        if tables.wants_table(accept):
            include = request.query_params.get("includeObject", "Metadata")
            return json_response(tables.to_table(rt, [obj], {"resourceVersion": obj["metadata"].get(
                "resourceVersion", "")}, include, tables.table_version(accept)), status)
        return json_response(obj, status)

    async def list(self, request: Request, store: ResourceStore, t: Target) -> Response:
        q = request.query_params
        labels = LabelSelector.parse(q.get("labelSelector"))
        fields = FieldSelector.parse(q.get("fieldSelector"), store.getters, t.rt.plural)
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise errors.bad_request(f"invalid limit: {q.get('limit')!r}") from None
        result = await store.list(t.namespace, labels, fields, max(limit, 0), q.get("continue") or None)
        accept = _header(request, b"accept") or ""
        if tables.wants_table(accept):
            include = q.get("includeObject", "Metadata")
            return json_response(tables.to_table(t.rt, result["items"], result["metadata"], include,
                                                 tables.table_version(accept)))
        return json_response(result)

    async def watch(self, request: Request, store: ResourceStore, t: Target, name: str | None = None) -> Response:
        q = request.query_params
        labels = LabelSelector.parse(q.get("labelSelector"))
        field_text = q.get("fieldSelector")
        if name is not None:
            field_text = ",".join(filter(None, [field_text, f"metadata.name={name}"]))
        fields = FieldSelector.parse(field_text, store.getters, t.rt.plural)
        try:
            timeout = float(q.get("timeoutSeconds")) if q.get("timeoutSeconds") else self.state.options.watch_timeout
        except ValueError:
            raise errors.bad_request(f"invalid timeoutSeconds: {q.get('timeoutSeconds')!r}") from None
        bookmarks = _query_bool(q, "allowWatchBookmarks")
        rv = q.get("resourceVersion")
        send_initial = q.get("sendInitialEvents")
        if send_initial is not None:
            if q.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks:
                raise errors.ApiError(422, "Invalid", "sendInitialEvents is forbidden for watch unless "
                                      "resourceVersionMatch is set to NotOlderThan and allowWatchBookmarks is true",
                                      causes=[errors.Cause("FieldValueForbidden", "Forbidden", "sendInitialEvents")])
        initial_events = _query_bool(q, "sendInitialEvents")
        if send_initial is not None and not initial_events and rv in (None, "", "0"):
            rv = str(await self.state.store.current_revision())
        elif initial_events and rv not in (None, "", "0"):
            raise errors.ApiError(422, "Invalid", "sendInitialEvents with a specific resourceVersion is not supported "
                                  "by this server; use resourceVersion=\"\" or \"0\"")
        accept = _header(request, b"accept") or ""
        transform = None
        if tables.wants_table(accept):
            include = q.get("includeObject", "Metadata")
            version = tables.table_version(accept)
            first = [True]

            def transform(type_: str, obj: dict[str, Any]) -> bytes:
                table = tables.to_table(t.rt, [obj], {"resourceVersion": obj["metadata"].get("resourceVersion", "")},
                                        include, version, with_columns=first[0])
                first[0] = False
                return jsonutil.dumps({"type": type_, "object": table})

        try:
            watcher, stop = await store.open_watch(t.namespace, labels, fields, rv, transform,
                                                   self.state.options.watch_max_pending)
        except ExpiredError as exc:
            raise errors.gone(str(exc)) from None
        if initial_events:
            watcher.push_raw(jsonutil.dumps({"type": "BOOKMARK", "object": self._bookmark(
                t.rt, max(watcher.min_revision, 1), initial_end=True)}))
        interval = self.state.options.bookmark_interval
        linger = self.state.options.watch_linger
        loop = asyncio.get_running_loop()

        async def frames() -> AsyncIterator[bytes]:
            deadline = loop.time() + timeout
            next_bookmark = loop.time() + interval
            try:
                while True:
                    now = loop.time()
                    if now >= deadline:
                        return
                    wait = deadline - now
                    if bookmarks and transform is None:
                        wait = min(wait, max(next_bookmark - now, 0))
                    batch = await watcher.next_batch(wait, linger)
                    if batch:
                        yield b"\n".join(batch) + b"\n"
                    if watcher.closed is not None and not watcher.pending:
                        reason = watcher.closed
                        if isinstance(reason, ExpiredError):
                            status = errors.gone(f"too old resource version: {reason.requested} "
                                                 f"({reason.compacted + 1})").status()
                            yield jsonutil.dumps({"type": "ERROR", "object": status}) + b"\n"
                        elif not isinstance(reason, WatchClosed):
                            status = errors.internal(str(reason)).status()
                            yield jsonutil.dumps({"type": "ERROR", "object": status}) + b"\n"
                        return
                    if bookmarks and transform is None and loop.time() >= next_bookmark:
                        next_bookmark = loop.time() + interval
                        if not watcher.pending:
                            revision = max(watcher.last_revision, store.cacher.revision)
                            yield jsonutil.dumps({"type": "BOOKMARK",
                                                  "object": self._bookmark(t.rt, revision)}) + b"\n"
            finally:
                await stop()

        return StreamingResponse(frames(), media_type=JSON)

    @staticmethod
    def _bookmark(rt: ResourceType, revision: int, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(revision)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}

    # ---------------------------------------------------------------------------------------------- writes

    def _ctx(self, request: Request, t: Target) -> WriteContext:
        q = request.query_params
        validation = q.get("fieldValidation")
        if validation is not None and validation not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'fieldValidation parameter unsupported: "{validation}"; supported values: '
                                     '"Ignore", "Warn", "Strict"')
        manager = q.get("fieldManager")
        if manager is None:
            # As upstream: without an explicit fieldManager, the writer is named by its User-Agent's product.
            manager = (_header(request, b"user-agent") or "unknown").split("/", 1)[0][:128]
        return WriteContext(t.namespace, _dry_run(q), manager, field_validation=validation or "Warn")

    async def create(self, request: Request, store: ResourceStore, t: Target) -> Response:
        ctx = self._ctx(request, t)
        body = await read_body(request)
        if t.rt.namespaced and t.namespace is None:
            raise errors.not_found_path()
        obj = await store.create(t.namespace, body, ctx)
        return _warn(ctx, self._respond(request, t.rt, obj, 201))

    async def update(self, request: Request, store: ResourceStore, t: Target) -> Response:
        ctx = self._ctx(request, t)
        body = await read_body(request)
        assert t.name is not None
        obj = await store.update(t.namespace, t.name, body, ctx, t.subresource)
        return _warn(ctx, self._respond(request, t.rt, obj))

    async def patch(self, request: Request, store: ResourceStore, t: Target) -> Response:
        ctx = self._ctx(request, t)
        content_type = _header(request, b"content-type") or ""
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in (patch.MERGE_PATCH, patch.JSON_PATCH, patch.STRATEGIC_MERGE_PATCH, patch.APPLY_PATCH):
            raise errors.unsupported_media_type(content_type)
        body = await read_body(request)
        assert t.name is not None
        if media == patch.APPLY_PATCH:
            return await self.server_side_apply(request, store, t, body, ctx)
        if body is None:
            raise errors.bad_request("the request body is empty; a patch is required")
        custom = self.state.is_custom(t.rt)

        schema = store.schema

        def patcher(current: dict[str, Any]) -> dict[str, Any]:
            return patch.apply_patch(content_type, current, body, custom, schema)

        obj = await store.patch(t.namespace, t.name, patcher, ctx, t.subresource)
        return _warn(ctx, self._respond(request, t.rt, obj))

    async def server_side_apply(self, request: Request, store: ResourceStore, t: Target, body: Any,
                                ctx: WriteContext) -> Response:
        assert t.name is not None
        q = request.query_params
        if not q.get("fieldManager"):
            raise errors.bad_request("PATCH, fieldManager: Required value: is required for apply patch")
        if not isinstance(body, dict):
            raise errors.bad_request("the apply configuration must be an object")
        store.check_types(body)
        applied_name = get_path(body, "metadata.name")
        if applied_name and applied_name != t.name:
            raise errors.bad_request(f"the name of the object ({applied_name}) does not match the name on the URL "
                                     f"({t.name})")
        body.setdefault("metadata", {})["name"] = t.name
        force = _query_bool(q, "force")
        custom = self.state.is_custom(t.rt)
        sub = t.subresource or ""
        ctx.applying = True
        try:
            current = await store.get(t.namespace, t.name)
        except ApiError as exc:
            if exc.code != 404 or sub:
                raise
            created = fieldmanager.apply(None, body, ctx.field_manager or "", force, custom, t.rt.plural)
            obj = await store.create(t.namespace, created, ctx)
            return _warn(ctx, self._respond(request, t.rt, obj, 201))
        del current

        def patcher(current: dict[str, Any]) -> dict[str, Any]:
            return fieldmanager.apply(current, body, ctx.field_manager or "", force, custom, t.rt.plural, sub,
                                      store.schema)

        obj = await store.patch(t.namespace, t.name, patcher, ctx, t.subresource)
        return _warn(ctx, self._respond(request, t.rt, obj))

    async def delete(self, request: Request, store: ResourceStore, t: Target) -> Response:
        ctx = self._ctx(request, t)
        body = await read_body(request)
        if body is not None and not isinstance(body, dict):
            raise errors.bad_request("DeleteOptions must be a JSON object")
        options = DeleteOptions.parse(body, dict(request.query_params))
        assert t.name is not None
        obj, deleted = await store.delete(t.namespace, t.name, options, ctx)
        if deleted and not t.rt.strategy.return_deleted_object:
            return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                                  "details": {"name": t.name, "group": t.rt.group, "kind": t.rt.plural,
                                              "uid": obj["metadata"].get("uid")}})
        return self._respond(request, t.rt, obj)

    async def delete_collection(self, request: Request, store: ResourceStore, t: Target) -> Response:
        ctx = self._ctx(request, t)
        q = request.query_params
        body = await read_body(request)
        labels = LabelSelector.parse(q.get("labelSelector"))
        fields = FieldSelector.parse(q.get("fieldSelector"), store.getters, t.rt.plural)
        options = DeleteOptions.parse(body if isinstance(body, dict) else None, dict(q))
        result = await store.delete_collection(t.namespace, labels, fields, options, ctx)
        return json_response(result)

    # ---------------------------------------------------------------------------------------------- subresources

    def _scale_of(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        spec = rt.scale
        assert spec is not None
        meta = obj["metadata"]
        selector = get_path(obj, "spec.selector") or {}
        if "matchLabels" in selector or "matchExpressions" in selector:
            text = ",".join(_requirement_text(r) for r in LabelSelector.from_api(selector).requirements)
        else:  # ReplicationController: a plain label map
            text = ",".join(f"{k}={v}" for k, v in selector.items())
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": get_path(obj, spec.spec_replicas) or 0},
            "status": {"replicas": get_path(obj, spec.status_replicas) or 0, "selector": text},
        }

    async def scale(self, request: Request, store: ResourceStore, t: Target) -> Response:
        assert t.name is not None and t.rt.scale is not None
        spec_path = t.rt.scale.spec_replicas
        if request.method == "GET":
            return json_response(self._scale_of(t.rt, await store.get(t.namespace, t.name)))
        ctx = self._ctx(request, t)
        body = await read_body(request)
        if request.method == "PUT":
            if not isinstance(body, dict) or body.get("kind") != "Scale":
                raise errors.bad_request("the body must be an autoscaling/v1 Scale")
            wanted_scale = body
        elif request.method == "PATCH":
            current = self._scale_of(t.rt, await store.get(t.namespace, t.name))
            content_type = _header(request, b"content-type") or ""
            wanted_scale = patch.apply_patch(content_type, current, body, custom=False)
        else:
            raise errors.method_not_allowed()
        replicas = get_path(wanted_scale, "spec.replicas")
        if not isinstance(replicas, int) or replicas < 0:
            raise errors.invalid("Scale", "autoscaling", t.name, [errors.Cause(
                "FieldValueInvalid", f"Invalid value: {replicas}: must be greater than or equal to 0",
                "spec.replicas")])
        rv = get_path(wanted_scale, "metadata.resourceVersion")

        def compute(old: dict[str, Any]) -> dict[str, Any]:
            new = old  # the update's own copy of the object (see ResourceStore._update)
            if not rv:
                new["metadata"].pop("resourceVersion", None)
            else:
                new["metadata"]["resourceVersion"] = rv
            set_path(new, spec_path, replicas)
            return new

        obj = await store.patch(t.namespace, t.name, compute, ctx)
        return json_response(self._scale_of(t.rt, obj))

    async def bind_collection(self, request: Request, t: Target) -> Response:
        """POST /api/v1/namespaces/{ns}/bindings: the older form of pods/{name}/binding, with the pod named in the
        body (the official clients' create_namespaced_binding posts here)."""
        body = await read_body(request)
        name = get_path(body, "metadata.name") if isinstance(body, dict) else None
        if not name:
            raise errors.invalid("Binding", "", "", [errors.Cause("FieldValueRequired", "Required value: name or "
                                                                  "generateName is required", "metadata.name")])
        pods = self.state.stores[("", "v1", "pods")]
        return await self.bind(request, pods, Target(pods.rt, t.namespace, name, "binding", False), body)

    async def bind(self, request: Request, store: ResourceStore, t: Target, body: Any = None) -> Response:
        assert t.name is not None
        ctx = self._ctx(request, t)
        if body is None:
            body = await read_body(request)
        node = get_path(body or {}, "target.name") if isinstance(body, dict) else None
        if not node:
            raise errors.invalid("Binding", "", t.name, [errors.Cause("FieldValueRequired", "Required value",
                                                                      "target.name")])
        body_name = get_path(body, "metadata.name")
        if body_name and body_name != t.name:
            raise errors.bad_request(f"the name of the object ({body_name}) does not match the name on the URL "
                                     f"({t.name})")
        annotations = get_path(body, "metadata.annotations") or {}

        def bind(pod: dict[str, Any]) -> None:
            if pod["metadata"].get("deletionTimestamp"):
                raise errors.conflict("pods", "", t.name or "", "pod is being deleted, cannot be assigned to a host")
            current = get_path(pod, "spec.nodeName")
            if current:
                raise errors.conflict("pods", "", t.name or "", f"pod {t.name} is already assigned to node "
                                      f'"{current}"')
            pod["spec"]["nodeName"] = node
            if annotations:
                pod["metadata"].setdefault("annotations", {}).update(annotations)
            conditions = [c for c in get_path(pod, "status.conditions") or [] if c.get("type") != "PodScheduled"]
            conditions.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                               "lastTransitionTime": jsonutil.now_rfc3339()})
            pod.setdefault("status", {})["conditions"] = conditions

        await store.mutate(t.namespace, t.name, bind, ctx, subresource="binding")
        return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "code": 201}, 201)

    async def finalize(self, request: Request, store: ResourceStore, t: Target) -> Response:
        assert t.name is not None
        ctx = self._ctx(request, t)
        body = await read_body(request)
        if not isinstance(body, dict):
            raise errors.bad_request("the body must be a Namespace")
        finalizers = get_path(body, "spec.finalizers") or []

        def change(ns: dict[str, Any]) -> None:
            ns.setdefault("spec", {})["finalizers"] = list(finalizers)

        obj = await store.mutate(t.namespace, t.name, change, ctx, subresource="finalize")
        return json_response(obj)

    async def evict(self, request: Request, store: ResourceStore, t: Target) -> Response:
        assert t.name is not None
        ctx = self._ctx(request, t)
        body = await read_body(request)
        options = DeleteOptions.parse((body or {}).get("deleteOptions") if isinstance(body, dict) else None, {})
        evictor = self.state.evictor
        if evictor is not None:
            await evictor(t.namespace, t.name)
        await store.delete(t.namespace, t.name, options, ctx)
        return json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "code": 201}, 201)

    async def token_request(self, request: Request, store: ResourceStore, t: Target) -> Response:
        """POST serviceaccounts/{name}/token: a signed token for the service account (see tokens.py)."""
        assert t.name is not None
        spec = tokens.check_request(await read_body(request), t.name)
        account = await store.get(t.namespace, t.name)
        bound = None
        ref = spec.get("boundObjectRef")
        if ref is not None:
            kind_store = self.state.stores[tokens.BOUND_KINDS[ref["kind"]]]
            bound = await kind_store.get(t.namespace if kind_store.rt.namespaced else None, ref["name"])
            uid = bound["metadata"]["uid"]
            if ref.get("uid") and ref["uid"] != uid:
                raise errors.conflict(ref["kind"], "", ref["name"], f"the UID in the bound object reference "
                                      f"({ref['uid']}) does not match the UID in record. The object might have "
                                      "been deleted and then recreated")
            spec["boundObjectRef"] = {**ref, "uid": uid}
        return json_response(tokens.issue(self.state.tokens, account, spec, bound), 201)


def _warn(ctx: WriteContext, response: Response) -> Response:
    """Attach the write's warnings as `Warning` headers (RFC 7234 code 299), which kubectl prints."""
    for text in dict.fromkeys(ctx.warnings):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        response.headers.append("Warning", f'299 - "{escaped}"')
    return response


def _verb(method: str, collection: bool, watch: bool) -> str | None:
    """The API verb of a request on a resource (not a subresource), as authorization and discovery name it."""
    if method == "GET":
        return "watch" if watch else ("list" if collection else "get")
    if collection:
        return {"POST": "create", "DELETE": "deletecollection"}.get(method)
    return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)


def _requirement_text(r: Any) -> str:
    if r.op == "=":
        return f"{r.key}={r.values[0]}"
    if r.op == "!=":
        return f"{r.key}!={r.values[0]}"
    if r.op in ("in", "notin"):
        return f"{r.key} {r.op} ({','.join(r.values)})"
    if r.op == "exists":
        return r.key
    return f"!{r.key}"
