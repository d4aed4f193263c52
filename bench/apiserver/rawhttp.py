"""A minimal HTTP/1.1 client for the API server benchmarks: keep-alive request/response, and watch streams.

The benchmarks time the server, so the client must add as little as possible: a full client (httpx) spends about a
millisecond of CPU per request on this machine, which on two cores would land in the very latencies being
measured. This one writes a prepared request and reads a Content-Length answer off an asyncio Protocol. Watch
streams record the arrival time of each object name in the callback that received its bytes, before any parsing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from urllib.parse import urlsplit


def split_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def request_bytes(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


class _ResponseProtocol(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._try_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed by the server"))

    def _try_complete(self) -> None:
        if self.waiter is None or self.waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        match = re.search(r"(?im)^content-length:\s*(\d+)", head)
        if match is None:
            self.waiter.set_exception(ValueError("the benchmark client only reads Content-Length answers"))
            return
        total = end + 4 + int(match.group(1))
        if len(self.buffer) < total:
            return
        status = int(head[9:12])
        body = bytes(self.buffer[end + 4:total])
        del self.buffer[:total]
        self.waiter.set_result((status, body))


class Connection:
    def __init__(self, protocol: _ResponseProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, url: str) -> Connection:
        host, port = split_url(url)
        transport, protocol = await asyncio.get_running_loop().create_connection(_ResponseProtocol, host, port)
        protocol.transport = transport  # uvloop may call connection_made only after create_connection returns
        return cls(protocol)

    @property
    def usable(self) -> bool:
        return not self._protocol.lost

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one prepared request; the answer's status and body."""
        p = self._protocol
        assert p.transport is not None
        p.waiter = asyncio.get_running_loop().create_future()
        p.transport.write(raw)
        try:
            return await p.waiter
        finally:
            p.waiter = None

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


class Pool:
    """Idle connections, opened on demand: an open-loop sender never waits for a free connection."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def prewarm(self, count: int) -> None:
        for _ in range(count):
            conn = await Connection.open(self.url)
            self._all.append(conn)
            self._idle.append(conn)

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else None
        if conn is None or not conn.usable:
            conn = await Connection.open(self.url)
            self._all.append(conn)
        result = await conn.send(raw)
        self._idle.append(conn)
        return result

    @property
    def opened(self) -> int:
        return len(self._all)

    def close(self) -> None:
        for conn in self._all:
            conn.close()


async def fetch(url: str, method: str = "GET", path: str = "/", body: bytes = b"") -> tuple[int, bytes]:
    """One request on a fresh connection."""
    host, _ = split_url(url)
    conn = await Connection.open(url)
    try:
        return await conn.send(request_bytes(method, path, host, body))
    finally:
        conn.close()


class _WatchProtocol(asyncio.Protocol):
    def __init__(self, pattern: re.Pattern[bytes], on_name: Callable[[bytes, float], None]) -> None:
        self.pattern = pattern
        self.on_name = on_name
        self.tail = b""
        self.headers_seen: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.seen: set[bytes] = set()
        self.transport: asyncio.Transport | None = None

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        text = self.tail + data
        if not self.headers_seen.done():
            end = text.find(b"\r\n\r\n")
            if end < 0:
                self.tail = text
                return
            self.headers_seen.set_result(int(text[9:12]))
            text = text[end + 4:]
        for match in self.pattern.finditer(text):
            name = match.group(1)
            if name not in self.seen:
                self.seen.add(name)
                self.on_name(name, now)
        # Keep enough of the end to complete a name split across two reads; `seen` drops the repeats.
        self.tail = text[-96:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.headers_seen.done():
            self.headers_seen.set_exception(ConnectionError("watch connection closed"))


class WatchStream:
    """A watch over HTTP that calls ``on_name(name, arrival_time)`` for every object name matching ``pattern``."""

    def __init__(self, protocol: _WatchProtocol) -> None:
        self._protocol = protocol

    @classmethod
    async def open(cls, url: str, path: str, pattern: re.Pattern[bytes],
                   on_name: Callable[[bytes, float], None]) -> WatchStream:
        host, port = split_url(url)
        transport, protocol = await asyncio.get_running_loop().create_connection(
            lambda: _WatchProtocol(pattern, on_name), host, port)
        protocol.transport = transport
        transport.write(request_bytes("GET", path, host))
        status = await protocol.headers_seen
        if status != 200:
            raise RuntimeError(f"watch {path} answered {status}")
        return cls(protocol)

    def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()
