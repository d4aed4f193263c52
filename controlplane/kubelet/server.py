"""The kubelet's own HTTP server: container logs, exec, the pods it runs and /stats/summary, on upstream's paths.

The API server relays ``kubectl logs`` and ``kubectl exec`` here (apiproxy.py), whether the kubelet runs in its
process or on another machine, so there is one code path for both. A pool serves all its nodes on one port: the
routes answer at the root for pod-addressed calls (a pod names its node) and under ``/nodes/<node>/`` for each node.
Exec speaks the WebSocket channel protocol (``v5.channel.k8s.io``, ``v4``): byte 0 of each binary frame is the
channel (0 stdin, 1 stdout, 2 stderr, 3 the final Status, 4 resize; v5 adds 255 = close a channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from .cri.api import STDERR, STDIN, STDOUT, CRIError, ExecRequest, ExecSession
from .cri.streaming import CLOSE_SIGNAL, status_frame
from .logs import LogOptions, read_logs

if TYPE_CHECKING:
    from .kubelet import Kubelet, PodRecord
    from .pool import KubeletPool

log = logging.getLogger(__name__)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true")


class _NotHere(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class KubeletServer:
    def __init__(self, pool: KubeletPool, host: str = "127.0.0.1", port: int = 0) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        routes: list[Any] = [
            Route("/healthz", self.healthz),
            Route("/pods", self.pods),
            Route("/stats/summary", self.stats),
            Route("/containerLogs/{namespace}/{pod}/{container}", self.logs),
            WebSocketRoute("/exec/{namespace}/{pod}/{container}", self.exec),
        ]
        self.app = Starlette(routes=[*routes, Mount("/nodes/{node}", routes=routes)])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.port))
        sock.listen(512)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="kubelet-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the kubelet server stopped while starting")
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                async with asyncio.timeout(5):
                    await self._task
        if self._sock is not None:
            self._sock.close()

    # -- resolution ---------------------------------------------------------------------------------------------

    def _node(self, conn: HTTPConnection) -> Kubelet:
        node = conn.path_params.get("node")
        if node is not None:
            k = self.pool.kubelets.get(node)
            if k is None:
                raise _NotHere(404, f'node "{node}" is not served here')
            return k
        if len(self.pool.kubelets) == 1:
            return next(iter(self.pool.kubelets.values()))
        raise _NotHere(400, "this server runs several nodes: use /nodes/<node>/...")

    def _pod(self, conn: HTTPConnection) -> tuple[Kubelet, PodRecord]:
        ns, name = conn.path_params["namespace"], conn.path_params["pod"]
        if conn.path_params.get("node") is not None or len(self.pool.kubelets) == 1:
            k: Kubelet | None = self._node(conn)
        else:
            k = self.pool.kubelet_for_pod(ns, name)
        rec = k.pod_by_key(ns, name) if k is not None else None
        if k is None or rec is None or rec.cleaned:
            raise _NotHere(404, f'pod "{ns}/{name}" not found')
        return k, rec

    # -- handlers -----------------------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    async def pods(self, request: Request) -> Response:
        try:
            return _json(self._node(request).pod_list())
        except _NotHere as e:
            return PlainTextResponse(e.message, e.status)

    async def stats(self, request: Request) -> Response:
        try:
            return _json(await self._node(request).stats_summary())
        except _NotHere as e:
            return PlainTextResponse(e.message, e.status)

    async def logs(self, request: Request) -> Response:
        q = request.query_params
        try:
            k, rec = self._pod(request)
            container = k.log_container(rec, request.path_params["container"], _flag(q.get("previous")))
            since: datetime | None = None
            if q.get("sinceSeconds"):
                since = datetime.fromtimestamp(time.time() - int(q["sinceSeconds"]), UTC)
            elif q.get("sinceTime"):
                since = datetime.fromisoformat(q["sinceTime"])
            options = LogOptions(
                follow=_flag(q.get("follow")),
                tail_lines=int(q["tailLines"]) if q.get("tailLines") else None,
                since=since,
                timestamps=_flag(q.get("timestamps")),
                limit_bytes=int(q["limitBytes"]) if q.get("limitBytes") else None,
            )
        except _NotHere as e:
            return PlainTextResponse(e.message, e.status)
        except (ValueError, LookupError) as e:
            return PlainTextResponse(str(e), 400)
        cid = container.id

        async def running() -> bool:
            return await k.container_running(cid)

        return StreamingResponse(read_logs(container.log_path, options, running), media_type="text/plain")

    async def exec(self, ws: WebSocket) -> None:
        q = ws.query_params
        cmd = q.getlist("command")
        try:
            k, rec = self._pod(ws)
            name = ws.path_params["container"]
            cid = k.running_container_id(rec, name)
            if cid is None:
                raise _NotHere(400, f'unable to upgrade connection: container not found ("{name}")')
            if not cmd:
                raise _NotHere(400, "you must specify at least 1 command")
        except _NotHere as e:
            with contextlib.suppress(RuntimeError):
                await ws.send_denial_response(PlainTextResponse(e.message, e.status))
                return
            await ws.close()
            return
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        protocol = next((p for p in PROTOCOLS if p in offered), None)
        if protocol is None:
            await ws.send_denial_response(PlainTextResponse(
                f"unable to upgrade connection: no supported protocol among {offered}", 400))
            return
        tty = _flag(q.get("tty"))
        want = {STDOUT: _flag(q.get("output", q.get("stdout"))),
                STDERR: _flag(q.get("error", q.get("stderr"))) and not tty}
        stdin = _flag(q.get("input", q.get("stdin")))
        await ws.accept(subprotocol=protocol)
        try:
            session = await k.runtime.exec(ExecRequest(cid, cmd, tty=tty, stdin=stdin, stdout=want[STDOUT],
                                                       stderr=want[STDERR]))
        except CRIError as e:
            await ws.send_bytes(status_frame(None, cmd, error=str(e)))
            await ws.close()
            return
        pump = asyncio.ensure_future(self._stdin(ws, session, protocol)) if stdin else None
        try:
            while (chunk := await session.read()) is not None:
                if want.get(chunk[0]):
                    await ws.send_bytes(bytes([chunk[0]]) + chunk[1])
            try:
                frame = status_frame(await session.wait(), cmd)
            except CRIError as e:
                frame = status_frame(None, cmd, error=str(e))
            await ws.send_bytes(frame)
            await ws.close()
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away; the command is killed below
        finally:
            if pump is not None:
                pump.cancel()
            await session.close()

    @staticmethod
    async def _stdin(ws: WebSocket, session: ExecSession, protocol: str) -> None:
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                frame = message.get("bytes") or (message.get("text") or "").encode()
                if not frame:
                    continue
                if frame[0] == STDIN and len(frame) > 1:
                    await session.write_stdin(frame[1:])
                elif frame[0] == CLOSE_SIGNAL and frame[1:2] == bytes([STDIN]) and protocol.startswith("v5"):
                    await session.close_stdin()
        except (WebSocketDisconnect, CRIError, ConnectionError, RuntimeError):
            pass
