"""h2grpc, the HTTP/2 transport of EtcdStore's unary calls.

Against a real etcd: answers and errors are the ones grpc.aio gets for the same requests (a differential test), and
large bodies, many concurrent calls, an unreachable server and a server that stops answering behave as a gRPC
client must. HTTP/2 situations etcd cannot be made to produce on demand (GOAWAY with calls in flight, a refused
stream, header blocks split into CONTINUATION frames, padding, a limit on concurrent streams) are played by a small
scripted server written for these tests: the one stand-in here, for what real etcd will not do when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import hpack
import pytest
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc
from storage_helpers import closed_port, wait_until

from controlplane.storage import h2grpc
from controlplane.storage.etcd import _WATCH, KV_METHODS, _classify, _Failure
from controlplane.storage.etcd_process import LocalEtcd
from controlplane.storage.h2grpc import H2Channel, StreamMethod, UnaryMethod

_Compare = rpc_pb2.Compare


# ---- against real etcd ---------------------------------------------------------------------------------------

pytestmark = [pytest.mark.timeout(30)]
etcd_test = pytest.mark.etcd
needs_etcd = pytest.mark.skipif(
    shutil.which("etcd") is None, reason="the etcd binary is not installed (apt-get install etcd-server)"
)


def _target(server: LocalEtcd) -> str:
    return server.endpoint.split("://", 1)[1]


@pytest.fixture
async def both(etcd: LocalEtcd) -> AsyncIterator[tuple[H2Channel, object]]:
    """An h2grpc channel and grpc.aio's KV stub on the same etcd."""
    h2 = H2Channel(_target(etcd))
    channel = grpc.aio.insecure_channel(_target(etcd))
    try:
        yield h2, rpc_pb2_grpc.KVStub(channel)
    finally:
        await h2.close()
        await channel.close()


async def _h2(h2: H2Channel, method: str, request: object) -> object:
    return await h2.unary(KV_METHODS[method], request, 5.0)


@etcd_test
@needs_etcd
async def test_answers_are_the_ones_grpc_aio_gets(both: tuple[H2Channel, object]) -> None:
    h2, stub = both
    put = await _h2(h2, "Put", rpc_pb2.PutRequest(key=b"/a", value=b"one"))
    via_grpc = await stub.Put(rpc_pb2.PutRequest(key=b"/b", value=b"two"))
    assert via_grpc.header.revision == put.header.revision + 1
    for key in (b"/a", b"/b"):
        mine = await _h2(h2, "Range", rpc_pb2.RangeRequest(key=key))
        theirs = await stub.Range(rpc_pb2.RangeRequest(key=key))
        assert mine.kvs == theirs.kvs and mine.kvs[0].value in (b"one", b"two")
    txn = rpc_pb2.TxnRequest(
        compare=[_Compare(key=b"/a", target=_Compare.CREATE, result=_Compare.EQUAL, create_revision=0)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/a", value=b"x"))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"/a"))],
    )
    answer = await _h2(h2, "Txn", txn)
    assert not answer.succeeded and answer.responses[0].response_range.kvs[0].value == b"one"


@etcd_test
@needs_etcd
async def test_errors_carry_the_status_grpc_aio_reports(both: tuple[H2Channel, object]) -> None:
    h2, stub = both
    for _ in range(3):
        await _h2(h2, "Put", rpc_pb2.PutRequest(key=b"/k", value=b"v"))
    await _h2(h2, "Compact", rpc_pb2.CompactionRequest(revision=3))
    duplicate = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"/d", value=b"v"))
    bad = [
        ("Range", rpc_pb2.RangeRequest(key=b"/k", revision=1_000_000)),  # a future revision
        ("Range", rpc_pb2.RangeRequest(key=b"/k", revision=2)),  # compacted
        ("Txn", rpc_pb2.TxnRequest(success=[duplicate, duplicate])),  # a key twice in one transaction
        ("Put", rpc_pb2.PutRequest(key=b"", value=b"v")),  # an empty key
        ("Put", rpc_pb2.PutRequest(key=b"/big", value=b"x" * (2 * 1024 * 1024))),  # over --max-request-bytes
    ]
    for method, request in bad:
        with pytest.raises(grpc.aio.AioRpcError) as mine:
            await _h2(h2, method, request)
        with pytest.raises(grpc.aio.AioRpcError) as theirs:
            await getattr(stub, method)(request)
        assert (mine.value.code(), mine.value.details()) == (theirs.value.code(), theirs.value.details()), method
        assert _classify(mine.value) is _Failure.FINAL, mine.value.details()


@etcd_test
@needs_etcd
async def test_bodies_larger_than_windows_and_frames(both: tuple[H2Channel, object]) -> None:
    h2, stub = both
    big = os.urandom(1024 * 1024)  # 16 times etcd's first stream window, 64 times its frame size
    await _h2(h2, "Put", rpc_pb2.PutRequest(key=b"/big", value=big))
    assert (await stub.Range(rpc_pb2.RangeRequest(key=b"/big"))).kvs[0].value == big
    for i in range(40):
        await _h2(h2, "Put", rpc_pb2.PutRequest(key=b"/many/%03d" % i, value=bytes([i]) * 100_000))
    answer = await _h2(h2, "Range", rpc_pb2.RangeRequest(key=b"/many/", range_end=b"/many0"))
    assert [kv.value for kv in answer.kvs] == [bytes([i]) * 100_000 for i in range(40)]  # 4 MB in one answer


@etcd_test
@needs_etcd
async def test_many_concurrent_calls_on_one_connection(both: tuple[H2Channel, object]) -> None:
    h2, _ = both
    answers = await asyncio.gather(
        *(_h2(h2, "Put", rpc_pb2.PutRequest(key=b"/c/%d" % i, value=b"v")) for i in range(500)))
    assert len({a.header.revision for a in answers}) == 500
    count = await _h2(h2, "Range", rpc_pb2.RangeRequest(key=b"/c/", range_end=b"/c0", count_only=True))
    assert count.count == 500


async def test_an_unreachable_server_is_a_call_never_sent() -> None:
    h2 = H2Channel(f"127.0.0.1:{closed_port()}")
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _h2(h2, "Range", rpc_pb2.RangeRequest(key=b"/k"))
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert _classify(failed.value) is _Failure.NOT_APPLIED  # EtcdStore may resend it to another member
    await h2.close()


@etcd_test
@needs_etcd
async def test_a_server_that_stops_answering_times_out_and_is_dialled_again(etcd: LocalEtcd) -> None:
    h2 = H2Channel(_target(etcd), ping_timeout=0.3)
    method = KV_METHODS["Range"]
    await h2.unary(method, rpc_pb2.RangeRequest(key=b"/k"), 5.0)
    first = h2._connection
    assert etcd.pid is not None
    os.kill(etcd.pid, signal.SIGSTOP)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await h2.unary(method, rpc_pb2.RangeRequest(key=b"/k"), 0.3)
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert _classify(failed.value) is _Failure.UNCERTAIN
        # The unanswered PING that follows a timeout drops the connection.
        await wait_until(lambda: first is not None and first.closed is not None, 5, "the connection to be dropped")
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
    answer = await h2.unary(method, rpc_pb2.RangeRequest(key=b"/k"), 5.0)
    assert answer.header.revision >= 1 and h2._connection is not first
    await h2.close()


@etcd_test
@needs_etcd
async def test_a_killed_server_fails_calls_in_flight_as_uncertain(etcd: LocalEtcd) -> None:
    h2 = H2Channel(_target(etcd))
    await _h2(h2, "Range", rpc_pb2.RangeRequest(key=b"/k"))
    assert etcd.pid is not None
    os.kill(etcd.pid, signal.SIGSTOP)
    call = asyncio.ensure_future(_h2(h2, "Put", rpc_pb2.PutRequest(key=b"/k", value=b"v")))
    await wait_until(lambda: h2._connection is not None and bool(h2._connection.calls), 5, "the call to be sent")
    os.kill(etcd.pid, signal.SIGKILL)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert _classify(failed.value) is _Failure.UNCERTAIN  # it may have been applied: never resent blindly
    await h2.close()


@etcd_test
@needs_etcd
async def test_a_watch_stream_delivers_what_grpc_aio_delivers(both: tuple[H2Channel, object], etcd: LocalEtcd) -> None:
    h2, stub = both
    create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=b"/w/", range_end=b"/w0", prev_kv=True))
    mine = await h2.stream(_WATCH)
    await mine.write(create)
    channel = grpc.aio.insecure_channel(_target(etcd))
    theirs = rpc_pb2_grpc.WatchStub(channel).Watch()
    await theirs.write(create)
    assert (await mine.read()).created and (await theirs.read()).created
    for i in range(50):
        await _h2(h2, "Put", rpc_pb2.PutRequest(key=b"/w/%02d" % (i % 7), value=b"v%d" % i))

    async def events(call: object, count: int) -> list[object]:
        seen: list[object] = []
        while len(seen) < count:
            seen += (await call.read()).events
        return seen

    assert await events(mine, 50) == await events(theirs, 50)
    mine.cancel()
    theirs.cancel()
    await channel.close()
    # A new stream on the same connection after the cancelled one.
    again = await h2.stream(_WATCH)
    await again.write(create)
    assert (await again.read()).created
    again.cancel()


# ---- a scripted HTTP/2 server, for what etcd will not do on demand ----------------------------------------

_ECHO = UnaryMethod("/test.Echo/Echo", lambda b: b, lambda b: b)


class Peer:
    """The server's side of one connection: read frames, send frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.ping_acks: list[bytes] = []

    async def frame(self) -> tuple[int, int, int, bytes]:
        head = await self.reader.readexactly(9)
        length, kind, flags, stream = int.from_bytes(head[:3], "big"), head[3], head[4], int.from_bytes(head[5:], "big")
        payload = await self.reader.readexactly(length)
        if kind == 6 and flags & 1:
            self.ping_acks.append(payload)
        return kind, flags, stream & 0x7FFFFFFF, payload

    async def next(self, wanted: int) -> tuple[int, int, int, bytes]:
        """The next frame of type ``wanted``, skipping others (SETTINGS, WINDOW_UPDATE, PING acknowledgements)."""
        while True:
            frame = await self.frame()
            if frame[0] == wanted:
                return frame

    async def request(self) -> tuple[int, dict[str, str], bytes]:
        """The next call: its stream, headers and message (SETTINGS, WINDOW_UPDATE and PING frames skipped)."""
        headers: dict[str, str] = {}
        body = b""
        while True:
            kind, flags, stream, payload = await self.frame()
            if kind == 1:
                headers = dict(self.decoder.decode(payload))
            elif kind == 0:
                body += payload
                if flags & 1:
                    return stream, headers, body[5:]

    def send(self, kind: int, flags: int, stream: int, payload: bytes = b"") -> None:
        self.writer.write(len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload)

    def headers(self, stream: int, fields: list[tuple[str, str]], end_stream: bool = False, split: int = 0) -> None:
        block = self.encoder.encode(fields)
        if not split:
            self.send(1, 0x4 | (1 if end_stream else 0), stream, block)
            return
        self.send(1, 1 if end_stream else 0, stream, block[:split])  # HEADERS, then CONTINUATION frames
        rest = block[split:]
        while rest:
            chunk, rest = rest[:split], rest[split:]
            self.send(9, 0 if rest else 0x4, stream, chunk)

    def answer(self, stream: int, message: bytes, *, padded: bool = False, split: int = 0) -> None:
        self.headers(stream, [(":status", "200"), ("content-type", "application/grpc")], split=split)
        body = b"\0" + struct.pack(">I", len(message)) + message
        if padded:
            self.send(0, 0x8, stream, b"\x03" + body + b"\0\0\0")
        else:
            self.send(0, 0, stream, body)
        self.headers(stream, [("grpc-status", "0")], end_stream=True, split=split)


async def scripted(script: Callable[[Peer], Awaitable[None]]) -> tuple[H2Channel, asyncio.Server, list[Peer]]:
    """A server that runs ``script`` on every connection, after the preface and a SETTINGS frame."""
    peers: list[Peer] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        peers.append(peer)
        assert await reader.readexactly(24) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        peer.send(4, 0, 0, getattr(script, "settings", b""))
        try:
            await script(peer)
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return H2Channel(f"127.0.0.1:{port}"), server, peers


async def test_goaway_fails_only_the_calls_the_server_never_saw() -> None:
    connections = 0

    async def script(peer: Peer) -> None:
        nonlocal connections
        connections += 1
        if connections > 1:
            stream, headers, message = await peer.request()
            assert headers[":path"] == "/test.Echo/Echo"
            peer.answer(stream, message)
            await peer.reader.read()
            return
        first, _, message = await peer.request()
        await peer.request()
        peer.send(7, 0, 0, struct.pack(">II", first, 0))  # GOAWAY: streams after the first were not processed
        peer.answer(first, message)
        await peer.reader.read()

    h2, server, peers = await scripted(script)
    first = asyncio.ensure_future(h2.unary(_ECHO, b"one", 5))
    second = asyncio.ensure_future(h2.unary(_ECHO, b"two", 5))
    assert await first == b"one"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await second
    assert _classify(refused.value) is _Failure.NOT_APPLIED
    assert await h2.unary(_ECHO, b"three", 5) == b"three"
    assert len(peers) == 2  # the third call went on a new connection
    await h2.close()
    server.close()


async def test_a_refused_stream_is_a_call_never_processed() -> None:
    async def script(peer: Peer) -> None:
        stream, _, _ = await peer.request()
        peer.send(3, 0, stream, struct.pack(">I", 0x7))  # RST_STREAM REFUSED_STREAM
        await peer.reader.read()

    h2, server, _ = await scripted(script)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await h2.unary(_ECHO, b"x", 5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE and _classify(refused.value) is _Failure.NOT_APPLIED
    await h2.close()
    server.close()


async def test_continuation_padding_pings_and_trailers_only_errors() -> None:
    async def script(peer: Peer) -> None:
        peer.send(6, 0, 0, b"12345678")  # a PING the client must acknowledge
        stream, _, message = await peer.request()
        peer.answer(stream, message * 3, padded=True, split=5)
        stream, _, _ = await peer.request()
        # Trailers-only: the whole answer is one header block with the status, percent-encoded message.
        peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "9"),
                              ("grpc-message", "etcdserver: not%20now")], end_stream=True, split=7)
        await peer.reader.read()

    h2, server, peers = await scripted(script)
    assert await h2.unary(_ECHO, b"ab", 5) == b"ababab"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await h2.unary(_ECHO, b"x", 5)
    assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == "etcdserver: not now"
    assert peers[0].ping_acks == [b"12345678"]
    await h2.close()
    server.close()


async def test_the_servers_limit_on_concurrent_streams_is_kept() -> None:
    early: list[int] = []  # frames that arrived while a call was open: there must be none

    async def script(peer: Peer) -> None:
        for _ in range(5):
            stream, _, message = await peer.request()
            try:
                kind, *_ = await asyncio.wait_for(peer.frame(), 0.05)
                early.append(kind)
            except TimeoutError:
                pass
            peer.answer(stream, message)

    script.settings = struct.pack(">HI", 0x3, 1)  # type: ignore[attr-defined]  # MAX_CONCURRENT_STREAMS 1
    h2, server, _ = await scripted(script)
    answers = await asyncio.gather(*(h2.unary(_ECHO, b"%d" % i, 5) for i in range(5)))
    assert sorted(answers) == [b"0", b"1", b"2", b"3", b"4"]
    assert early == []
    await h2.close()
    server.close()


_CHAT = StreamMethod("/test.Chat/Chat", lambda b: b, lambda b: b)


def _message(payload: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(payload)) + payload


async def test_a_stream_reads_messages_across_frames_then_its_status() -> None:
    async def script(peer: Peer) -> None:
        stream = (await peer.next(1))[2]
        peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        assert (await peer.next(0))[3] == _message(b"hello")  # the client's first message
        both = _message(b"one") + _message(b"two")
        peer.send(0, 0, stream, both[:6])  # a message split across frames, then two in one frame
        peer.send(0, 0, stream, both[6:] + _message(b"three"))
        peer.headers(stream, [("grpc-status", "0")], end_stream=True)
        await peer.reader.read()

    h2, server, _ = await scripted(script)
    call = await h2.stream(_CHAT)
    await call.write(b"hello")
    assert [await call.read() for _ in range(3)] == [b"one", b"two", b"three"]
    assert await call.read() is grpc.aio.EOF
    await h2.close()
    server.close()


async def test_a_stream_that_ends_in_an_error_raises_it_after_its_messages() -> None:
    async def script(peer: Peer) -> None:
        stream = (await peer.next(1))[2]
        peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        peer.send(0, 0, stream, _message(b"last"))
        peer.headers(stream, [("grpc-status", "14"), ("grpc-message", "etcdserver: no leader")], end_stream=True)
        await peer.reader.read()

    h2, server, _ = await scripted(script)
    call = await h2.stream(_CHAT)
    assert await call.read() == b"last"
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE and _classify(failed.value) is _Failure.NOT_APPLIED
    await h2.close()
    server.close()


async def test_a_long_stream_gives_its_window_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2grpc, "STREAM_WINDOW_TOPUP", 1000)
    updates: list[tuple[int, int]] = []

    async def script(peer: Peer) -> None:
        stream = (await peer.next(1))[2]
        peer.headers(stream, [(":status", "200"), ("content-type", "application/grpc")])
        for _ in range(5):
            peer.send(0, 0, stream, _message(b"x" * 495))  # 500 bytes of DATA each
        while len(updates) < 2:
            kind, _, on, payload = await peer.frame()
            if kind == 8 and on == stream:
                updates.append((on, struct.unpack(">I", payload)[0]))
        await peer.reader.read()

    h2, server, _ = await scripted(script)
    call = await h2.stream(_CHAT)
    assert [len(await call.read()) for _ in range(5)] == [495] * 5
    await wait_until(lambda: len(updates) == 2, 5, "two WINDOW_UPDATEs")
    assert updates == [(1, 1000), (1, 1000)]
    await h2.close()
    server.close()


async def test_a_stream_on_a_silent_server_fails_after_its_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2grpc, "KEEPALIVE_INTERVAL", 0.1)
    monkeypatch.setattr(h2grpc, "KEEPALIVE_TIMEOUT", 1.0)  # generous: an answered PING must never count as lost
    answer_pings = True
    pings: list[bytes] = []

    async def script(peer: Peer) -> None:
        while True:
            kind, flags, _, payload = await peer.frame()
            if kind == 6 and not flags & 1:
                pings.append(payload)
                if answer_pings:
                    peer.send(6, 1, 0, payload)

    h2, server, _ = await scripted(script)
    call = await h2.stream(_CHAT)
    await wait_until(lambda: len(pings) >= 3, 5, "three keepalive PINGs")  # answered: the stream stays open
    assert h2._connection is not None and h2._connection.closed is None
    answer_pings = False  # the server (or the path to it) goes silent
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await asyncio.wait_for(call.read(), 5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE and "PING" in (failed.value.details() or "")
    await h2.close()
    server.close()


async def test_closing_the_channel_cancels_its_open_calls() -> None:
    async def script(peer: Peer) -> None:
        await peer.request()  # never answered
        await peer.reader.read()

    h2, server, _ = await scripted(script)
    call = asyncio.ensure_future(h2.unary(_ECHO, b"x", 5))
    await wait_until(lambda: h2._connection is not None and bool(h2._connection.calls), 5, "the call to be sent")
    await h2.close()
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await call
    assert closed.value.code() is grpc.StatusCode.CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await h2.unary(_ECHO, b"y", 5)
    assert after.value.code() is grpc.StatusCode.CANCELLED
    server.close()


async def test_a_server_that_never_speaks_http2_is_a_failed_dial() -> None:
    hung_up = asyncio.get_running_loop().create_future()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # reads the preface, answers nothing, until the client hangs up
        hung_up.set_result(True)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    h2 = H2Channel(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", connect_timeout=0.3)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await h2.unary(_ECHO, b"x", 5)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE and _classify(failed.value) is _Failure.NOT_APPLIED
    assert await asyncio.wait_for(hung_up, 5)  # the client did not leave the socket open
    await h2.close()
    server.close()
