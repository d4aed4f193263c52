"""HTTP/1.1 to one API server without a general-purpose client's cost per request.

Every component talks to one origin over keep-alive connections, thousands of small requests a second (a kubelet
pool renews a thousand Leases, the scheduler posts a binding and an event per pod). httpx spent 1–2 ms of CPU on
each of them here — its URL and header models, auth flow, and httpcore's pool scan — more than the API server
spent answering. This module does only what those calls need: a pool of persistent connections to one host (TLS or
not), requests written as one buffer, responses parsed by httptools (llhttp, the parser uvicorn uses), whole bodies
or streamed (watches). Proxies and injected test transports still go through httpx; ``rest.py`` chooses.

Failures raise httpx's exception classes (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``...), so callers
keep catching ``httpx.TransportError`` whichever path served them. A request that finds its reused keep-alive
connection already closed by the server (before any byte of an answer) is retried once on a fresh connection, as
urllib3 and httpcore do; nothing else is retried.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote, urlencode, urlsplit

import httptools
import httpx

# Bytes a stream may buffer before the connection stops reading (a slow watch consumer must not grow memory).
STREAM_HIGH_WATER = 1 << 20
_SAFE_PATH = re.compile(r"[A-Za-z0-9/._~:@!$&'()*+,;=%-]*")


class _Stale(Exception):
    """A reused connection was closed by the server before the request got any answer: safe to retry once."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; carries one request at a time (no pipelining)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False
        self.answered = False  # bytes of the current response have arrived
        self.complete = True  # the current response (if any) is whole
        self.keep_alive = True
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.header_sink: list[tuple[bytes, bytes]] | None = None  # the current request's caller wants the headers
        self.stream: StreamResponse | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response from the API server: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        if not self.complete:
            if not self.answered and self.reused:
                self._fail(_Stale())
            elif not self.answered:
                self._fail(httpx.RemoteProtocolError("the API server closed the connection without answering"))
            else:
                self._fail(httpx.ReadError("the API server closed the connection in the middle of a response"))

    # -- httptools callbacks ----------------------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self.stream is not None:
            self.stream._headers(self.parser.get_status_code())

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.header_sink is not None:
            self.header_sink.append((name, value))

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self.stream._feed(body)
        else:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._cancel_timer()
        if self.stream is not None:
            self.stream._end()
            return
        waiter, self.waiter = self.waiter, None
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body = []
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    # -- requests ---------------------------------------------------------------------------------------------

    def usable(self) -> bool:
        return not self.closed and self.complete and self.keep_alive and self.transport is not None \
            and not self.transport.is_closing()

    def begin(self, data: bytes, timeout: float | None) -> None:
        self.answered = False
        self.complete = False
        if timeout is not None:
            self.timer = self.loop.call_later(timeout, self._timed_out)
        assert self.transport is not None
        self.transport.write(data)

    def request(self, data: bytes, timeout: float | None,
                headers: list[tuple[bytes, bytes]] | None = None) -> asyncio.Future[tuple[int, bytes]]:
        self.waiter = self.loop.create_future()
        self.header_sink = headers
        self.begin(data, timeout)
        return self.waiter

    def _timed_out(self) -> None:
        self.timer = None
        if self.stream is not None:
            self.stream._fail(httpx.ReadTimeout("timed out waiting for the API server's answer"))
        else:
            self._fail(httpx.ReadTimeout("timed out waiting for the API server's answer"))
        self.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        if self.stream is not None:
            self.stream._fail(exc)
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.closed = True


class StreamResponse:
    """A response read as it arrives (a watch): ``status_code``, ``aiter_bytes()``, ``aread()``, ``aclose()``.

    ``read_timeout`` bounds each wait for more bytes (None: wait as long as it takes; a quiet watch is not dead).
    """

    def __init__(self, conn: _Connection, read_timeout: float | None) -> None:
        self._conn = conn
        self._read_timeout = read_timeout
        self.status_code = 0
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._eof = False
        self._error: BaseException | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False
        self.headers_received: asyncio.Future[int] = conn.loop.create_future()

    def _headers(self, status: int) -> None:
        self.status_code = status
        if not self.headers_received.done():
            self.headers_received.set_result(status)

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > STREAM_HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def _end(self) -> None:
        self._eof = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, _Stale):
            exc = httpx.RemoteProtocolError("the API server closed the connection without answering")
        if not self.headers_received.done():
            self.headers_received.set_exception(exc)
        elif not self._eof:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        w, self._wakeup = self._wakeup, None
        if w is not None and not w.done():
            w.set_result(None)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered <= STREAM_HIGH_WATER // 2 and self._conn.transport is not None:
                    self._paused = False
                    self._conn.transport.resume_reading()
                yield chunk
                continue
            if self._error is not None:
                raise self._error
            if self._eof or self._closed:
                return
            self._wakeup = self._conn.loop.create_future()
            if self._read_timeout is None:
                await self._wakeup
            else:
                try:
                    async with asyncio.timeout(self._read_timeout):
                        await self._wakeup
                except TimeoutError:
                    raise httpx.ReadTimeout("no data from the API server within the read timeout") from None

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_bytes()])

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        conn.stream = None
        # A stream stopped before its end leaves unread bytes on the connection: it cannot carry another request.
        conn.pool._release(conn, reusable=self._eof and self._error is None)
        self._wake()


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one server (``http://`` or ``https://``), at most ``max_connections``."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str],
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_connections: int = 256,
        max_idle: int = 64,
        connect_timeout: float = 10.0,
        timeout: float | None = 30.0,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {url!r}: only http and https")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.ssl = ssl_context if parts.scheme == "https" else None
        if self.ssl is None and parts.scheme == "https":
            self.ssl = ssl.create_default_context()
        self.server_hostname = (server_hostname or self.host) if self.ssl is not None else None
        self.max_connections = max(1, max_connections)
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        default_port = 443 if parts.scheme == "https" else 80
        host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        if ":" in self.host:
            host_header = f"[{self.host}]" if self.port == default_port else f"[{self.host}]:{self.port}"
        lines = [f"Host: {host_header}"] + [f"{k}: {v}" for k, v in headers.items()]
        self._common = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._all: set[_Connection] = set()

    # -- the request line and headers -------------------------------------------------------------------------

    def encode(self, method: str, path: str, params: Mapping[str, str] | None, body: bytes | None,
               content_type: str | None, headers: Mapping[str, str] | None = None) -> bytes:
        if not _SAFE_PATH.fullmatch(path):
            path = quote(path, safe="/:@!$&'()*+,;=-._~%")
        target = self.base_path + path
        if params:
            target += "?" + urlencode(params)
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + self._common
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        if body is not None:
            if content_type:
                head += b"Content-Type: " + content_type.encode("latin-1") + b"\r\n"
            return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
        if method in ("POST", "PUT", "PATCH"):
            return head + b"Content-Length: 0\r\n\r\n"
        return head + b"\r\n"

    # -- whole responses ----------------------------------------------------------------------------------------

    async def request(self, data: bytes, timeout: float | None = None, *,
                      headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
        """Send one encoded request and return (status, body); the answer's headers are appended to ``headers``
        when a list is given."""
        timeout = self.timeout if timeout is None else timeout
        for attempt in (0, 1):
            conn = await self._acquire(fresh=attempt > 0)
            try:
                if headers is not None:
                    headers.clear()  # a retried request starts its headers again
                result = await conn.request(data, timeout, headers)
            except _Stale:
                self._release(conn, reusable=False)
                continue
            except BaseException:
                # Cancelled or failed in the middle: the answer may still come, so the connection is spent.
                self._release(conn, reusable=False)
                raise
            self._release(conn, reusable=conn.keep_alive)
            return result
        raise httpx.RemoteProtocolError("the API server closed the connection without answering")

    # -- streams ----------------------------------------------------------------------------------------------

    async def stream(self, data: bytes, *, read_timeout: float | None) -> StreamResponse:
        """Send one encoded request and return once the status line and headers have arrived."""
        for attempt in (0, 1):
            conn = await self._acquire(fresh=attempt > 0)
            stream = StreamResponse(conn, read_timeout)
            conn.stream = stream
            try:
                conn.begin(data, self.timeout)
                await stream.headers_received
            except httpx.RemoteProtocolError:
                if conn.reused and not conn.answered:
                    conn.stream = None
                    self._release(conn, reusable=False)
                    continue
                await stream.aclose()
                raise
            except BaseException:
                await stream.aclose()
                raise
            conn._cancel_timer()  # the request timeout covers getting the headers; the body is read_timeout's
            return stream
        raise httpx.RemoteProtocolError("the API server closed the connection without answering")

    # -- the pool ---------------------------------------------------------------------------------------------

    async def _acquire(self, *, fresh: bool = False) -> _Connection:
        loop = asyncio.get_running_loop()
        if not fresh:
            while self._idle:
                conn = self._idle.pop()
                if conn.usable() and conn.loop is loop:
                    conn.reused = True
                    return conn
                self._discard(conn)
        if self._open >= self.max_connections:
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result(), reusable=True)  # type: ignore[arg-type]
                elif waiter.done() and not waiter.cancelled():
                    self._open -= 1  # the slot handed to us goes unused
                    self._wake_one()
                raise
            if handed is not None:
                if handed.usable() and handed.loop is loop:
                    handed.reused = True
                    return handed
                handed.close()  # unusable after all: keep its slot for a new connection
                self._all.discard(handed)
        else:
            self._open += 1
        try:
            return await self._connect(loop)
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl, server_hostname=self.server_hostname
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {self.host}:{self.port} timed out") from None
        except OSError as e:
            raise httpx.ConnectError(f"cannot connect to the API server at {self.host}:{self.port}: {e}") from e
        self._all.add(conn)
        return conn

    def _release(self, conn: _Connection, *, reusable: bool) -> None:
        if not (reusable and conn.usable()):
            self._discard(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            self._discard(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        if conn in self._all:
            self._all.discard(conn)
            self._open -= 1
            self._wake_one()

    def _lost(self, conn: _Connection) -> None:
        if conn in self._idle:
            self._idle.remove(conn)
            self._discard(conn)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._open += 1  # reserve the slot for the woken waiter, which connects
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
        self._open = 0
