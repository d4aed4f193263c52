"""CRI exec streaming: the WebSocket side of ``Exec``, as a server for our runtimes and a client for any runtime.

CRI's Exec answers only a URL; the bytes flow over the runtime's streaming server in Kubernetes' channel protocol
(``v4.channel.k8s.io``: binary frames whose first byte is the channel, 0 stdin, 1 stdout, 2 stderr, 3 the final
status as a metav1.Status; ``v5`` adds frame ``[255, 0]`` to close stdin). containerd's streaming server speaks it,
so the remote runtime turns the URL into an ExecSession with ``WebSocketExecSession``, and our gRPC server serves
the same protocol in front of an in-process runtime with ``ExecStreamServer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from http import HTTPStatus

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from .api import STDERR, STDIN, STDOUT, CRIError, ExecRequest, ExecSession, RuntimeService, UnimplementedError

V5 = Subprotocol("v5.channel.k8s.io")
V4 = Subprotocol("v4.channel.k8s.io")
PROTOCOLS = [V5, V4]
ERROR_CHANNEL, RESIZE_CHANNEL, CLOSE_SIGNAL = 3, 4, 255


def status_frame(exit_code: int | None, cmd: list[str], error: str = "") -> bytes:
    """The error-channel frame that ends a v4/v5 stream, worded as the kubelet's streaming server words it."""
    if error:
        status: dict[str, object] = {"metadata": {}, "status": "Failure", "message": error, "reason": "InternalError"}
    elif exit_code == 0:
        status = {"metadata": {}, "status": "Success"}
    else:
        status = {
            "metadata": {},
            "status": "Failure",
            "message": f"command terminated with non-zero exit code: error executing command {cmd}, "
            f"exit code {exit_code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
        }
    return bytes([ERROR_CHANNEL]) + json.dumps(status, separators=(",", ":")).encode()


def exit_code_from_status(payload: bytes) -> int:
    """The exit code a status frame reports; a failure that is not an exit code raises CRIError."""
    status = json.loads(payload or b"{}")
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in status.get("details", {}).get("causes", []):
            if cause.get("reason") == "ExitCode":
                return int(cause["message"])
    raise CRIError(status.get("message") or "exec failed")


# ---------------------------------------------------------------------------------------------------------------
# Client


class WebSocketExecSession:
    """An ExecSession over a streaming URL that CRI's Exec returned."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._buffer: deque[tuple[int, bytes]] = deque()
        self._exit_code: int | None = None
        self._error: CRIError | None = None
        self._ended = False

    @classmethod
    async def connect(cls, url: str) -> WebSocketExecSession:
        ws_url = "ws" + url[len("http") :] if url.startswith("http") else url
        # compression off: containerd's server does not negotiate it; proxy off: the URL is on this machine.
        ws = await connect(ws_url, subprotocols=PROTOCOLS, compression=None, proxy=None, max_size=None)
        return cls(ws)

    async def _next_frame(self) -> tuple[int, bytes] | None:
        """The next output chunk from the wire, or None at the end (recording the exit status on the way)."""
        while not self._ended:
            try:
                frame = await self._ws.recv()
            except ConnectionClosed:
                self._ended = True
                break
            if isinstance(frame, str):
                frame = frame.encode()
            if not frame:
                continue
            channel, data = frame[0], frame[1:]
            if channel == ERROR_CHANNEL:
                try:
                    self._exit_code = exit_code_from_status(data)
                except CRIError as e:
                    self._error = e
            elif channel in (STDOUT, STDERR) and data:
                return channel, data
            # Empty frames (containerd opens each channel with one) and unknown channels carry nothing.
        return None

    async def read(self) -> tuple[int, bytes] | None:
        if self._buffer:
            return self._buffer.popleft()
        return await self._next_frame()

    async def write_stdin(self, data: bytes) -> None:
        await self._ws.send(bytes([STDIN]) + data)

    async def close_stdin(self) -> None:
        if self._ws.subprotocol != V5:
            raise UnimplementedError("the runtime's streaming server cannot close stdin (it speaks only v4)")
        await self._ws.send(bytes([CLOSE_SIGNAL, STDIN]))

    async def wait(self) -> int:
        while (chunk := await self._next_frame()) is not None:
            self._buffer.append(chunk)
        if self._error is not None:
            raise self._error
        if self._exit_code is None:
            raise CRIError("exec stream ended without an exit status")
        return self._exit_code

    async def close(self) -> None:
        self._ended = True
        await self._ws.close()


# ---------------------------------------------------------------------------------------------------------------
# Server


class ExecStreamServer:
    """Serves ``/exec/<token>`` for the Exec calls of one runtime, on a loopback port. A token is single use and
    expires after ``ttl`` seconds, like the kubelet streaming server's request cache."""

    def __init__(self, runtime: RuntimeService, host: str = "127.0.0.1", ttl: float = 60.0) -> None:
        self.runtime = runtime
        self.host = host
        self.ttl = ttl
        self._pending: dict[str, tuple[float, ExecRequest]] = {}
        self._server: Server | None = None
        self._port = 0

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            0,
            subprotocols=PROTOCOLS,
            compression=None,
            max_size=None,
            process_request=self._check_token,
        )
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def register(self, request: ExecRequest) -> str:
        now = time.monotonic()
        for token in [t for t, (expires, _) in self._pending.items() if expires < now]:
            del self._pending[token]
        token = secrets.token_urlsafe(12)
        self._pending[token] = (now + self.ttl, request)
        return f"http://{self.host}:{self._port}/exec/{token}"

    def _check_token(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse unknown or expired tokens before the WebSocket handshake, with a plain 404."""
        pending = self._pending.get(request.path.rsplit("/", 1)[-1])
        if pending is None or pending[0] < time.monotonic():
            return ws.respond(HTTPStatus.NOT_FOUND, "unknown or expired exec token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        token = ws.request.path.rsplit("/", 1)[-1]
        pending = self._pending.pop(token, None)
        if pending is None or pending[0] < time.monotonic():
            await ws.close(1008, "unknown or expired exec token")
            return
        request = pending[1]
        try:
            session: ExecSession = await self.runtime.exec(request)
        except CRIError as e:
            await ws.send(status_frame(None, request.cmd, error=str(e)))
            await ws.close()
            return
        stdin_pump = asyncio.create_task(self._pump_stdin(ws, session))
        try:
            while (chunk := await session.read()) is not None:
                await ws.send(bytes([chunk[0]]) + chunk[1])
            try:
                await ws.send(status_frame(await session.wait(), request.cmd))
            except CRIError as e:
                await ws.send(status_frame(None, request.cmd, error=str(e)))
            await ws.close()
        except ConnectionClosed:
            pass  # the client went away; the session is killed below
        finally:
            stdin_pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await stdin_pump
            await session.close()

    @staticmethod
    async def _pump_stdin(ws: ServerConnection, session: ExecSession) -> None:
        try:
            async for frame in ws:
                if isinstance(frame, str):
                    frame = frame.encode()
                if not frame:
                    continue
                if frame[0] == STDIN and len(frame) > 1:
                    await session.write_stdin(frame[1:])
                elif frame[0] == CLOSE_SIGNAL and frame[1:2] == bytes([STDIN]) and ws.subprotocol == V5:
                    await session.close_stdin()
                # RESIZE_CHANNEL: no TTYs here, nothing to resize.
        except (ConnectionClosed, CRIError, ConnectionError):
            pass
