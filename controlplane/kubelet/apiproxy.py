"""The API server's side of pods/log and pods/exec: find the pod's kubelet and relay the request to it.

As upstream's pkg/kubelet/client serves kube-apiserver, this module lives with the kubelet but runs in the API
server (``ServerState.node_proxy``). The kubelet is found in ``LOCAL_KUBELETS`` when it runs in this process (a
simulated node has no reachable address, and a node of an external cloud provider has none until the CCM sets
it), else at the Node's InternalIP and ``status.daemonEndpoints.kubeletEndpoint.Port``. Logs are relayed as a
plain HTTP stream; exec as WebSocket frames of the ``v5/v4.channel.k8s.io`` protocol, passed through unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.requests import HTTPConnection
from starlette.responses import Response, StreamingResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

if TYPE_CHECKING:
    import httpx

# httpx and the websockets client are imported on the first pods/log or pods/exec: the API server constructs the
# NodeProxy as it starts, and its start (so `ccmkit up`'s readiness) should not wait for them.

log = logging.getLogger(__name__)

STREAM_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]


class LocalKubelets:
    """Kubelets of this process, by (API server address, node name) -> base URL of their HTTP server.

    Keyed by the API server's address too, so two clusters in one process (two tests, say) never reach each
    other's kubelets; entries go away when a pool stops. Thread-safe: the API server may run on another loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._urls: dict[tuple[str, str], str] = {}

    def register(self, api_address: str, node: str, base_url: str) -> None:
        with self._lock:
            self._urls[(api_address, node)] = base_url

    def unregister(self, api_address: str, node: str) -> None:
        with self._lock:
            self._urls.pop((api_address, node), None)

    def lookup(self, api_address: str, node: str) -> str | None:
        with self._lock:
            url = self._urls.get((api_address, node))
            if url is None:
                # An API server on 0.0.0.0 is reached at 127.0.0.1: fall back to the node name if it is unique.
                matches = [u for (_, n), u in self._urls.items() if n == node]
                url = matches[0] if len(matches) == 1 else None
            return url


LOCAL_KUBELETS = LocalKubelets()


class ProxyError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": self.message,
                "reason": self.reason, "code": self.code}

    def response(self) -> Response:
        return Response(json.dumps(self.status()), status_code=self.code, media_type="application/json")


def _bad_request(message: str) -> ProxyError:
    return ProxyError(400, "BadRequest", message)


def _container_names(pod: dict[str, Any]) -> list[str]:
    spec = pod.get("spec") or {}
    return [c["name"] for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or []),
                                *(spec.get("ephemeralContainers") or [])]]


def pick_container(pod: dict[str, Any], requested: str | None) -> str:
    """upstream's validation in pod LogLocation/ExecLocation."""
    name = pod["metadata"]["name"]
    if requested:
        if requested not in _container_names(pod):
            raise _bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    default = ((pod["metadata"].get("annotations") or {}).get("kubectl.kubernetes.io/default-container"))
    if default and default in _container_names(pod):
        return default
    containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    if len(containers) == 1:
        return containers[0]
    raise _bad_request(f"a container name must be specified for pod {name}, choose one of: "
                       f"[{' '.join(containers)}]")


class NodeProxy:
    """``ServerState.node_proxy``: ``await proxy(request_or_websocket, pod_store, target)``."""

    def __init__(self, state: Any, registry: LocalKubelets = LOCAL_KUBELETS) -> None:
        self.state = state
        self.registry = registry
        self._client: httpx.AsyncClient | None = None

    @property
    def _http(self) -> httpx.AsyncClient:
        # Made on first use: building the client loads httpcore and an SSL context, which the API server's start
        # (and `ccmkit up`'s readiness) should not wait for.
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(trust_env=False, verify=False, timeout=httpx.Timeout(30.0, read=None))
        return self._client

    async def _kubelet_url(self, node: str) -> str:
        url = self.registry.lookup(self.state.server_address, node)
        if url is not None:
            return url
        nodes = self.state.store_for("", "v1", "nodes")
        try:
            obj = await nodes.get(None, node)
        except Exception:  # noqa: BLE001 - the API error class lives in the API server; any failure means no node
            raise ProxyError(404, "NotFound", f'nodes "{node}" not found') from None
        status = obj.get("status") or {}
        port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
        addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
        host = addresses.get("InternalIP") or addresses.get("ExternalIP") or addresses.get("Hostname")
        if not port or not host:
            raise ProxyError(500, "InternalError", f"no preferred addresses found; known addresses: "
                                                   f"{status.get('addresses') or []}")
        return f"http://{host}:{port}"

    async def _locate(self, conn: HTTPConnection, store: Any, target: Any) -> tuple[dict[str, Any], str, str]:
        pod = await store.get(target.namespace, target.name)
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            raise _bad_request(f"pod {target.name} does not have a host assigned")
        container = pick_container(pod, conn.query_params.get("container"))
        return pod, container, await self._kubelet_url(node)

    async def __call__(self, conn: HTTPConnection, store: Any, target: Any) -> Response | None:
        try:
            if isinstance(conn, WebSocket):
                await self._stream(conn, store, target)
                return None
            if target.subresource == "log":
                return await self._log(conn, store, target)
            if target.subresource in ("exec", "attach"):
                await self._locate(conn, store, target)  # the same errors as the WebSocket path first
                raise _bad_request("this API server streams exec over WebSockets (v5.channel.k8s.io) only; "
                                   "SPDY is not supported")
            raise ProxyError(405, "MethodNotAllowed", f"pods/{target.subresource} is not supported")
        except ProxyError as e:
            if isinstance(conn, WebSocket):
                await _deny(conn, e)
                return None
            return e.response()

    async def _log(self, request: Any, store: Any, target: Any) -> Response:
        import httpx

        _pod, container, base = await self._locate(request, store, target)
        params = {k: v for k, v in request.query_params.items()
                  if k in ("follow", "previous", "tailLines", "sinceSeconds", "sinceTime", "timestamps",
                           "limitBytes")}
        url = f"{base}/containerLogs/{quote(target.namespace)}/{quote(target.name)}/{quote(container)}"
        try:
            resp = await self._http.send(self._http.build_request("GET", url, params=params), stream=True)
        except httpx.HTTPError as e:
            raise ProxyError(500, "InternalError", f"Get \"{url}\": {e}") from None
        if resp.status_code != 200:
            body = (await resp.aread()).decode(errors="replace").strip()
            await resp.aclose()
            raise ProxyError(400 if resp.status_code < 500 else 500,
                             "BadRequest" if resp.status_code < 500 else "InternalError", body)

        async def relay() -> Any:
            try:
                async for chunk in resp.aiter_raw():
                    yield chunk
            finally:
                await resp.aclose()

        return StreamingResponse(relay(), media_type="text/plain")

    async def _stream(self, ws: WebSocket, store: Any, target: Any) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus

        if target.subresource != "exec":
            raise ProxyError(400, "BadRequest", f"pods/{target.subresource} is not supported")
        _pod, container, base = await self._locate(ws, store, target)
        q = ws.query_params
        params: list[tuple[str, str]] = [("command", c) for c in q.getlist("command")]
        if not params:
            raise _bad_request("you must specify at least 1 command")
        for ours, theirs in (("input", "stdin"), ("output", "stdout"), ("error", "stderr"), ("tty", "tty")):
            params.append((ours, "1" if q.get(theirs, "").lower() in ("1", "true") else "0"))
        url = (f"{base.replace('http', 'ws', 1)}/exec/{quote(target.namespace)}/{quote(target.name)}/"
               f"{quote(container)}?{urlencode(params)}")
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        protocols = [p for p in offered if p in STREAM_PROTOCOLS] or STREAM_PROTOCOLS
        try:
            upstream = await connect(url, subprotocols=protocols, compression=None, proxy=None,  # type: ignore[arg-type]
                                     max_size=None, open_timeout=30)
        except InvalidStatus as e:
            body = e.response.body.decode(errors="replace").strip() if e.response.body else ""
            raise _bad_request(body or f"unable to upgrade connection: {e.response.status_code}") from None
        except (OSError, TimeoutError) as e:
            raise ProxyError(500, "InternalError", f"error dialing backend: {e}") from None
        await ws.accept(subprotocol=upstream.subprotocol)
        await _relay(ws, upstream)


async def _deny(ws: WebSocket, error: ProxyError) -> None:
    """Refuse the upgrade with an HTTP answer kubectl can print ("Error from server (BadRequest): ...")."""
    try:
        await ws.send_denial_response(error.response())
    except RuntimeError:
        # The server does not support denial responses: closing before accept answers 403.
        await ws.close()


async def _relay(ws: WebSocket, upstream: Any) -> None:
    from websockets.exceptions import ConnectionClosed

    async def down() -> None:
        try:
            async for frame in upstream:
                if isinstance(frame, str):
                    frame = frame.encode()
                await ws.send_bytes(frame)
        except ConnectionClosed:
            pass

    async def up() -> None:
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                data = message.get("bytes")
                if data is None and message.get("text") is not None:
                    data = message["text"].encode()
                if data:
                    await upstream.send(data)
        except (WebSocketDisconnect, ConnectionClosed):
            pass

    down_task = asyncio.ensure_future(down())
    up_task = asyncio.ensure_future(up())
    try:
        # The command's end (the kubelet closing after the status frame) ends the session; a client that goes
        # away ends it too.
        await asyncio.wait({down_task, up_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        up_task.cancel()
        if not down_task.done():
            down_task.cancel()
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(Exception):
            await ws.close()
