"""The keep-alive HTTP/1.1 pool under the ApiClient, against small real TCP servers that misbehave on purpose:
an idle connection closed by the server, a server that hangs, one that hangs up mid-answer, a malformed answer,
more concurrent requests than connections, streamed answers, and a client cancelled mid-request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from controlplane.client import CONFIGMAPS, ApiClient, component_user_agent
from controlplane.client.errors import NotFound
from controlplane.client.transport import ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes] | None:
    """One request off the stream: its request line and body (Content-Length only, as the pool sends)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return lines[0], body


def answer(status: int, body: bytes, *, close: bool = False) -> bytes:
    extra = b"Connection: close\r\n" if close else b""
    return (b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (status, len(body))
            + extra + b"\r\n" + body)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for s in servers:
        s.close()


def pool_for(url: str, **kw: object) -> ConnectionPool:
    return ConnectionPool(url, headers={"Accept": "application/json"}, **kw)  # type: ignore[arg-type]


async def test_keep_alive_reuses_one_connection(serve) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while (req := await read_request(reader)) is not None:
            writer.write(answer(200, b'{"line": "%s"}' % req[0].encode()))

    pool = pool_for(await serve(handler))
    for i in range(5):
        status, body = await pool.request(pool.encode("GET", f"/x/{i}", {"a": "b c"}, None, None))
        assert status == 200 and body == b'{"line": "GET /x/%d?a=b+c HTTP/1.1"}' % i
    assert connections == 1
    await pool.aclose()


async def test_idle_connection_closed_by_the_server_is_retried_on_a_new_one(serve) -> None:
    processed: list[str] = []
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        req = await read_request(reader)
        assert req is not None
        processed.append(req[0])
        writer.write(answer(201, b"{}"))
        await writer.drain()
        # The server's keep-alive timeout fires just as the client reuses the connection: the next request's
        # bytes arrive and are dropped unprocessed with the connection.
        await read_request(reader)
        writer.close()

    pool = pool_for(await serve(handler))
    assert (await pool.request(pool.encode("POST", "/a", None, b"{}", "application/json")))[0] == 201
    assert (await pool.request(pool.encode("POST", "/b", None, b"{}", "application/json")))[0] == 201
    assert processed == ["POST /a HTTP/1.1", "POST /b HTTP/1.1"]
    assert connections == 2
    await pool.aclose()


async def test_a_reused_connection_failing_twice_is_an_error(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()  # never answers anything

    pool = pool_for(await serve(handler))
    with pytest.raises(httpx.RemoteProtocolError, match="without answering"):
        await pool.request(pool.encode("GET", "/", None, None, None))
    await pool.aclose()


async def test_a_server_that_never_answers_times_out(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    pool = pool_for(await serve(handler), timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        await pool.request(pool.encode("GET", "/slow", None, None, None))
    assert pool._open == 0  # the timed-out connection is not reused
    await pool.aclose()


async def test_hang_up_mid_answer_is_a_read_error_and_not_retried(serve) -> None:
    requests = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
        await writer.drain()
        writer.close()

    pool = pool_for(await serve(handler))
    with pytest.raises(httpx.ReadError):
        await pool.request(pool.encode("POST", "/c", None, b"{}", "application/json"))
    assert requests == 1
    await pool.aclose()


async def test_malformed_answer_is_a_protocol_error(serve) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    pool = pool_for(await serve(handler))
    with pytest.raises(httpx.RemoteProtocolError):
        await pool.request(pool.encode("GET", "/", None, None, None))
    await pool.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = pool_for(f"http://127.0.0.1:{port}")
    with pytest.raises(httpx.ConnectError, match="cannot connect"):
        await pool.request(pool.encode("GET", "/", None, None, None))
    assert pool._open == 0


async def test_more_requests_than_connections_wait_for_one(serve) -> None:
    live = peak = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            while (req := await read_request(reader)) is not None:
                await asyncio.sleep(0.005)
                writer.write(answer(200, req[1]))
        finally:
            live -= 1

    pool = pool_for(await serve(handler), max_connections=3)
    results = await asyncio.gather(*(
        pool.request(pool.encode("POST", "/", None, b'{"i": %d}' % i, "application/json")) for i in range(40)
    ))
    assert [body for _, body in results] == [b'{"i": %d}' % i for i in range(40)]
    assert peak <= 3
    await pool.aclose()


async def test_cancelled_request_does_not_leak_its_connection(serve) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            if req[0].startswith("GET /hang"):
                await release.wait()
            writer.write(answer(200, b"{}"))

    pool = pool_for(await serve(handler), max_connections=1)
    task = asyncio.create_task(pool.request(pool.encode("GET", "/hang", None, None, None)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    # The one connection slot came back: a request after the cancelled one gets its own (fresh) answer.
    status, body = await asyncio.wait_for(pool.request(pool.encode("GET", "/ok", None, None, None)), 5)
    assert (status, body) == (200, b"{}")
    await pool.aclose()


async def test_stream_yields_chunks_as_they_arrive(serve) -> None:
    step = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"6\r\nfirst\n\r\n")
        await writer.drain()
        await step.wait()
        writer.write(b"7\r\nsecond\n\r\n0\r\n\r\n")
        await writer.drain()

    pool = pool_for(await serve(handler))
    stream = await pool.stream(pool.encode("GET", "/watch", None, None, None), read_timeout=5)
    assert stream.status_code == 200
    chunks = stream.aiter_bytes()
    assert await chunks.__anext__() == b"first\n"
    step.set()
    assert await chunks.__anext__() == b"second\n"
    with pytest.raises(StopAsyncIteration):
        await chunks.__anext__()
    await stream.aclose()
    await pool.aclose()


async def quiet_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers with the headers of a chunked stream, then sends nothing more (a quiet watch)."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(30)


async def test_quiet_stream_times_out_only_with_a_read_timeout(serve) -> None:
    pool = pool_for(await serve(quiet_stream))
    stream = await pool.stream(pool.encode("GET", "/watch", None, None, None), read_timeout=0.2)
    with pytest.raises(httpx.ReadTimeout):
        await stream.aiter_bytes().__anext__()
    await stream.aclose()
    await pool.aclose()


async def test_a_reader_cancelled_as_bytes_arrive_is_cancelled(serve) -> None:
    """Bytes and a cancellation landing in the same loop iteration (an informer stopped while its watch is busy):
    the reader must end cancelled. asyncio.wait_for on Python 3.11 returned the bytes and dropped the cancellation,
    so a stopped informer went on reading its watch and its stop() waited for ever."""
    pool = pool_for(await serve(quiet_stream))
    stream = await pool.stream(pool.encode("GET", "/watch", None, None, None), read_timeout=30)
    waiting = asyncio.Event()

    async def read_all() -> list[bytes]:
        chunks = []
        waiting.set()
        async for chunk in stream.aiter_bytes():
            chunks.append(chunk)
        return chunks

    reader = asyncio.create_task(read_all())
    await waiting.wait()
    await asyncio.sleep(0)  # the reader is now parked waiting for bytes
    stream._feed(b"frame\n")  # what data_received does for a chunk of the body...
    reader.cancel()  # ...and the stop, in the same iteration
    async with asyncio.timeout(5):
        await asyncio.gather(reader, return_exceptions=True)
    assert reader.cancelled()
    await stream.aclose()
    await pool.aclose()


async def test_api_client_over_the_pool_against_the_api_server(apiserver) -> None:
    async with ApiClient(apiserver.url) as client:
        assert client._pool is not None and client._httpx is None
        created = await client.create(CONFIGMAPS, {"metadata": {"name": "pooled"}, "data": {"k": "v"}}, "default")
        assert created["metadata"]["resourceVersion"]
        with pytest.raises(NotFound):
            await client.get(CONFIGMAPS, "absent", "default")
        got = await client.get(CONFIGMAPS, "pooled", "default")
        assert got["data"] == {"k": "v"}
        # Names outside the unreserved set are percent-encoded on the way out, and the server finds nothing.
        with pytest.raises(NotFound):
            await client.get(CONFIGMAPS, "has space", "default")
        # raw() goes over the pool too, and still answers with an httpx.Response carrying the answer's headers.
        discovery = await client.raw("GET", "/api")
        assert discovery.json()["kind"] == "APIVersions"
        assert discovery.headers["content-type"].startswith("application/json")
        with pytest.raises(NotFound):
            await client.raw("GET", "/api/v1/namespaces/default/configmaps/absent")
        assert client._httpx is None


async def test_component_user_agent_names_the_field_manager(apiserver) -> None:
    async with ApiClient(apiserver.url, user_agent=component_user_agent("kube-scheduler")) as client:
        created = await client.create(CONFIGMAPS, {"metadata": {"name": "ua"}, "data": {"k": "v"}}, "default")
    assert [m["manager"] for m in created["metadata"]["managedFields"]] == ["kube-scheduler"]
