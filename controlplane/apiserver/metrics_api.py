"""The resource metrics API, metrics.k8s.io/v1beta1, as metrics-server serves it: PodMetrics and NodeMetrics.

`kubectl top` and the HorizontalPodAutoscaler read CPU and memory usage from here. The numbers come from a
`MetricsSource` — the kubelets' per-pod usage in a running cluster, an `InMemoryMetricsSource` a test sets by hand —
and the API joins them with the pods and nodes the server stores, as metrics-server does: only existing objects
are reported, label selectors apply, and pod metrics carry the pod's labels. Read-only, like the real one.

Registered with `install(app, state)`; the group appears in discovery (both the legacy and the aggregated form)
only while `state.metrics_source` is set, as an APIService that is available.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from controlplane.apiserver import errors
from controlplane.apiserver.handlers import error_response, json_response
from controlplane.apiserver.selectors import FieldSelector, LabelSelector

GROUP = "metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"


# ------------------------------------------------------------------------------------------------ the source


@dataclass(frozen=True)
class ContainerUsage:
    """One container's usage, as Kubernetes quantities ("250m" CPU, "64Mi" memory)."""

    name: str
    cpu: str = "0"
    memory: str = "0"


@dataclass(frozen=True)
class PodUsage:
    namespace: str
    name: str
    containers: tuple[ContainerUsage, ...]
    timestamp: float  # Unix seconds: the end of the measurement window
    window: float = 10.0  # seconds the usage was averaged over


@dataclass(frozen=True)
class NodeUsage:
    name: str
    cpu: str
    memory: str
    timestamp: float
    window: float = 10.0


class MetricsSource(Protocol):
    """Where usage numbers come from. Pods or nodes the source does not know are simply not reported."""

    async def pod_usage(self, namespace: str | None) -> Iterable[PodUsage]:
        """Usage of the pods in ``namespace`` (all namespaces when None)."""
        ...

    async def node_usage(self) -> Iterable[NodeUsage]:
        ...


@dataclass
class InMemoryMetricsSource:
    """A MetricsSource whose numbers are set by hand (tests, demos): ``set_pod("default", "web-1", cpu="200m")``."""

    clock: Any = None  # anything with now() -> Unix seconds; time.time by default
    window: float = 10.0
    pods: dict[tuple[str, str], PodUsage] = field(default_factory=dict)
    nodes: dict[str, NodeUsage] = field(default_factory=dict)

    def _now(self) -> float:
        return float(self.clock.now()) if self.clock is not None else time.time()

    def set_pod(self, namespace: str, name: str, cpu: str = "0", memory: str = "0",
                containers: Mapping[str, Mapping[str, str]] | None = None, container: str = "main") -> None:
        """Set a pod's usage: one container (``cpu``/``memory``), or per container ``{"name": {"cpu": ...}}``."""
        if containers is None:
            containers = {container: {"cpu": cpu, "memory": memory}}
        usage = tuple(ContainerUsage(n, str(u.get("cpu", "0")), str(u.get("memory", "0")))
                      for n, u in containers.items())
        self.pods[(namespace, name)] = PodUsage(namespace, name, usage, self._now(), self.window)

    def remove_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    def set_node(self, name: str, cpu: str, memory: str) -> None:
        self.nodes[name] = NodeUsage(name, cpu, memory, self._now(), self.window)

    async def pod_usage(self, namespace: str | None) -> Iterable[PodUsage]:
        return [u for (ns, _), u in self.pods.items() if namespace is None or ns == namespace]

    async def node_usage(self) -> Iterable[NodeUsage]:
        return list(self.nodes.values())


# ------------------------------------------------------------------------------------------------ wire format


def _time(t: float) -> str:
    return dt.datetime.fromtimestamp(int(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _window(seconds: float) -> str:
    # A Go duration, as metav1.Duration serialises: "10s", "10.5s".
    return f"{seconds:g}s"


def _pod_metrics(usage: PodUsage, pod: Mapping[str, Any]) -> dict[str, Any]:
    meta = pod.get("metadata") or {}
    return {
        "kind": "PodMetrics", "apiVersion": GROUP_VERSION,
        "metadata": {"name": usage.name, "namespace": usage.namespace, "creationTimestamp": _time(time.time()),
                     "labels": dict(meta.get("labels") or {})},
        "timestamp": _time(usage.timestamp), "window": _window(usage.window),
        "containers": [{"name": c.name, "usage": {"cpu": c.cpu, "memory": c.memory}} for c in usage.containers],
    }


def _node_metrics(usage: NodeUsage, node: Mapping[str, Any]) -> dict[str, Any]:
    meta = node.get("metadata") or {}
    return {
        "kind": "NodeMetrics", "apiVersion": GROUP_VERSION,
        "metadata": {"name": usage.name, "creationTimestamp": _time(time.time()),
                     "labels": dict(meta.get("labels") or {})},
        "timestamp": _time(usage.timestamp), "window": _window(usage.window),
        "usage": {"cpu": usage.cpu, "memory": usage.memory},
    }


RESOURCES: list[dict[str, Any]] = [
    {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": ["get", "list"]},
    {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]},
]


def _group() -> dict[str, Any]:
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"name": GROUP, "versions": [version], "preferredVersion": version}


def extend_group_list(body: dict[str, Any], state: Any) -> dict[str, Any]:
    """Add the group to an APIGroupList (GET /apis) while a source is set."""
    if getattr(state, "metrics_source", None) is not None:
        body.setdefault("groups", []).append(_group())
    return body


def extend_aggregated(body: dict[str, Any], state: Any) -> dict[str, Any]:
    """Add the group to an APIGroupDiscoveryList (aggregated discovery of /apis) while a source is set."""
    if getattr(state, "metrics_source", None) is None:
        return body
    resources = [{"resource": r["name"], "responseKind": {"group": GROUP, "version": VERSION, "kind": r["kind"]},
                  "scope": "Namespaced" if r["namespaced"] else "Cluster", "singularResource": r["name"][:-1],
                  "verbs": r["verbs"]} for r in RESOURCES]
    body.setdefault("items", []).append({
        "metadata": {"name": GROUP, "creationTimestamp": None},
        "versions": [{"version": VERSION, "freshness": "Current", "resources": resources}],
    })
    return body


# ------------------------------------------------------------------------------------------------ serving


class MetricsApi:
    """The HTTP side: discovery documents and the four read paths."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def _source(self) -> MetricsSource:
        source = getattr(self.state, "metrics_source", None)
        if source is None:
            raise errors.not_found_path()
        return source  # type: ignore[no-any-return]

    async def group(self, request: Request) -> Response:
        self._source()
        return json_response({"kind": "APIGroup", "apiVersion": "v1", **_group()})

    async def resource_list(self, request: Request) -> Response:
        self._source()
        return json_response({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
                              "resources": RESOURCES})

    async def serve(self, request: Request) -> Response:
        if request.method != "GET":
            return error_response(errors.method_not_allowed())
        try:
            source = self._source()
            parts = [p for p in request.path_params["path"].split("/") if p]
            labels = LabelSelector.parse(request.query_params.get("labelSelector"))
            if parts[:1] == ["nodes"] and len(parts) <= 2:
                return json_response(await self._nodes(source, parts[1] if len(parts) == 2 else None, labels))
            namespace = None
            if parts[:1] == ["namespaces"] and len(parts) >= 3:
                namespace, parts = parts[1], parts[2:]
            if parts[:1] == ["pods"] and len(parts) <= 2:
                name = parts[1] if len(parts) == 2 else None
                if name is not None and namespace is None:
                    raise errors.not_found_path()
                return json_response(await self._pods(source, namespace, name, labels))
            raise errors.not_found_path()
        except errors.ApiError as exc:
            return error_response(exc)

    async def _stored(self, plural: str, namespace: str | None,
                      labels: LabelSelector) -> dict[tuple[str, str], dict[str, Any]]:
        store = self.state.store_for("", "v1", plural)
        listing = await store.list(namespace, labels, FieldSelector(), 0, None)
        return {((i["metadata"].get("namespace") or ""), i["metadata"]["name"]): i for i in listing["items"]}

    async def _pods(self, source: MetricsSource, namespace: str | None, name: str | None,
                    labels: LabelSelector) -> dict[str, Any]:
        pods = await self._stored("pods", namespace, labels)
        items = []
        for usage in await source.pod_usage(namespace):
            pod = pods.get((usage.namespace, usage.name))
            if pod is None or (name is not None and usage.name != name):
                continue
            items.append(_pod_metrics(usage, pod))
        items.sort(key=lambda m: (m["metadata"]["namespace"], m["metadata"]["name"]))
        if name is not None:
            if not items:
                raise errors.ApiError(404, "NotFound", f'podmetrics.metrics.k8s.io "{namespace}/{name}" not found',
                                      name=f"{namespace}/{name}", group=GROUP, kind="pods")
            return items[0]
        return {"kind": "PodMetricsList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}

    async def _nodes(self, source: MetricsSource, name: str | None, labels: LabelSelector) -> dict[str, Any]:
        nodes = await self._stored("nodes", None, labels)
        items = []
        for usage in await source.node_usage():
            node = nodes.get(("", usage.name))
            if node is None or (name is not None and usage.name != name):
                continue
            items.append(_node_metrics(usage, node))
        items.sort(key=lambda m: m["metadata"]["name"])
        if name is not None:
            if not items:
                raise errors.ApiError(404, "NotFound", f'nodemetrics.metrics.k8s.io "{name}" not found',
                                      name=name, group=GROUP, kind="nodes")
            return items[0]
        return {"kind": "NodeMetricsList", "apiVersion": GROUP_VERSION, "metadata": {}, "items": items}


def install(app: Starlette, state: Any) -> MetricsApi:
    """Serve metrics.k8s.io on ``app``. The routes go first, ahead of the generic /apis/{group} ones."""
    api = MetricsApi(state)
    routes = [
        Route(f"/apis/{GROUP}", api.group, methods=["GET"]),
        Route(f"/apis/{GROUP_VERSION}", api.resource_list, methods=["GET"]),
        Route(f"/apis/{GROUP_VERSION}/{{path:path}}", api.serve, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    app.router.routes[0:0] = routes
    return api
