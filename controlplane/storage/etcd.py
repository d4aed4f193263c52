"""The Store contract on a real etcd v3 cluster, for scale-out and for anyone who wants the control plane's state
where kube-apiserver keeps it.

It speaks etcd's gRPC API with the protobuf messages that ship with ``aetcd``, over ``h2grpc``: gRPC on an asyncio
HTTP/2 connection of our own, at a third of grpc.aio's CPU per call and without the gRPC C core's threads (see that
module). aetcd's own client dials a single host without TLS, and the store needs several endpoints, failover, TLS
and precise control over which failed writes may be resent. Revisions are etcd's, compare-and-swap is an etcd
transaction, and periodic compaction follows kube-apiserver's compactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from aetcd.rpc import kv_pb2, rpc_pb2

from .h2grpc import H2Channel, StreamMethod, UnaryMethod
from .interface import (
    ConflictError,
    ExpiredError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    ListResult,
    StorageError,
    UnavailableError,
    WatchEvent,
)

__all__ = ["EtcdStore", "EtcdUnreachableError", "open_etcd_store"]

log = logging.getLogger(__name__)

_Compare = rpc_pb2.Compare
_PUT = kv_pb2.Event.PUT
_DELETE = kv_pb2.Event.DELETE

# Ask members to refuse requests while they know they have no leader (etcd's "require leader"), so a member cut
# off from the quorum fails fast and we move on, instead of queueing our request until it times out.
_METADATA = (("hasleader", "true"),)

# The KV methods, for h2grpc (also what the tests and benches call them by).
KV_METHODS = {
    name: UnaryMethod(f"/etcdserverpb.KV/{name}", request.SerializeToString, response.FromString)
    for name, request, response in (
        ("Range", rpc_pb2.RangeRequest, rpc_pb2.RangeResponse),
        ("Put", rpc_pb2.PutRequest, rpc_pb2.PutResponse),
        ("DeleteRange", rpc_pb2.DeleteRangeRequest, rpc_pb2.DeleteRangeResponse),
        ("Txn", rpc_pb2.TxnRequest, rpc_pb2.TxnResponse),
        ("Compact", rpc_pb2.CompactionRequest, rpc_pb2.CompactionResponse),
    )
}
_WATCH = StreamMethod(
    "/etcdserverpb.Watch/Watch", rpc_pb2.WatchRequest.SerializeToString, rpc_pb2.WatchResponse.FromString)

# The compaction coordination key, kube-apiserver's compact_rev_key. Store keys are str and so encode to UTF-8,
# which never contains the byte 0xff: a key starting with prefix + 0xff can never collide with a store key and
# lies outside every range the store reads or watches.
_RESERVED = b"\xff"
_COMPACT_KEY = _RESERVED + b"compact_rev_key"


class _Failure(Enum):
    NOT_APPLIED = "not applied"  # the request never took effect anywhere: resend it to any member
    UNCERTAIN = "uncertain"  # it may or may not have been applied: resend only if it is idempotent
    FINAL = "final"  # an answer, not an outage


# Details of gRPC/etcd errors that prove the request was never applied. Connection failures happen before the
# request is sent; "no leader" and a dropped proposal are refusals before the request enters the raft log.
_NOT_APPLIED_MARKERS = (
    "failed to connect",
    "not processed",  # h2grpc: a stream the server refused or dropped in a GOAWAY without reading it
    "connection refused",
    "connections to all backends failing",
    "dns resolution failed",
    "no route to host",
    "etcdserver: no leader",
    "raft proposal dropped",
    "etcdserver: too many requests",
    "etcdserver: not capable",
)
# Answers from etcd that mean "this member cannot serve right now" although the code is not UNAVAILABLE.
_UNCERTAIN_MARKERS = (
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "etcdserver: server stopped",
)


def _classify(e: grpc.aio.AioRpcError) -> _Failure:
    code = e.code()
    details = (e.details() or "").lower()
    if any(m in details for m in _NOT_APPLIED_MARKERS):
        return _Failure.NOT_APPLIED
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return _Failure.UNCERTAIN
    if any(m in details for m in _UNCERTAIN_MARKERS):
        return _Failure.UNCERTAIN
    return _Failure.FINAL


class _Compacted(Exception):
    """etcd said a requested revision is compacted; the caller knows which revision it asked for."""


class _FutureRevision(Exception):
    """etcd said a requested revision is newer than its current one."""


@dataclass(slots=True)
class _Endpoint:
    target: str
    secure: bool
    channel: H2Channel | None = None


def _parse_endpoint(endpoint: str, tls: bool) -> _Endpoint:
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"etcd endpoint {endpoint!r}: scheme must be http or https")
        return _Endpoint(target=parts.netloc, secure=parts.scheme == "https")
    return _Endpoint(target=endpoint, secure=tls)


def _prefix_end(key: bytes) -> bytes:
    """The smallest key greater than every key starting with ``key`` (etcd's prefix range end)."""
    stripped = key.rstrip(b"\xff")
    if not stripped:
        return b"\x00"  # etcd: "every key from key on"
    return stripped[:-1] + bytes([stripped[-1] + 1])


class EtcdStore:
    """A Store on etcd v3.

    ``endpoints`` are tried in order: the store sticks to one member and moves to the next when that one cannot
    serve. An operation that finds no member able to answer within ``timeout`` seconds raises UnavailableError.
    Writes are resent to another member only when the failure proves they were not applied; when the outcome is
    unknown (the member died mid-request) they raise UnavailableError at once, as kube-apiserver would answer
    with a timeout, and the caller decides. ``compaction_interval`` (seconds, 0 = never) runs kube-apiserver's
    compactor: every interval, compact to the revision seen one interval before, coordinated between stores
    sharing the cluster so only one compacts per interval. ``on_close`` runs once after the store has closed
    its channels (a store on an etcd it started stops that etcd there).
    """

    def __init__(
        self,
        endpoints: Sequence[str] | str,
        *,
        prefix: str = "",
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        timeout: float = 5.0,
        read_attempt_timeout: float = 2.0,
        compaction_interval: float = 300.0,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise ValueError("EtcdStore needs at least one endpoint")
        tls = ca_file is not None or cert_file is not None
        self._endpoints = [_parse_endpoint(e, tls) for e in endpoints]
        self._ssl: ssl.SSLContext | None = None
        if any(ep.secure for ep in self._endpoints):
            self._ssl = ssl.create_default_context(cafile=ca_file)
            if cert_file is not None:
                self._ssl.load_cert_chain(cert_file, key_file)
            self._ssl.set_alpn_protocols(["h2"])
        self._prefix = prefix.encode()
        self._compact_key = self._prefix + _COMPACT_KEY
        self._timeout = timeout
        self._read_attempt_timeout = read_attempt_timeout
        self._compaction_interval = compaction_interval
        self._active = 0  # the member we currently send to
        self._observed = 0  # the highest revision any answer has shown us
        self._closed = False
        self._compactor: asyncio.Task[None] | None = None
        # Set while a watch "from now" waits to learn what "now" is (see watch()); writes wait for it.
        self._learning_now: asyncio.Task[int] | None = None
        self._on_close = on_close
        # Gets that arrived while another read was in flight, sent together as the next read (see get()).
        self._reading = False
        self._waiting_reads: list[tuple[bytes, asyncio.Future[Any]]] = []
        self._read_task: asyncio.Task[None] | None = None  # the batch in flight (held: the loop keeps weak refs)

    # ---- plumbing ------------------------------------------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [ep.target for ep in self._endpoints]

    def _connect(self, index: int) -> _Endpoint:
        ep = self._endpoints[index]
        if ep.channel is None:
            if self._closed:
                raise UnavailableError("the etcd store is closed")
            ep.channel = H2Channel(ep.target, ssl_context=self._ssl if ep.secure else None, metadata=_METADATA)
            if self._compactor is None and self._compaction_interval > 0:
                self._compactor = asyncio.get_running_loop().create_task(self._run_compactor())
        return ep

    def _move_on(self, index: int) -> None:
        # Only the first of many concurrent failures on a member advances the pointer, so a burst of failed
        # requests does not skip over healthy members.
        if self._active == index:
            self._active = (index + 1) % len(self._endpoints)

    def _observe(self, revision: int) -> None:
        self._observed = max(self._observed, revision)

    async def _kv(self, method: str, request: Any, *, idempotent: bool) -> Any:
        """One KV call with failover; raises UnavailableError, _Compacted or StorageError."""
        # The first attempt is the hot path of every operation: keep it to one call with no bookkeeping.
        index = self._active
        ep = self._endpoints[index]
        if ep.channel is None:
            ep = self._connect(index)
        if self._learning_now is not None and not idempotent:
            await self._after_now_is_known()
        started = time.monotonic()
        # A read may give up on a member early and ask the next; a write that times out is ambiguous anyway,
        # so it may use the whole budget.
        attempt = min(self._timeout, self._read_attempt_timeout) if idempotent else self._timeout
        try:
            response = await ep.channel.unary(KV_METHODS[method], request, attempt)  # type: ignore[union-attr]
        except grpc.aio.AioRpcError as e:
            return await self._kv_retry(method, request, idempotent, index, e, started + self._timeout)
        self._observed = max(self._observed, response.header.revision)
        return response

    async def _kv_retry(
        self,
        method: str,
        request: Any,
        idempotent: bool,
        index: int,
        error: grpc.aio.AioRpcError,
        deadline: float,
    ) -> Any:
        failures = 0
        while True:
            failure = _classify(error)
            if failure is _Failure.FINAL:
                raise self._final_error(error) from error
            self._move_on(index)
            if failure is _Failure.UNCERTAIN and not idempotent:
                raise UnavailableError(
                    f"etcd member {self._endpoints[index].target} failed during a write, which may or may not "
                    f"have been applied: {error.details()}"
                ) from error
            failures += 1
            if failures % len(self._endpoints) == 0:
                # Every member refused once: back off a little before the next round (capped by the deadline).
                rounds = failures // len(self._endpoints)
                await asyncio.sleep(min(0.025 * 2**rounds, 0.5, max(deadline - time.monotonic(), 0)))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UnavailableError(
                    f"no etcd member answered within {self._timeout:g}s ({', '.join(self.endpoints)}): "
                    f"{error.details()}"
                ) from error
            index = self._active
            ep = self._connect(index)
            attempt = min(remaining, self._read_attempt_timeout) if idempotent else remaining
            try:
                response = await ep.channel.unary(KV_METHODS[method], request, attempt)  # type: ignore[union-attr]
            except grpc.aio.AioRpcError as e:
                error = e
                continue
            self._observe(response.header.revision)
            return response

    def _final_error(self, e: grpc.aio.AioRpcError) -> Exception:
        details = e.details() or ""
        if "required revision has been compacted" in details:
            return _Compacted(details)
        if "required revision is a future revision" in details:
            return _FutureRevision(details)
        if e.code() == grpc.StatusCode.CANCELLED and self._closed:
            return UnavailableError("the etcd store is closed")
        return StorageError(f"etcd: {e.code().name}: {details}")

    async def _expired(self, requested: int) -> ExpiredError:
        compacted = await self._compacted_through()
        # If etcd would not say, the requested revision itself is the one revision known to be gone.
        return ExpiredError(requested, requested if compacted is None else compacted)

    async def _compacted_through(self) -> int | None:
        """The highest revision etcd has forgotten, read from a watch's refusal (no RPC reports it directly)."""
        call = None
        try:
            async with asyncio.timeout(self._timeout):
                call = await self._connect(self._active).channel.stream(_WATCH)  # type: ignore[union-attr]
                await call.write(
                    rpc_pb2.WatchRequest(
                        create_request=rpc_pb2.WatchCreateRequest(key=self._compact_key, start_revision=1))
                )
                for _ in range(3):
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        break
                    if response.compact_revision:
                        # etcd keeps its compaction revision readable; the Store contract counts "forgotten through".
                        return int(response.compact_revision) - 1
        except (grpc.aio.AioRpcError, TimeoutError):
            pass
        finally:
            if call is not None:
                call.cancel()
        return None

    def _key(self, key: str) -> bytes:
        return self._prefix + key.encode()

    def _range(self, prefix: str) -> tuple[bytes, bytes]:
        if not prefix:
            # The whole store: stop before prefix + 0xff, where the store's own bookkeeping keys live.
            return (self._prefix or b"\x00"), self._prefix + _RESERVED
        start = self._key(prefix)
        return start, _prefix_end(start)

    def _to_kv(self, kv: Any) -> KeyValue:
        return KeyValue(
            key=kv.key[len(self._prefix) :].decode(),
            value=kv.value,
            revision=kv.mod_revision,
            create_revision=kv.create_revision,
        )

    # ---- the Store contract --------------------------------------------------------------------------------

    async def create(self, key: str, value: bytes) -> KeyValue:
        k = self._key(key)
        request = rpc_pb2.TxnRequest(
            compare=[_Compare(key=k, target=_Compare.CREATE, result=_Compare.EQUAL, create_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value))],
        )
        response = await self._kv("Txn", request, idempotent=False)
        if not response.succeeded:
            raise KeyExistsError(key)
        revision = response.header.revision
        return KeyValue(key=key, value=value, revision=revision, create_revision=revision)

    async def create_guarded(self, key: str, value: bytes, guard_key: str, guard_revision: int) -> KeyValue:
        """GuardedCreate: one transaction that creates ``key`` only if ``guard_key`` is still at ``guard_revision``."""
        k, g = self._key(key), self._key(guard_key)
        request = rpc_pb2.TxnRequest(
            compare=[
                _Compare(key=k, target=_Compare.CREATE, result=_Compare.EQUAL, create_revision=0),
                # A missing guard has mod_revision 0, which no revision a caller read can equal.
                _Compare(key=g, target=_Compare.MOD, result=_Compare.EQUAL, mod_revision=guard_revision),
            ],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value))],
            failure=[
                rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k, count_only=True)),
                rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=g, keys_only=True)),
            ],
        )
        response = await self._kv("Txn", request, idempotent=False)
        if not response.succeeded:
            if response.responses[0].response_range.count:
                raise KeyExistsError(key)
            guard = response.responses[1].response_range.kvs
            raise ConflictError(guard_key, guard_revision, guard[0].mod_revision if guard else 0)
        revision = response.header.revision
        return KeyValue(key=key, value=value, revision=revision, create_revision=revision)

    async def get(self, key: str) -> KeyValue:
        """A linearizable read of one key.

        Each gRPC call costs the client a few hundred microseconds of CPU, which is most of a get's cost to the API
        server. So gets group like commits do: a get that finds another read in flight waits for it to finish and
        is then sent with every other get that waited, as one read-only transaction (one RPC, one consistent
        revision). Every get in a batch was issued before the batch was sent, so each is still linearizable; an
        uncontended get is a single Range, as before.
        """
        k = self._key(key)
        if self._reading:
            waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._waiting_reads.append((k, waiter))
            kvs = await waiter
        else:
            self._reading = True
            try:
                kvs = (await self._kv("Range", rpc_pb2.RangeRequest(key=k), idempotent=True)).kvs
            finally:
                self._next_read_batch()
        if not kvs:
            raise KeyNotFoundError(key)
        return self._to_kv(kvs[0])

    def _next_read_batch(self) -> None:
        if not self._waiting_reads:
            self._reading = False
            return
        # etcd refuses transactions of more than --max-txn-ops operations (128 by default).
        batch, self._waiting_reads = self._waiting_reads[:128], self._waiting_reads[128:]
        self._read_task = asyncio.get_running_loop().create_task(self._read_batch(batch))

    async def _read_batch(self, batch: list[tuple[bytes, asyncio.Future[Any]]]) -> None:
        try:
            live = [(k, w) for k, w in batch if not w.done()]  # a cancelled get is not worth reading
            if live:
                request = rpc_pb2.TxnRequest(
                    success=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k)) for k, _ in live]
                )
                try:
                    response = await self._kv("Txn", request, idempotent=True)
                except BaseException as exc:  # every get of the batch ends with it
                    for _, w in live:
                        if not w.done():
                            if isinstance(exc, Exception):
                                w.set_exception(exc)
                            else:
                                w.cancel()
                    if not isinstance(exc, Exception):
                        raise
                else:
                    for (_, w), answer in zip(live, response.responses):
                        if not w.done():
                            w.set_result(answer.response_range.kvs)
        finally:
            self._next_read_batch()

    async def update(self, key: str, value: bytes, expected_revision: int) -> KeyValue:
        k = self._key(key)
        request = rpc_pb2.TxnRequest(
            compare=[
                _Compare(key=k, target=_Compare.MOD, result=_Compare.EQUAL, mod_revision=expected_revision),
                # A missing key has mod_revision 0: without this an expected_revision of 0 would create it.
                _Compare(key=k, target=_Compare.VERSION, result=_Compare.GREATER, version=0),
            ],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=value, prev_kv=True))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))],
        )
        response = await self._kv("Txn", request, idempotent=False)
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            if not kvs:
                raise KeyNotFoundError(key)
            raise ConflictError(key, expected_revision, kvs[0].mod_revision)
        prev = response.responses[0].response_put.prev_kv
        return KeyValue(key=key, value=value, revision=response.header.revision, create_revision=prev.create_revision)

    async def delete(self, key: str, expected_revision: int | None = None) -> KeyValue:
        k = self._key(key)
        if expected_revision is None:
            response = await self._kv("DeleteRange", rpc_pb2.DeleteRangeRequest(key=k, prev_kv=True), idempotent=False)
            if not response.deleted:
                raise KeyNotFoundError(key)
            prev = response.prev_kvs[0]
            return KeyValue(key, prev.value, response.header.revision, prev.create_revision)
        request = rpc_pb2.TxnRequest(
            compare=[
                _Compare(key=k, target=_Compare.MOD, result=_Compare.EQUAL, mod_revision=expected_revision),
                _Compare(key=k, target=_Compare.VERSION, result=_Compare.GREATER, version=0),
            ],
            success=[rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=k, prev_kv=True))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))],
        )
        response = await self._kv("Txn", request, idempotent=False)
        if not response.succeeded:
            kvs = response.responses[0].response_range.kvs
            if not kvs:
                raise KeyNotFoundError(key)
            raise ConflictError(key, expected_revision, kvs[0].mod_revision)
        prev = response.responses[0].response_delete_range.prev_kvs[0]
        return KeyValue(key, prev.value, response.header.revision, prev.create_revision)

    async def list(
        self, prefix: str, *, limit: int = 0, start_after: str | None = None, revision: int = 0
    ) -> ListResult:
        start, end = self._range(prefix)
        if start_after is not None:
            start = max(start, self._key(start_after) + b"\x00")
        request = rpc_pb2.RangeRequest(key=start, range_end=end, limit=max(limit, 0), revision=revision)
        try:
            response = await self._kv("Range", request, idempotent=True)
        except _Compacted:
            raise await self._expired(revision) from None
        except _FutureRevision:
            # kube-apiserver answers "too large resource version" with a retryable timeout; so does the store.
            raise UnavailableError(
                f"revision {revision} is newer than the current revision {await self.current_revision()}"
            ) from None
        items = [self._to_kv(kv) for kv in response.kvs]
        # Later pages stay on the first page's snapshot when the caller passes its revision back (the API server
        # carries it in the continue token it hands out, as kube-apiserver does); etcd then refuses with
        # ExpiredError once that snapshot is compacted.
        read_at = revision or response.header.revision
        if limit > 0 and response.more and items:
            return ListResult(items, read_at, continue_key=items[-1].key, remaining=response.count - len(items))
        return ListResult(items, read_at)

    async def count(self, prefix: str) -> int:
        start, end = self._range(prefix)
        request = rpc_pb2.RangeRequest(key=start, range_end=end, count_only=True)
        response = await self._kv("Range", request, idempotent=True)
        return int(response.count)

    async def current_revision(self) -> int:
        # Any read's header carries the store revision; a count of one reserved key is the cheapest read.
        request = rpc_pb2.RangeRequest(key=self._compact_key, count_only=True)
        response = await self._kv("Range", request, idempotent=True)
        return int(response.header.revision)

    async def compact(self, revision: int) -> None:
        """Forget history through ``revision``.

        etcd's compaction at R keeps R itself readable, so forgetting R means compacting etcd at R + 1. When R is
        the newest revision that would be a future revision to etcd; the store then first writes its compaction
        key (as kube-apiserver's compactor does every interval) to move the revision on.
        """
        if revision <= 0:
            return
        current = await self.current_revision()
        # Compacting the future would refuse every watch from now on; like the other backends, stop at the present.
        revision = min(revision, current)
        if revision == current:
            await self._kv(
                "Put", rpc_pb2.PutRequest(key=self._compact_key, value=str(revision).encode()), idempotent=False
            )
        await self._compact_etcd(revision + 1)

    async def _compact_etcd(self, etcd_revision: int) -> None:
        try:
            # Compaction to a revision is idempotent: resending it is safe.
            await self._kv("Compact", rpc_pb2.CompactionRequest(revision=etcd_revision), idempotent=True)
        except _Compacted:
            pass  # someone already compacted at least this far

    def watch(self, prefix: str, revision: int = 0) -> AsyncIterator[WatchEvent]:
        # "From now on" must mean from this call, not from the first iteration: an async generator's body only runs
        # when iterated, so remember now the newest revision we have seen. Every write this store made and every
        # list it served is at or below it, so events after it are exactly the changes the caller has not seen.
        observed = self._observed
        now = self._learn_now() if revision <= 0 and observed == 0 else None
        return self._watch(prefix, revision, observed, now)

    def _learn_now(self) -> asyncio.Task[int] | None:
        """A store that has not talked to etcd yet has seen no revision to call "now": ask for one at once, and
        make this store's writes wait for the answer, so that a write issued after watch() is after "now"."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None  # no loop yet: the watch learns "now" when first iterated
        task = self._learning_now
        if task is None or task.done():
            task = self._learning_now = loop.create_task(self.current_revision())
            # Whoever needs the answer awaits the task; a failure nobody awaited is not worth a warning.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return task

    async def _after_now_is_known(self) -> None:
        task = self._learning_now
        if task is not None:
            if not task.done():
                await asyncio.wait((task,))
            if self._learning_now is task:
                self._learning_now = None

    async def _watch(
        self, prefix: str, revision: int, observed: int, now: asyncio.Task[int] | None
    ) -> AsyncIterator[WatchEvent]:
        start, end = self._range(prefix)
        if revision > 0:
            after = revision
        elif observed:
            after = observed
        else:
            after = await (now if now is not None else self.current_revision())
        delivered = after  # the revision of the last event handed out; nothing at or below it is handed out again
        resume = after  # where a new stream starts: delivered, or later if a progress notification said so
        loop = asyncio.get_running_loop()
        failures = 0  # consecutive failed attempts to (re)establish the stream
        failing_since = 0.0
        last_error = ""
        while not self._closed:
            index = self._active
            ep = self._connect(index)
            call = None
            failed = True  # whether this stream ended in a way that counts as the member failing
            try:
                call = await ep.channel.stream(_WATCH)  # type: ignore[union-attr]
                await call.write(
                    rpc_pb2.WatchRequest(
                        create_request=rpc_pb2.WatchCreateRequest(
                            key=start,
                            range_end=end,
                            start_revision=resume + 1,
                            prev_kv=True,
                            progress_notify=True,
                        )
                    )
                )
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        last_error = f"etcd member {ep.target} closed the watch stream"
                        break
                    if response.compact_revision:
                        if revision == 0 and delivered == after and observed:
                            # Only our memory of "now" was too old. Whatever happened after the watch() call is
                            # still there (etcd cannot have compacted past the present), so start at the oldest
                            # revision etcd keeps: nothing the caller has not seen is lost.
                            after = delivered = resume = int(response.compact_revision) - 1
                            failed = False
                            break
                        raise ExpiredError(resume, response.compact_revision - 1)
                    if response.canceled:
                        last_error = f"etcd member {ep.target} cancelled the watch: {response.cancel_reason}"
                        if "no leader" in response.cancel_reason:
                            break
                        raise StorageError(last_error)
                    if response.created:
                        failures = 0
                        continue
                    if not response.events:
                        # A progress notification: everything up to this revision has been sent. Resume from
                        # there after a reconnect, so an idle watch's resume point is not compacted away.
                        resume = max(resume, response.header.revision)
                        continue
                    for event in response.events:
                        kv = event.kv
                        if kv.mod_revision <= delivered:
                            continue
                        yield self._to_event(event)
                        delivered = kv.mod_revision
                        self._observe(delivered)
                    resume = max(resume, delivered)
            except grpc.aio.AioRpcError as e:
                if self._closed:
                    return
                if _classify(e) is _Failure.FINAL:
                    raise StorageError(f"etcd watch: {e.code().name}: {e.details()}") from e
                last_error = f"etcd member {ep.target}: {e.details()}"
            except asyncio.CancelledError:
                # Closing the store closes the channels, which can end their streams as cancelled: that ends the
                # watch quietly. A cancellation of the consumer's own task must still propagate.
                task = asyncio.current_task()
                if self._closed and (task is None or not task.cancelling()):
                    return
                raise
            finally:
                if call is not None:
                    call.cancel()
            if self._closed:
                return
            if not failed:
                continue
            # The stream broke or its member lost the leader: resume on the next member from where we were.
            self._move_on(index)
            if failures == 0:
                failing_since = loop.time()
            failures += 1
            if loop.time() - failing_since >= self._timeout:
                raise UnavailableError(f"no etcd member would serve a watch within {self._timeout:g}s: {last_error}")
            if failures % len(self._endpoints) == 0:
                rounds = failures // len(self._endpoints)
                await asyncio.sleep(min(0.025 * 2**rounds, 0.5))
            log.info("etcd watch on %r resuming after revision %d: %s", prefix, resume, last_error)

    def _to_event(self, event: Any) -> WatchEvent:
        kv = event.kv
        key = kv.key[len(self._prefix) :].decode()
        prev = event.prev_kv.value if event.HasField("prev_kv") else None
        if event.type == _DELETE:
            return WatchEvent("DELETED", key, prev if prev is not None else b"", kv.mod_revision, prev)
        if kv.create_revision == kv.mod_revision:
            return WatchEvent("ADDED", key, kv.value, kv.mod_revision, None)
        return WatchEvent("MODIFIED", key, kv.value, kv.mod_revision, prev)

    async def close(self) -> None:
        self._closed = True
        if self._compactor is not None:
            self._compactor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._compactor
            self._compactor = None
        for ep in self._endpoints:
            if ep.channel is not None:
                await ep.channel.close()
                ep.channel = None
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            await on_close()

    @classmethod
    def from_url(cls, spec: str) -> EtcdStore:
        """``etcd://host:port[,host:port...][/prefix][?options]``; ``etcds://`` for TLS; bare ``etcd`` is etcd's
        default local endpoint, 127.0.0.1:2379.

        Options: ``ca``, ``cert``, ``key`` (PEM file paths; ``ca`` implies TLS), ``timeout`` and
        ``compaction_interval`` (seconds).
        """
        if spec == "etcd":
            spec = "etcd://127.0.0.1:2379"
        parts = urlsplit(spec)
        if parts.scheme not in ("etcd", "etcds"):
            raise ValueError(f"not an etcd store URL: {spec!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        scheme = "https" if parts.scheme == "etcds" or "ca" in query else "http"
        endpoints = [f"{scheme}://{host}" for host in parts.netloc.split(",") if host]
        options: dict[str, Any] = {}
        for name in ("timeout", "compaction_interval"):
            if name in query:
                options[name] = float(query[name])
        return cls(
            endpoints,
            prefix=unquote(parts.path) if parts.path not in ("", "/") else "",
            ca_file=query.get("ca"),
            cert_file=query.get("cert"),
            key_file=query.get("key"),
            **options,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- periodic compaction -------------------------------------------------------------------------------

    async def _run_compactor(self) -> None:
        # kube-apiserver's algorithm: the version of the compaction key is a logical clock shared by every
        # store on the cluster. Each interval, whoever moves the clock from the value it last saw compacts to the
        # revision it saw one interval ago; the others just learn the new clock value.
        clock, seen = 0, 0
        while not self._closed:
            await asyncio.sleep(self._compaction_interval)  # a timer, not synchronisation
            try:
                clock, seen = await self.compaction_round(clock, seen)
            except (StorageError, _Compacted) as e:
                log.warning("etcd compaction failed (will retry next interval): %s", e)

    async def compaction_round(self, clock: int, previous_revision: int) -> tuple[int, int]:
        """One step of the periodic compactor; returns the new (clock, revision) to pass next time."""
        k = self._compact_key
        request = rpc_pb2.TxnRequest(
            compare=[_Compare(key=k, target=_Compare.VERSION, result=_Compare.EQUAL, version=clock)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=k, value=str(previous_revision).encode()))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=k))],
        )
        try:
            response = await self._kv("Txn", request, idempotent=False)
        except UnavailableError:
            return clock, previous_revision
        current = response.header.revision
        if not response.succeeded:
            return response.responses[0].response_range.kvs[0].version, current
        if previous_revision > 0:
            await self._compact_etcd(previous_revision)
            log.info("etcd compacted to revision %d", previous_revision)
        return clock + 1, current


class EtcdUnreachableError(ConnectionError):
    """No member of an existing etcd cluster answered when a store on it was opened. The message is one line that
    names the endpoints and what to check, for a command line to print as it is."""


async def open_etcd_store(spec: str, data_dir: Path | None = None) -> EtcdStore:
    """The ``open_store`` opener for ``etcd://`` and ``etcds://`` URLs (an existing cluster; ``data_dir`` is unused,
    etcd keeps its own data).

    The store is checked with one read before it is handed out, so a wrong address or a stopped cluster is an
    EtcdUnreachableError at start-up rather than a 503 on the first request.
    """
    store = EtcdStore.from_url(spec)
    try:
        await store.current_revision()
    except StorageError as exc:
        await store.close()
        raise EtcdUnreachableError(_unreachable_message(store, exc)) from None
    return store


def _unreachable_message(store: EtcdStore, exc: StorageError) -> str:
    where = ", ".join(store.endpoints)
    cause = exc.__cause__
    if isinstance(cause, grpc.aio.AioRpcError):
        reason = cause.details() or cause.code().name
        # gRPC prefixes the reason with what it tried ("failed to connect to all addresses; last error: ..."):
        # the last clause is the one a person can act on.
        reason = reason.rsplit(": ", 1)[-1]
    else:
        reason = str(exc)
    reason = " ".join(reason.split())
    if isinstance(exc, UnavailableError):
        tls = any(ep.secure for ep in store._endpoints)
        check = (
            "check that etcd is running and serving clients at that address (its --listen-client-urls), "
            + (
                "and that the ca, cert and key options are the ones its client certificates need"
                if tls
                else "and use etcds:// (or ?ca=...&cert=...&key=...) if it serves TLS"
            )
        )
        return f"cannot reach etcd at {where} within {store._timeout:g}s ({reason}); {check}"
    return f"etcd at {where} refused the store ({reason}); check the URL's endpoints, prefix and TLS options"
