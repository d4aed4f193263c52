"""Running the API server: bind a socket, serve the app with uvicorn, stop cleanly.

`ApiServer` is what `ccmkit up`, `ccmkit apiserver` and the test fixtures use. It binds its own socket so that
port 0 works (the caller learns the real port from `url`), and it ends open watches before uvicorn shuts down so a
stop never waits on long-lived streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from typing import Any

import uvicorn

from controlplane.apiserver.app import ServerOptions, ServerState, create_app
from controlplane.storage import Store

log = logging.getLogger(__name__)


class ApiServer:
    def __init__(self, store: Store, *, host: str = "127.0.0.1", port: int = 0,
                 options: ServerOptions | None = None) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.options = options or ServerOptions()
        self.state: ServerState | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it Nagle + delayed ACKs put a ~40 ms floor under every request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.state = ServerState(self.store, options=self.options, server_address=f"{self.host}:{self.port}")
        await self.state.bootstrap()
        app = create_app(self.state)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                http=_http_protocol(), ws=_websocket_protocol(), timeout_graceful_shutdown=2,
                                timeout_keep_alive=60,
                                # No X-Forwarded-* rewriting of the client address: nothing here reads it, and the
                                # middleware is one more layer on every request.
                                proxy_headers=False)
        self._server = uvicorn.Server(config)
        # The caller owns signals (the CLI stops the whole cluster in order); uvicorn would otherwise capture SIGTERM
        # and SIGINT while it serves and shut the API server down under the other components.
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="apiserver")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # surfaces the bind/serve error
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.002)

    async def stop(self) -> None:
        if self.state is not None:
            await self.state.close()
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._sock is not None:
            self._sock.close()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _CoalescedWrites:
    """The connection's transport, with the writes made in one event-loop iteration sent as one.

    uvicorn writes a response's status line and headers, then its body, each straight to the socket: two send
    syscalls (and two trips through the transport) for every small JSON answer. Deferring to the end of the
    iteration joins them — and a watch's frames that were offered together — at the cost of one ``call_soon``.
    Anything that ends the connection flushes first, so no byte is reordered or lost.
    """

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _http_protocol() -> Any:
    """uvicorn's httptools protocol writing through ``_CoalescedWrites``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class CoalescingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
            super().connection_made(_CoalescedWrites(transport, self.loop))  # type: ignore[arg-type]

    return CoalescingHttpToolsProtocol


def _websocket_protocol() -> Any:
    """uvicorn's "auto" WebSocket protocol, imported at the first upgrade (pods/exec) rather than at start: the
    websockets package costs ~10 ms of import that `ccmkit up` would otherwise wait for before it answers. uvicorn
    calls ``ws`` with keyword arguments to make each connection's protocol, so a factory serves as the class."""
    if importlib.util.find_spec("websockets") is None:
        return "auto"  # wsproto or none: as uvicorn decides

    def websockets_protocol(**kwargs: Any) -> asyncio.Protocol:
        from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol

        assert AutoWebSocketsProtocol is not None
        return AutoWebSocketsProtocol(**kwargs)

    return websockets_protocol


__all__ = ["ApiServer", "ServerOptions"]
