"""The async REST client: one pooled HTTP/1.1 connection set to one API server, and a method per API verb.

Every ccmkit component talks to the API server only through this class, so it stays thin: requests come from
``protocol.py``, objects stay plain dicts, and (de)serialisation is orjson. Namespaced calls that name no namespace
use the object's own namespace, then the config's default namespace — except list, watch and informers, where no
namespace means all namespaces, as in client-go.
"""

from __future__ import annotations

import base64
import builtins
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from . import protocol
from .config import ClientConfig, from_url
from .errors import error_from_response
from .protocol import ApiRequest, PatchType, Selector, object_name, object_namespace
from .resources import Resource
from .transport import ConnectionPool, StreamResponse

USER_AGENT = "ccmkit/0.1"


def component_user_agent(component: str) -> str:
    """The User-Agent a component sends, upstream's shape (``kubelet/v1.32.0 (linux/amd64) ...``): the API server
    takes the part before the first "/" as the field manager of its writes, so managedFields say ``kubelet``,
    ``kube-scheduler`` or ``kube-controller-manager`` as on a real cluster."""
    return f"{component}/v1.32.0 (linux/amd64) ccmkit"

# Watches hold a connection each for minutes, so the pool must outgrow the number of informers a process runs
# (a few dozen) plus its concurrent requests; keep-alive avoids a TCP handshake per request.
DEFAULT_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=60.0)


class ApiClient:
    """``async with ApiClient(config) as client: await client.get(PODS, "web-0", "default")``.

    ``config`` may be a URL string. Requests go over ``transport.ConnectionPool`` (keep-alive HTTP/1.1, cheap per
    request); ``transport`` replaces that with an httpx transport (tests use it to inject faults), and a
    kubeconfig ``proxy-url`` also routes through httpx. ``raw()`` answers with an ``httpx.Response`` either way.
    Network failures surface as ``httpx.TransportError``;
    answers of 400 and above as ``errors.ApiError`` subclasses.
    """

    def __init__(
        self,
        config: ClientConfig | str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits = DEFAULT_LIMITS,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.config = from_url(config) if isinstance(config, str) else config
        cfg = self.config
        headers = {"Accept": protocol.JSON, "User-Agent": user_agent}
        if cfg.token:
            headers["Authorization"] = f"Bearer {cfg.token}"
        elif cfg.username:
            basic = base64.b64encode(f"{cfg.username}:{cfg.password or ''}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        self._headers = headers
        self._limits = limits
        self._transport = transport
        self._extensions = {"sni_hostname": cfg.tls_server_name} if cfg.tls_server_name else None
        self._ssl = cfg.ssl_context()
        self._httpx: httpx.AsyncClient | None = None
        self._pool: ConnectionPool | None = None
        if transport is None and not cfg.proxy_url:
            self._pool = ConnectionPool(
                cfg.server,
                headers=headers,
                ssl_context=self._ssl if isinstance(self._ssl, ssl.SSLContext) else None,
                server_hostname=cfg.tls_server_name,
                max_connections=limits.max_connections or DEFAULT_LIMITS.max_connections or 256,
                max_idle=limits.max_keepalive_connections or 64,
                connect_timeout=min(cfg.timeout, 10.0),
                timeout=cfg.timeout,
            )

    @property
    def _http(self) -> httpx.AsyncClient:
        """The httpx client, made on first use: for proxies and injected transports."""
        if self._httpx is None:
            cfg = self.config
            self._httpx = httpx.AsyncClient(
                base_url=cfg.server,
                headers=self._headers,
                verify=self._ssl,
                proxy=cfg.proxy_url,
                # Proxy variables from the environment would silently route loopback API servers through a proxy;
                # kubeconfig's proxy-url is the explicit way.
                trust_env=False,
                limits=self._limits,
                timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 10.0)),
                transport=self._transport,
            )
        return self._httpx

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._httpx is not None:
            await self._httpx.aclose()

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _namespace(self, resource: Resource, namespace: str | None, obj: Mapping[str, Any] | None = None) -> str | None:
        if not resource.namespaced:
            return None
        return namespace or (object_namespace(obj) if obj is not None else None) or self.config.namespace

    def _build(self, req: ApiRequest, timeout: httpx.Timeout | None = None) -> httpx.Request:
        headers = {"Content-Type": req.content_type} if req.content_type else None
        kwargs: dict[str, Any] = {}
        if timeout is not None:  # None here means the client's default, not "no timeout"
            kwargs["timeout"] = timeout
        if self._extensions:
            kwargs["extensions"] = self._extensions
        return self._http.build_request(
            req.method, req.path, params=req.params or None, content=req.body, headers=headers, **kwargs
        )

    async def send(self, req: ApiRequest) -> dict[str, Any]:
        """Perform one request and return its decoded JSON body (raising ApiError on failure)."""
        pool = self._pool
        if pool is not None:
            status, body = await pool.request(
                pool.encode(req.method, req.path, req.params, req.body, req.content_type)
            )
            return protocol.decode_response(status, body)
        resp = await self._http.send(self._build(req))
        return protocol.decode_response(resp.status_code, resp.content)

    async def open_stream(self, req: ApiRequest, *, read_timeout: float | None = None) -> StreamResponse | httpx.Response:
        """Start a streaming request (a watch) and return the open response; the caller must ``aclose()`` it.

        ``read_timeout`` None waits for data indefinitely: a quiet watch is not a dead one.
        """
        resp: StreamResponse | httpx.Response
        if self._pool is not None:
            data = self._pool.encode(req.method, req.path, req.params, req.body, req.content_type)
            resp = await self._pool.stream(data, read_timeout=read_timeout)
        else:
            timeout = httpx.Timeout(self.config.timeout, connect=min(self.config.timeout, 10.0), read=read_timeout)
            resp = await self._http.send(self._build(req, timeout), stream=True)
        if resp.status_code >= 400:
            try:
                body = await resp.aread()
            finally:
                await resp.aclose()
            raise error_from_response(resp.status_code, body)
        return resp

    async def raw(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Any request the verbs below do not cover (pod logs, /healthz, discovery); ApiError on 400 and above."""
        content_type = None
        if json is not None:
            content = protocol.encode_body(json)
            content_type = protocol.JSON
        pool = self._pool
        if pool is None:
            extra = {"Content-Type": content_type, **(headers or {})} if content_type else headers
            kwargs: dict[str, Any] = {"extensions": self._extensions} if self._extensions else {}
            resp = await self._http.request(method, path, params=params, content=content, headers=extra, **kwargs)
        else:
            answer_headers: list[tuple[bytes, bytes]] = []
            status, body = await pool.request(
                pool.encode(method, path, params, content, content_type, headers), headers=answer_headers
            )
            resp = httpx.Response(status, headers=answer_headers, content=body,
                                  request=httpx.Request(method, self.config.server + path, params=params))
        if resp.status_code >= 400:
            raise error_from_response(resp.status_code, resp.content)
        return resp

    # -- verbs ------------------------------------------------------------------------------------------------

    async def version(self) -> dict[str, Any]:
        return await self.send(ApiRequest("GET", "/version"))

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.send(protocol.get_request(resource, name, self._namespace(resource, namespace)))

    async def list(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> dict[str, Any]:
        """One page of the collection (all namespaces when ``namespace`` is None), as the List object."""
        return await self.send(
            protocol.list_request(
                resource,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=limit,
                continue_=continue_,
                resource_version=resource_version,
                resource_version_match=resource_version_match,
            )
        )

    async def list_all(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        page_size: int = 500,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        """Every page of the collection merged into one List object.

        All pages come from the snapshot of the first (the continue token pins it), so the List's
        ``metadata.resourceVersion`` — the first page's — is where a watch should start.
        """
        first = await self.list(
            resource,
            namespace,
            label_selector=label_selector,
            field_selector=field_selector,
            limit=page_size,
            resource_version=resource_version,
        )
        items: builtins.list[dict[str, Any]] = builtins.list(first.get("items") or [])
        token = (first.get("metadata") or {}).get("continue")
        while token:
            page = await self.list(
                resource,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=page_size,
                continue_=token,
            )
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
        metadata = dict(first.get("metadata") or {})
        metadata.pop("continue", None)
        metadata.pop("remainingItemCount", None)
        return {**first, "metadata": metadata, "items": items}

    async def create(
        self,
        resource: Resource,
        obj: Mapping[str, Any],
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        ns = self._namespace(resource, namespace, obj)
        return await self.send(
            protocol.create_request(resource, _typed(resource, obj), ns, dry_run=dry_run, field_manager=field_manager)
        )

    async def update(
        self, resource: Resource, obj: Mapping[str, Any], *, dry_run: bool = False, field_manager: str | None = None
    ) -> dict[str, Any]:
        """PUT the whole object; its metadata.resourceVersion makes this a compare-and-swap (Conflict if stale)."""
        return await self.update_subresource(
            resource, obj, None, dry_run=dry_run, field_manager=field_manager
        )

    async def update_status(
        self, resource: Resource, obj: Mapping[str, Any], *, dry_run: bool = False, field_manager: str | None = None
    ) -> dict[str, Any]:
        return await self.update_subresource(
            resource, obj, "status", dry_run=dry_run, field_manager=field_manager
        )

    async def update_subresource(
        self,
        resource: Resource,
        obj: Mapping[str, Any],
        subresource: str | None,
        *,
        name: str | None = None,
        namespace: str | None = None,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """PUT to ``<object>/<subresource>`` (e.g. scale); name and namespace default to the object's own."""
        ns = self._namespace(resource, namespace, obj)
        if subresource in (None, "status"):
            obj = _typed(resource, obj)  # the status subresource takes the whole object too
        req = protocol.update_request(
            resource, obj, name or object_name(obj), ns,
            subresource=subresource, dry_run=dry_run, field_manager=field_manager,
        )
        return await self.send(req)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        patch_type: PatchType = "merge",
        subresource: str | None = None,
        field_manager: str | None = None,
        force: bool | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """``patch`` is a dict (merge, strategic, apply), a list of operations (json), or pre-encoded bytes/str."""
        req = protocol.patch_request(
            resource, name, patch, self._namespace(resource, namespace),
            patch_type=patch_type, subresource=subresource, field_manager=field_manager, force=force, dry_run=dry_run,
        )
        return await self.send(req)

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        preconditions: Mapping[str, str] | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Returns what the server answers: the object (still present if finalizers hold it) or a Status."""
        options = protocol.delete_options(
            propagation_policy=propagation_policy,
            grace_period_seconds=grace_period_seconds,
            preconditions=preconditions,
            dry_run=dry_run,
        )
        return await self.send(protocol.delete_request(resource, name, self._namespace(resource, namespace), options))

    async def delete_collection(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        label_selector: Selector | None = None,
        field_selector: Selector | None = None,
        propagation_policy: str | None = None,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete every match in one namespace (the default namespace when None: the API server offers
        deletecollection per namespace only)."""
        options = protocol.delete_options(
            propagation_policy=propagation_policy, grace_period_seconds=grace_period_seconds, dry_run=dry_run
        )
        req = protocol.delete_collection_request(
            resource, self._namespace(resource, namespace), options,
            label_selector=label_selector, field_selector=field_selector,
        )
        return await self.send(req)

    async def get_subresource(
        self, resource: Resource, name: str, subresource: str, namespace: str | None = None
    ) -> dict[str, Any]:
        """GET ``<object>/<subresource>``, e.g. deployments/scale or pods/status."""
        return await self.send(protocol.get_request(resource, name, self._namespace(resource, namespace), subresource))

    async def create_subresource(
        self,
        resource: Resource,
        name: str,
        subresource: str,
        obj: Mapping[str, Any],
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        field_manager: str | None = None,
    ) -> dict[str, Any]:
        """POST to ``<object>/<subresource>``, e.g. pods/binding (the scheduler) or pods/eviction."""
        ns = self._namespace(resource, namespace, obj)
        return await self.send(
            protocol.create_request(
                resource, obj, ns, subresource=subresource, name=name, dry_run=dry_run, field_manager=field_manager
            )
        )


def _typed(resource: Resource, obj: Mapping[str, Any]) -> Mapping[str, Any]:
    # The API server refuses a body without apiVersion/kind ("Object 'Kind' is missing"); the resource already says
    # what they are, so fill them in rather than make every caller repeat them. The caller's dict is not modified.
    if "kind" in obj and "apiVersion" in obj:
        return obj
    return {"apiVersion": resource.api_version, "kind": resource.kind, **obj}
