"""gRPC calls over HTTP/2 on an asyncio connection of our own, for EtcdStore: unary KV requests and watch streams.

A grpc.aio unary call costs its caller ~110 µs of CPU (the C core's call object, its completion queue, the
poller threads that hand each completion to the event loop): on a 2-core machine that was a third of what a
create through the API server cost on etcd. A unary gRPC call is three small HTTP/2 frames each way, so this
module writes them itself: a precomputed header block per method, one DATA frame, and the answer parsed from
the socket in the loop's own callback, for ~35 µs a call. Streaming calls (etcd's watches) are the same
frames kept open: messages are written as DATA frames and read as they arrive, so a process on etcd needs no
gRPC C core and none of its threads.

Only what a client needs is here, each as RFC 9113 and the gRPC HTTP/2 protocol ask: the preface and SETTINGS
exchange, flow control (large receive windows, replenished; sends wait for the peer's windows), PING answers,
GOAWAY (calls the server never saw fail as retryable, the rest finish), RST_STREAM, CONTINUATION, and TLS with
ALPN "h2". Failures are raised as ``grpc.aio.AioRpcError`` with the status the server sent (or UNAVAILABLE /
DEADLINE_EXCEEDED for a lost connection or a timeout), so callers classify them as they classify grpc.aio's.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from collections.abc import Sequence
from typing import Any

import grpc
import hpack

__all__ = ["H2Channel", "H2Stream", "StreamMethod", "UnaryMethod"]

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FRAME_HEADER = struct.Struct(">I B I")  # 24-bit length packed with the type, flags, stream id
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_SETTINGS_ENABLE_PUSH = 0x2
_SETTINGS_MAX_CONCURRENT_STREAMS, _SETTINGS_INITIAL_WINDOW_SIZE, _SETTINGS_MAX_FRAME_SIZE = 0x3, 0x4, 0x5
_LAST_STREAM_ID = 2**31 - 1
_MAX_WINDOW = 2**31 - 1
_DEFAULT_WINDOW = 65_535
# Our receive windows: as large as HTTP/2 allows, so a large answer is never held up by us; the connection's
# window is topped up once half of it has been used.
_RECEIVE_WINDOW = _MAX_WINDOW
_REFUSED_STREAM, _CANCEL = 0x7, 0x8
# A streaming call gives its window back once this much of it is used.
STREAM_WINDOW_TOPUP = _RECEIVE_WINDOW // 2
# etcd refuses pings closer than 5 s apart (--grpc-keepalive-min-time); these are grpc.aio's settings the store used.
KEEPALIVE_INTERVAL = 10.0
KEEPALIVE_TIMEOUT = 5.0

_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _FRAME_HEADER.pack(len(payload) << 8 | kind, flags, stream) + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def _literal(name: str, value: str) -> bytes:
    """A header as 'literal, never indexed, new name': the server's table is never touched, so blocks built
    once can be sent again unchanged."""
    n, v = name.encode(), value.encode()
    return b"\x10" + _hpack_int(len(n), 7, 0) + n + _hpack_int(len(v), 7, 0) + v


_timeout_headers: dict[int, bytes] = {}


def _timeout_header(timeout: float) -> bytes:
    ms = max(1, int(timeout * 1000))
    header = _timeout_headers.get(ms)
    if header is None:
        if len(_timeout_headers) > 256:
            _timeout_headers.clear()
        header = _timeout_headers[ms] = _literal("grpc-timeout", f"{ms}m")
    return header


class UnaryMethod:
    """One method of a service: its path and how to serialise requests and parse answers."""

    __slots__ = ("path", "serialize", "deserialize")

    def __init__(self, path: str, serialize: Any, deserialize: Any) -> None:
        self.path, self.serialize, self.deserialize = path, serialize, deserialize


class StreamMethod(UnaryMethod):
    """A bidirectional-streaming method (etcd's Watch): requests are written and answers read one by one."""

    __slots__ = ()


class _Call:
    __slots__ = ("future", "headers", "data", "send_window", "timer", "stream")

    def __init__(self, future: asyncio.Future[bytes], send_window: int) -> None:
        self.future = future  # a unary call's answer; a stream's end (its status)
        self.headers: dict[str, str] | None = None
        self.data = bytearray()
        self.send_window = send_window
        self.timer: asyncio.TimerHandle | None = None  # the deadline
        self.stream: H2Stream | None = None  # set for a streaming call


def _error(code: grpc.StatusCode, details: str, trailers: Sequence[tuple[str, str]] = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), details=details)


class _Connection(asyncio.Protocol):
    """One HTTP/2 connection: a stream per call, answers matched to calls by stream id."""

    def __init__(self, loop: asyncio.AbstractEventLoop, target: str, ping_timeout: float) -> None:
        self.loop = loop
        self.target = target
        self.ping_timeout = ping_timeout
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.decoder = hpack.Decoder()
        self.decoder.max_allowed_table_size = 1 << 16
        # Header blocks made only of indexed fields, decoded. Such a block leaves the decoder's table as it was,
        # and a server answering alike sends the same bytes every time (etcd: b"\x88\xc0", b"\xbf"), so the
        # answer is reused until a block that may change the table comes.
        self.decoded: dict[bytes, dict[str, str]] = {}
        self.calls: dict[int, _Call] = {}
        self.next_stream = 1
        self.send_window = _DEFAULT_WINDOW  # the connection's, granted by the server
        self.peer_initial_window = _DEFAULT_WINDOW
        self.peer_max_frame = 16_384
        self.peer_max_streams = 2**32  # unlimited until the server's SETTINGS say otherwise
        self.stream_freed = asyncio.Event()
        self.pings: dict[bytes, asyncio.Future[None]] = {}  # outstanding PINGs by payload
        self.liveness: asyncio.Future[None] | None = None  # a check_alive in progress (held: the loop keeps weak refs)
        self.keepalive: asyncio.Future[None] | None = None  # pings while streams are open (see open_stream)
        self.received = 0  # bytes of DATA since the connection's receive window was last topped up
        self.window_opened = asyncio.Event()
        self.closed: grpc.aio.AioRpcError | None = None  # why no new call may start here
        self.goaway = False
        self.ready: asyncio.Future[None] = loop.create_future()  # the server's first SETTINGS has arrived
        self.continuation: tuple[int, int, bytearray] | None = None  # (stream, flags, block) of an open header block

    # ---- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's
        settings = struct.pack(">HIHI", _SETTINGS_INITIAL_WINDOW_SIZE, _RECEIVE_WINDOW, _SETTINGS_ENABLE_PUSH, 0)
        transport.write(
            _PREFACE
            + _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _RECEIVE_WINDOW - _DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        why = exc or "closed by the server"
        self._fail_all(_error(grpc.StatusCode.UNAVAILABLE, f"connection to {self.target} lost: {why}"))

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        end = len(buffer)
        try:
            while end - offset >= 9:
                length_kind, flags, stream = _FRAME_HEADER.unpack_from(buffer, offset)
                length = length_kind >> 8
                if end - offset - 9 < length:
                    break
                payload = bytes(buffer[offset + 9 : offset + 9 + length])
                offset += 9 + length
                self._frame_received(length_kind & 0xFF, flags, stream & 0x7FFFFFFF, payload)
        except _ProtocolError as e:
            self._abort(str(e))
            return
        del buffer[:offset]

    # ---- frames ----------------------------------------------------------------------------------------

    def _frame_received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self.continuation is not None and kind != _CONTINUATION:
            raise _ProtocolError("a header block was interrupted")
        if kind == _DATA:
            self._data(flags, stream, payload)
        elif kind == _HEADERS:
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if flags & _PRIORITY:
                payload = payload[5:]
            if flags & _END_HEADERS:
                self._headers(stream, flags, payload)
            else:
                self.continuation = (stream, flags, bytearray(payload))
        elif kind == _CONTINUATION:
            if self.continuation is None or self.continuation[0] != stream:
                raise _ProtocolError("an unexpected CONTINUATION frame")
            self.continuation[2].extend(payload)
            if flags & _END_HEADERS:
                stream, first_flags, block = self.continuation
                self.continuation = None
                self._headers(stream, first_flags, bytes(block))
        elif kind == _SETTINGS:
            if not flags & _ACK:
                self._settings(payload)
        elif kind == _PING:
            if not flags & _ACK:
                self._write(_frame(_PING, _ACK, 0, payload))
            elif (ping := self.pings.pop(payload, None)) is not None and not ping.done():
                ping.set_result(None)
        elif kind == _WINDOW_UPDATE:
            increment = struct.unpack(">I", payload)[0] & 0x7FFFFFFF
            if stream == 0:
                self.send_window += increment
            elif (call := self.calls.get(stream)) is not None:
                call.send_window += increment
            self.window_opened.set()
        elif kind == _RST_STREAM:
            call = self._end(stream)
            if call is not None and not call.future.done():
                code = struct.unpack(">I", payload)[0]
                if code == _REFUSED_STREAM:  # a promise that the request was not processed (RFC 9113 8.7)
                    error = _error(grpc.StatusCode.UNAVAILABLE, "the server refused the stream: not processed")
                else:
                    status = grpc.StatusCode.CANCELLED if code == _CANCEL else grpc.StatusCode.UNAVAILABLE
                    error = _error(status, f"the server reset the stream (HTTP/2 error {code})")
                call.future.set_exception(error)
        elif kind == _GOAWAY:
            last_stream = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            self.goaway = True
            self.closed = _error(grpc.StatusCode.UNAVAILABLE, "the server is closing the connection (GOAWAY)")
            for sid in [s for s in self.calls if s > last_stream]:
                call = self._end(sid)
                if call is not None and not call.future.done():
                    # Never processed by the server (RFC 9113 6.8), so safe to send elsewhere.
                    call.future.set_exception(
                        _error(grpc.StatusCode.UNAVAILABLE, "the server closed the connection (GOAWAY): not processed"))
            if not self.calls and self.transport is not None:
                self.transport.close()
        # PRIORITY, PUSH_PROMISE (disabled by our SETTINGS) and unknown types are ignored, as RFC 9113 5.5 asks.

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - len(payload) % 6, 6):
            ident, value = struct.unpack_from(">HI", payload, i)
            if ident == _SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for call in self.calls.values():
                    call.send_window += delta
                self.window_opened.set()
            elif ident == _SETTINGS_MAX_FRAME_SIZE:
                self.peer_max_frame = value
            elif ident == _SETTINGS_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
                self.stream_freed.set()
        self._write(_frame(_SETTINGS, _ACK, 0))
        if not self.ready.done():
            self.ready.set_result(None)

    def _data(self, flags: int, stream: int, payload: bytes) -> None:
        self.received += len(payload)
        if self.received >= _RECEIVE_WINDOW // 2:
            self._write(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self.received)))
            self.received = 0
        if flags & _PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        call = self.calls.get(stream)
        if call is None:
            return
        call.data += payload
        if call.stream is not None:
            call.stream.received(call, len(payload))
        if flags & _END_STREAM:
            self._finish(stream, call, None)

    def _headers(self, stream: int, flags: int, block: bytes) -> None:
        headers = self.decoded.get(block)
        if headers is None:
            try:
                headers = dict(self.decoder.decode(block))
            except hpack.HPACKError as e:
                raise _ProtocolError(f"undecodable headers: {e}") from e
            # One byte per field, each an index below 127: nothing was added to the table.
            if all(b >= 0x80 and b != 0xFF for b in block):
                if len(self.decoded) < 64:
                    self.decoded[block] = headers
            else:
                self.decoded.clear()
        call = self.calls.get(stream)
        if call is None:
            return
        if flags & _END_STREAM:
            self._finish(stream, call, headers)
        else:
            call.headers = headers

    def _end(self, stream: int) -> _Call | None:
        """Forget a call (answered, reset, expired, cancelled): its stream slot and window waiters move on."""
        call = self.calls.pop(stream, None)
        if call is not None:
            if call.timer is not None:
                call.timer.cancel()
            self.stream_freed.set()
            self.window_opened.set()  # a sender waiting for a window stops: its call is over
            if call.stream is not None:
                call.stream.wake()
        return call

    def _finish(self, stream: int, call: _Call, trailers: dict[str, str] | None) -> None:
        self._end(stream)
        if call.future.done():
            return
        fields = trailers or {}
        status = fields.get("grpc-status")
        if status is None and call.headers is not None:
            fields = {**call.headers, **fields}
            status = fields.get("grpc-status")
        if status is None:
            http = fields.get(":status", "?")
            call.future.set_exception(
                _error(grpc.StatusCode.UNKNOWN, f"{self.target} answered HTTP {http} without a gRPC status"))
        elif status != "0":
            code = _GRPC_CODES.get(int(status), grpc.StatusCode.UNKNOWN)
            call.future.set_exception(
                _error(code, _percent_decode(fields.get("grpc-message", "")), tuple((trailers or {}).items())))
        elif call.stream is not None:
            call.future.set_result(b"")  # the stream ended well: its reader sees EOF after the last message
        else:
            data = call.data
            if len(data) < 5 or data[0]:
                call.future.set_exception(
                    _error(grpc.StatusCode.INTERNAL, f"{self.target} sent no (or a compressed) message"))
            else:
                call.future.set_result(bytes(data[5:]))
        if self.goaway and not self.calls and self.transport is not None:
            self.transport.close()

    # ---- sending ---------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _abort(self, why: str) -> None:
        self._fail_all(_error(grpc.StatusCode.UNAVAILABLE, f"connection to {self.target} broken: {why}"))
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _fail_all(self, error: grpc.aio.AioRpcError) -> None:
        if self.closed is None or not self.goaway:
            self.closed = error
        for stream in list(self.calls):
            call = self._end(stream)
            if call is not None and not call.future.done():
                call.future.set_exception(error)
        if not self.ready.done():
            self.ready.set_exception(error)
            self.ready.exception()  # retrieved: whoever awaits it sees it; nobody else must be warned
        self.window_opened.set()
        self.stream_freed.set()
        for ping in self.pings.values():
            if not ping.done():
                ping.cancel()
        if self.keepalive is not None:
            self.keepalive.cancel()

    def _refuse(self) -> grpc.aio.AioRpcError:
        assert self.closed is not None
        return _error(grpc.StatusCode.UNAVAILABLE, f"{self.closed.details()}; the call was not processed")

    def _new_call(self) -> tuple[int, _Call]:
        """The next stream id and its call, registered. Only when ``full`` is False."""
        if self.closed is not None:
            raise self._refuse()
        stream = self.next_stream
        self.next_stream += 2
        if self.next_stream > _LAST_STREAM_ID:
            # Stream ids are spent: this connection finishes its calls and the next call dials a new one.
            self.goaway = True
            self.closed = _error(grpc.StatusCode.UNAVAILABLE, "the connection has used every stream id")
        call = self.calls[stream] = _Call(self.loop.create_future(), self.peer_initial_window)
        return stream, call

    def open_stream(self, header_block: bytes) -> tuple[int, _Call]:
        """Open a streaming call's stream: its headers now, its messages as they are written."""
        stream, call = self._new_call()
        call.future.add_done_callback(_retrieved)
        self._write(_frame(_HEADERS, _END_HEADERS, stream, header_block))
        if self.keepalive is None:
            self.keepalive = asyncio.ensure_future(self._keep_alive())
        return stream, call

    async def _keep_alive(self) -> None:
        """While a stream is open, PING every KEEPALIVE_INTERVAL: a watch on a member that vanished without a word
        (a partition, a frozen host) must fail and move on rather than wait for events forever."""
        try:
            while self.closed is None and any(c.stream is not None for c in self.calls.values()):
                await asyncio.sleep(KEEPALIVE_INTERVAL)  # a timer, not synchronisation
                if self.closed is None:
                    await self.check_alive(KEEPALIVE_TIMEOUT)
        finally:
            self.keepalive = None

    async def send(self, stream: int, call: _Call, body: bytes, end: bool) -> bool:
        """DATA on an open stream, as the windows allow; False if the call ended before all of it was sent."""
        view = memoryview(body)
        while view or end:
            if call.future.done() or stream not in self.calls:
                return False
            if self.closed is not None and not self.goaway:
                raise self.closed
            size = min(len(view), self.send_window, call.send_window, self.peer_max_frame)
            if size <= 0 and view:
                self.window_opened.clear()
                await self.window_opened.wait()
                continue
            chunk, view = view[:size], view[size:]
            self.send_window -= size
            call.send_window -= size
            last = end and not view
            self._write(_frame(_DATA, _END_STREAM if last else 0, stream, bytes(chunk)))
            if last:
                break
        return True

    def start(self, header_block: bytes, message: bytes, deadline: float) -> tuple[int, _Call, bytes]:
        """Open a unary call's stream, ended by its timer at ``deadline``, and send its request in the same write
        when the windows allow; what they do not is returned, for send_rest."""
        stream, call = self._new_call()
        call.timer = self.loop.call_at(deadline, self._expire, stream)
        body = struct.pack(">BI", 0, len(message)) + message
        size = len(body)
        assert self.transport is not None
        if size <= self.send_window and size <= call.send_window and size <= self.peer_max_frame:
            self.send_window -= size
            call.send_window -= size
            self.transport.write(
                _frame(_HEADERS, _END_HEADERS, stream, header_block) + _frame(_DATA, _END_STREAM, stream, body))
            return stream, call, b""
        self.transport.write(_frame(_HEADERS, _END_HEADERS, stream, header_block))
        return stream, call, body

    async def send_rest(self, stream: int, call: _Call, body: bytes) -> None:
        """Send a request body larger than the windows, as the server opens them. A server may answer before it
        has read the whole body (a request over its size limit): then the rest is not sent."""
        if not await self.send(stream, call, body, end=True):
            self._write(_frame(_RST_STREAM, 0, stream, struct.pack(">I", _CANCEL)))

    @property
    def full(self) -> bool:
        return len(self.calls) >= self.peer_max_streams

    async def stream_slot(self) -> None:
        """Wait until the server's limit on concurrent streams lets one more open."""
        while self.full and self.closed is None:
            self.stream_freed.clear()
            await self.stream_freed.wait()
        if self.closed is not None:
            raise self._refuse()

    def cancel(self, stream: int) -> None:
        if self._end(stream) is not None:
            self._write(_frame(_RST_STREAM, 0, stream, struct.pack(">I", _CANCEL)))

    def _expire(self, stream: int) -> None:
        call = self.calls.get(stream)
        if call is None:
            return
        call.timer = None
        self.cancel(stream)
        if not call.future.done():
            call.future.set_exception(_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
        if self.liveness is None:
            self.liveness = asyncio.ensure_future(self.check_alive(self.ping_timeout))

    async def check_alive(self, timeout: float) -> None:
        """After a call timed out: a PING that is not answered in ``timeout`` means the server or the path to it
        is gone without a word (no FIN, no RST), so the connection is dropped and the next call dials again."""
        if self.closed is not None:
            return
        payload = struct.pack(">Q", id(self) ^ int(self.loop.time() * 1e6))
        ping = self.pings[payload] = self.loop.create_future()
        self._write(_frame(_PING, 0, 0, payload))
        try:
            await asyncio.wait_for(ping, timeout)
        except TimeoutError:
            self._abort(f"no answer to a PING within {timeout:g}s")
        except asyncio.CancelledError:
            pass  # the connection ended first
        finally:
            self.pings.pop(payload, None)
            self.liveness = None

    def close(self) -> None:
        """Our side ends the connection: calls still open end as CANCELLED, not as a lost connection."""
        self._fail_all(_error(grpc.StatusCode.CANCELLED, "the channel is closed"))
        if self.transport is not None:
            self._write(_frame(_GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
            self.transport.close()


class _ProtocolError(Exception):
    pass


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a stream's end is read through H2Stream.read, or not at all: never "never retrieved"


class H2Stream:
    """One bidirectional-streaming call, as grpc.aio's: ``write`` requests, ``read`` answers until
    ``grpc.aio.EOF``; a failed call raises ``grpc.aio.AioRpcError`` from ``read``. ``cancel`` ends it."""

    def __init__(self, connection: _Connection, stream: int, call: _Call, method: StreamMethod) -> None:
        self._connection, self._stream, self._call, self._method = connection, stream, call, method
        self._messages: list[bytes] = []
        self._next = 0
        self._waiter: asyncio.Future[None] | None = None
        self._unacknowledged = 0  # bytes received since this stream's receive window was last topped up
        call.stream = self

    def received(self, call: _Call, size: int) -> None:
        """Called by the connection with DATA: split off every whole message."""
        data = call.data
        offset = 0
        while len(data) - offset >= 5:
            length = int.from_bytes(data[offset + 1 : offset + 5], "big")
            if len(data) - offset - 5 < length:
                break
            self._messages.append(bytes(data[offset + 5 : offset + 5 + length]))
            offset += 5 + length
        if offset:
            del data[:offset]
        # A stream lives long: give its window back before it runs out (the connection's is topped up apart).
        self._unacknowledged += size
        if self._unacknowledged >= STREAM_WINDOW_TOPUP:
            self._connection._write(_frame(_WINDOW_UPDATE, 0, self._stream, struct.pack(">I", self._unacknowledged)))
            self._unacknowledged = 0
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def write(self, request: Any) -> None:
        message = self._method.serialize(request)
        await self._connection.send(self._stream, self._call, struct.pack(">BI", 0, len(message)) + message, False)

    async def read(self) -> Any:
        while self._next >= len(self._messages):
            self._messages.clear()
            self._next = 0
            end = self._call.future
            if end.done():
                if end.cancelled():
                    raise _error(grpc.StatusCode.CANCELLED, "the stream was cancelled")
                error = end.exception()
                if error is not None:
                    raise error
                return grpc.aio.EOF
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._messages[self._next]
        self._next += 1
        return self._method.deserialize(message)

    def cancel(self) -> None:
        call = self._call
        self._connection.cancel(self._stream)
        if not call.future.done():
            call.future.cancel()


def _percent_decode(message: str) -> str:
    if "%" not in message:
        return message
    from urllib.parse import unquote

    return unquote(message)


class H2Channel:
    """Unary calls to one server over one HTTP/2 connection, dialled on first use and again after it breaks."""

    def __init__(
        self,
        target: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        connect_timeout: float = 5.0,
        ping_timeout: float = 2.0,
    ) -> None:
        self.target = target
        host, _, port = target.rpartition(":")
        self._host, self._port = host.strip("[]"), int(port)
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._ping_timeout = ping_timeout
        scheme = "https" if ssl_context is not None else "http"
        # Pseudo-headers first (RFC 9113 8.3): :path goes between these two parts.
        self._pseudo = (
            b"\x83"  # :method POST (static table)
            + (b"\x87" if scheme == "https" else b"\x86")  # :scheme
            + _literal(":authority", target)
        )
        self._regular = (
            _literal("content-type", "application/grpc")
            + _literal("te", "trailers")
            + b"".join(_literal(k, v) for k, v in metadata)
        )
        self._blocks: dict[str, bytes] = {}
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._closed = False

    async def _connect(self) -> _Connection:
        """Dial, and wait for the server's SETTINGS: until then nothing was sent, so every failure here is
        "failed to connect" (a call may go to another member)."""
        loop = asyncio.get_running_loop()
        protocol: _Connection | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop, self.target, self._ping_timeout), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
                await protocol.ready
        except (OSError, TimeoutError, grpc.aio.AioRpcError) as e:  # ssl.SSLError is an OSError
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abort()  # e.g. a server that never speaks HTTP/2
            if isinstance(e, grpc.aio.AioRpcError):
                why = e.details()
            elif isinstance(e, OSError) and e.errno and not isinstance(e, ssl.SSLError):
                why = os.strerror(e.errno)
            else:
                why = str(e) or "no HTTP/2 answer in time"
            raise _error(grpc.StatusCode.UNAVAILABLE, f"failed to connect to {self.target}: {why}") from e
        return protocol

    async def _ensure(self) -> _Connection:
        connection = self._connection
        if connection is not None and connection.closed is None:
            return connection
        if self._closed:
            raise _error(grpc.StatusCode.CANCELLED, "the channel is closed")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, future: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if not future.cancelled() and future.exception() is None:
            self._connection = future.result()

    def _block(self, method: UnaryMethod) -> bytes:
        block = self._blocks.get(method.path)
        if block is None:
            block = self._blocks[method.path] = self._pseudo + _literal(":path", method.path) + self._regular
        return block

    async def _room(self, deadline: float | None) -> _Connection:
        """A connection with room for one more stream, dialled and waited for until ``deadline`` (None: the
        connect timeout alone). Nothing is sent before it returns, so running out of time is "not applied"."""
        connection = self._connection
        if connection is not None and connection.closed is None and not connection.full:
            return connection
        why = f"failed to connect to {self.target} in time"
        try:
            async with asyncio.timeout_at(deadline):
                if connection is None or connection.closed is not None:
                    connection = await self._ensure()
                why = f"{self.target} had no stream free in time; the call was not processed"
                await connection.stream_slot()
        except TimeoutError:
            raise _error(grpc.StatusCode.UNAVAILABLE, why) from None
        return connection

    async def unary(self, method: UnaryMethod, request: Any, timeout: float) -> Any:
        """One call; ``timeout`` (seconds) bounds all of it, dialling included, and is sent as grpc-timeout."""
        deadline = asyncio.get_running_loop().time() + timeout
        connection = await self._room(deadline)
        # The call's own timer (see _Connection._expire) ends it at the deadline.
        stream, call, rest = connection.start(self._block(method) + _timeout_header(timeout),
                                              method.serialize(request), deadline)
        try:
            if rest:
                await connection.send_rest(stream, call, rest)
            answer = await call.future
        except asyncio.CancelledError:
            connection.cancel(stream)
            raise
        return method.deserialize(answer)

    async def stream(self, method: StreamMethod) -> H2Stream:
        """Open a streaming call (dialling first if need be, within the connect timeout)."""
        connection = await self._room(None)
        stream, call = connection.open_stream(self._block(method))
        return H2Stream(connection, stream, call, method)

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
