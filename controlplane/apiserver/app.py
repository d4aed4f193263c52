"""The API server application: server state, the FastAPI app factory and the objects every cluster starts with.

`ServerState` holds what a request needs (registry, store, one ResourceStore per resource, options, hooks that
later components plug in: the kubelet proxy for logs/exec, an apply handler, an evictor). `create_app` wires the
discovery, health, version and REST routes onto it. Only this package touches the Store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from controlplane.apiserver import discovery, errors, jsonutil, metrics_api
from controlplane.apiserver.allocators import ServiceAllocator
from controlplane.apiserver.crd import CrdController, crd_resource
from controlplane.apiserver.handlers import ApiHandlers, error_response, json_response
from controlplane.apiserver.kinds import builtin_registry
from controlplane.apiserver.openapi import OpenApiCache
from controlplane.apiserver.registry import Registry, ResourceType
from controlplane.apiserver.resource_store import NamespaceChecker, ResourceStore, WriteContext
from controlplane.apiserver.selectors import FieldSelector, LabelSelector
from controlplane.apiserver.tokens import TokenIssuer
from controlplane.storage import Store

log = logging.getLogger(__name__)

KUBERNETES_MINOR = "32"
GIT_VERSION = f"v1.{KUBERNETES_MINOR}.0-ccmkit"
SYSTEM_PRIORITY_CLASSES = {"system-node-critical": 2000001000, "system-cluster-critical": 2000000000}
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass
class ServerOptions:
    service_cidr: str = "10.96.0.0/12"
    watch_timeout: float = 1800.0  # seconds a watch lasts without timeoutSeconds (upstream: 30-60 min)
    bookmark_interval: float = 10.0  # seconds between BOOKMARK events for watchers that allow them
    watch_max_pending: int = 20_000  # frames a slow watcher may lag before it is ended
    watch_window: int = 2048  # events per resource kept for replaying watches from memory
    # Least seconds between two writes of one watch. Each write costs the server a syscall and wakes the client for
    # a read of its own; under load this gathers a watcher's events into fewer, larger writes, for at most this
    # much more latency, while an event after a quiet spell is written at once (upstream's watch is unbatched;
    # Go pays less per write).
    watch_linger: float = 0.002


@dataclass
class ServerState:
    store: Store
    registry: Registry = field(default_factory=builtin_registry)
    options: ServerOptions = field(default_factory=ServerOptions)
    stores: dict[tuple[str, str, str], ResourceStore] = field(default_factory=dict)
    allocator: ServiceAllocator | None = None
    # Hooks filled in by later components.
    node_proxy: Callable[..., Awaitable[Response]] | None = None
    evictor: Callable[[str | None, str], Awaitable[None]] | None = None
    metrics_source: metrics_api.MetricsSource | None = None  # serves metrics.k8s.io (kubectl top, HPA) when set
    custom_groups: set[str] = field(default_factory=set)
    server_address: str = "127.0.0.1:6443"
    tokens: TokenIssuer = field(default_factory=TokenIssuer)  # signs serviceaccounts/{name}/token answers

    def __post_init__(self) -> None:
        self.allocator = self.allocator or ServiceAllocator(self.options.service_cidr)
        self.namespaces = NamespaceChecker(self.store)
        self._tasks: set[asyncio.Task[Any]] = set()
        if self.registry.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions") is None:
            self.registry.add(crd_resource())
        for rt in list(self.registry.all()):
            self.add_resource(rt)
        self.crds = CrdController(self)
        if self.node_proxy is None:
            # pods/log and pods/exec go to the pod's kubelet; the kubelet package owns that client (as upstream's
            # pkg/kubelet/client), imported here so the API server does not depend on it at import time.
            from controlplane.kubelet.apiproxy import NodeProxy

            self.node_proxy = NodeProxy(self)

    def add_resource(self, rt: ResourceType, replace: bool = False) -> ResourceStore:
        """Serve ``rt``. Built-ins are added at construction; the CRD controller adds custom ones at run time."""
        key = (rt.group, rt.version, rt.plural)
        previous = self.stores.get(key)
        if previous is not None and not replace:
            return previous
        store = ResourceStore(rt, self.store, self.namespaces,
                              self.allocator if rt.kind == "Service" and rt.group == "" else None,
                              watch_window=self.options.watch_window)
        self.stores[key] = store
        if self.registry.lookup(*key) is not rt:
            self.registry.add(rt)
        if previous is not None:
            self._background(previous.cacher.stop())
        return store

    def remove_resource(self, rt: ResourceType) -> None:
        key = (rt.group, rt.version, rt.plural)
        self.registry.remove(*key)
        store = self.stores.pop(key, None)
        if store is not None:
            self._background(store.cacher.stop())

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def store_for(self, group: str, version: str, plural: str) -> ResourceStore:
        return self.stores[(group, version, plural)]

    def is_custom(self, rt: ResourceType) -> bool:
        return rt.group in self.custom_groups

    async def bootstrap(self) -> None:
        """Create what every cluster has from the start: the initial namespaces and the `kubernetes` Service."""
        # Several API servers may share one store (etcd) and start together: whichever creates an object first
        # wins, and the others' AlreadyExists means the object is there, which is all bootstrap wants.
        namespaces = self.store_for("", "v1", "namespaces")
        for name in INITIAL_NAMESPACES:
            try:
                await namespaces.get(None, name)
            except errors.ApiError:
                with _already_exists_is_fine():
                    await namespaces.create(None, {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": name}}, WriteContext(None))
        priority_classes = self.store_for("scheduling.k8s.io", "v1", "priorityclasses")
        for name, value in SYSTEM_PRIORITY_CLASSES.items():
            try:
                await priority_classes.get(None, name)
            except errors.ApiError:
                with _already_exists_is_fine():
                    await priority_classes.create(None, {
                        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                        "value": value, "description": "Used for system critical pods that must not be moved "
                        "from their current node." if name == "system-node-critical" else
                        "Used for system critical pods that must run in the cluster, but can be moved to another "
                        "node if necessary."}, WriteContext(None))
        services = self.store_for("", "v1", "services")
        listing = await services.list(None, _EMPTY_LABELS, _EMPTY_FIELDS)
        assert self.allocator is not None
        self.allocator.seed(listing["items"])
        try:
            await services.get("default", "kubernetes")
        except errors.ApiError:
            with _already_exists_is_fine():
                await services.create("default", {
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                    "spec": {"clusterIP": self.allocator.kubernetes_service_ip,
                             "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
                }, WriteContext("default"))
        await self.crds.start()

    async def close(self) -> None:
        await self.crds.stop()
        for store in list(self.stores.values()):
            await store.cacher.stop()
        for task in list(self._tasks):
            await task


@contextlib.contextmanager
def _already_exists_is_fine() -> Iterator[None]:
    try:
        yield
    except errors.ApiError as exc:
        if exc.code != 409:
            raise


_EMPTY_LABELS = LabelSelector()
_EMPTY_FIELDS = FieldSelector()


def version_info() -> dict[str, Any]:
    return {
        "major": "1", "minor": KUBERNETES_MINOR, "gitVersion": GIT_VERSION, "gitCommit": "ccmkit",
        "gitTreeState": "clean", "buildDate": "2026-11-25T00:00:00Z",
        "goVersion": f"python{platform.python_version()}", "compiler": "cpython",
        "platform": f"{platform.system().lower()}/{_arch()}",
    }


def _arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class _ApiApp(Starlette):
    """Starlette, except that resource requests (`/api/v1/...`, `/apis/G/V/...`: nearly all of the traffic) go
    straight to the REST handlers. Starlette's router would try a dozen route patterns per request and its two
    middleware layers wrap every `send`; the handlers parse the path themselves and answer every error with a
    Status, so neither adds anything there. Discovery, OpenAPI, health, metrics.k8s.io and WebSockets are routed
    by Starlette as before."""

    # Served by routes of their own (metrics_api.install), which the generic resource routes come after.
    _ROUTED = (f"/apis/{metrics_api.GROUP_VERSION}/",)

    def __init__(self, handlers: ApiHandlers) -> None:
        super().__init__()
        self._handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path") and not scope["path"].startswith(self._ROUTED):
            target = self._handlers.resource_path(scope["path"])
            if target is not None:
                scope["app"] = self
                await self._handlers.serve(scope, receive, send, *target)
                return
        await super().__call__(scope, receive, send)


def create_app(state: ServerState) -> Starlette:
    """The ASGI app. Plain Starlette (FastAPI's core): the API is routed by hand, and FastAPI's pydantic layer would
    add startup time and per-request work this server does not use (see docs/ARCHITECTURE.md)."""
    handlers = ApiHandlers(state)
    app = _ApiApp(handlers)
    app.state.api = state
    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]

    async def healthy(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def version(request: Request) -> Response:
        return json_response(version_info())

    def aggregated(request: Request, legacy: bool) -> Response | None:
        version = discovery.aggregated_version(request.headers.get("accept", ""))
        if version is None:
            return None
        body = discovery.aggregated(state.registry, legacy, version)
        if not legacy:
            metrics_api.extend_aggregated(body, state)
        return Response(jsonutil.dumps(body),
                        media_type=discovery.aggregated_media_type(version), headers={"Vary": "Accept"})

    async def api(request: Request) -> Response:
        return aggregated(request, True) or json_response(discovery.api_versions(state.server_address))

    async def api_v1(request: Request) -> Response:
        return json_response(discovery.resource_list(state.registry, "", "v1"))

    async def apis(request: Request) -> Response:
        return aggregated(request, False) or json_response(
            metrics_api.extend_group_list(discovery.group_list(state.registry), state))

    async def api_group(request: Request) -> Response:
        group = discovery.group(state.registry, request.path_params["group"])
        if group is None:
            return error_response(errors.not_found_path())
        return json_response(group)

    async def api_group_version(request: Request) -> Response:
        p = request.path_params
        body = discovery.resource_list(state.registry, p["group"], p["version"])
        if body is None:
            return error_response(errors.not_found_path())
        return json_response(body)

    openapi = OpenApiCache(state.registry)

    async def openapi_root(request: Request) -> Response:
        return Response(openapi.root(), media_type="application/json")

    async def openapi_document(request: Request) -> Response:
        body = openapi.document(request.path_params["path"])
        if body is None:
            return error_response(errors.not_found_path())
        return Response(body, media_type="application/json")

    async def not_found(request: Request) -> Response:
        return error_response(errors.not_found_path())

    async def openid_configuration(request: Request) -> Response:
        return json_response(state.tokens.openid_configuration())

    async def jwks(request: Request) -> Response:
        return Response(jsonutil.dumps(state.tokens.jwks()), media_type="application/jwk-set+json")

    for path in ("/healthz", "/livez", "/readyz"):
        app.add_route(path, healthy, methods=["GET"])
    app.add_route("/version", version, methods=["GET"])
    app.add_route("/api", api, methods=["GET"])
    app.add_route("/api/v1", api_v1, methods=["GET"])
    app.add_route("/apis", apis, methods=["GET"])
    app.add_route("/apis/{group}", api_group, methods=["GET"])
    app.add_route("/apis/{group}/{version}", api_group_version, methods=["GET"])
    app.add_route("/openapi/v3", openapi_root, methods=["GET"])
    app.add_route("/openapi/v3/{path:path}", openapi_document, methods=["GET"])
    app.add_route("/.well-known/openid-configuration", openid_configuration, methods=["GET"])
    app.add_route("/openid/v1/jwks", jwks, methods=["GET"])
    app.add_route("/api/v1/{path:path}", handlers.core, methods=methods)
    # kubectl exec (1.30+) upgrades to a WebSocket (v5.channel.k8s.io); HTTP routes never see WebSocket scopes.
    app.router.add_websocket_route("/api/v1/namespaces/{namespace}/pods/{name}/{subresource}", handlers.pod_stream)
    app.add_route("/apis/{group}/{version}/{path:path}", handlers.grouped, methods=methods)
    app.add_route("/{path:path}", not_found, methods=methods)
    metrics_api.install(app, state)  # ahead of the generic /apis/{group} routes

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, errors.ApiError)
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 405:
            return error_response(errors.method_not_allowed())
        return error_response(errors.ApiError(exc.status_code, "BadRequest" if exc.status_code == 400 else "Unknown",
                                              str(exc.detail)))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return error_response(errors.internal(type(exc).__name__))

    app.add_exception_handler(errors.ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)

    return app
