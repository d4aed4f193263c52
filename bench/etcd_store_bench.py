"""EtcdStore's cost over the etcd client it is built on, run on demand: writes/s, gets/s and watch latency (time from
a put being sent to its event arriving, p50/p99) at 1 and 32 concurrent callers, for the raw gRPC stubs on
grpc.aio (the transport aetcd uses), the same requests over h2grpc (EtcdStore's transport, called directly) and
for EtcdStore, in one run, with the ratios. aetcd's high-level client is shown for reference.

A store create is a transaction (create only if absent), so writes are measured three ways: a raw Put, the raw
transaction EtcdStore sends, and EtcdStore.create. The wrapper's own cost is the last two; the price of
compare-and-swap over a blind put is the first two.

Usage: python bench/etcd_store_bench.py [--seconds 2] [--endpoint http://127.0.0.1:2379]
(starts a throwaway local etcd unless --endpoint is given; about 40 s)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aetcd
import grpc
from aetcd.rpc import rpc_pb2, rpc_pb2_grpc

from controlplane.storage.etcd import KV_METHODS, EtcdStore
from controlplane.storage.etcd_process import LocalEtcd
from controlplane.storage.h2grpc import H2Channel

VALUE = b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},"spec":{}}' * 8  # ~700 B
READ_KEYS = 1000
_Compare = rpc_pb2.Compare


@dataclass
class Result:
    ops: int
    seconds: float
    cpu: float = 0.0  # CPU seconds of this process (Python and gRPC's threads): the client's cost, less noisy

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.ops * 1e6


async def run_for(seconds: float, concurrency: int, op: Callable[[int, int], Awaitable[Any]]) -> Result:
    """Run ``op(worker, i)`` in ``concurrency`` loops for ``seconds``; count completed calls."""
    done = 0
    cpu = time.process_time()
    start = time.perf_counter()
    end = start + seconds

    async def loop(w: int) -> None:
        nonlocal done
        for i in itertools.count():
            if time.perf_counter() >= end:
                return
            await op(w, i)
            done += 1

    await asyncio.gather(*(loop(w) for w in range(concurrency)))
    return Result(done, time.perf_counter() - start, time.process_time() - cpu)


async def interleaved(
    seconds: float, concurrency: int, ops: list[Callable[[int, int], Awaitable[Any]]], rounds: int = 6
) -> list[Result]:
    """ops/s of each op, measured in alternating slices (A B C A B C ...) so that drift in the machine or in
    etcd (its database grows as the run goes on) falls on every op alike."""
    totals = [Result(0, 0.0) for _ in ops]
    for _ in range(rounds):
        for total, op in zip(totals, ops):
            r = await run_for(seconds / rounds, concurrency, op)
            total.ops += r.ops
            total.seconds += r.seconds
            total.cpu += r.cpu
    return totals


_run_ids = itertools.count()


def fresh_prefix(label: str) -> bytes:
    return f"/bench/{label}-{next(_run_ids)}/".encode()


class Raw:
    """The generated etcd gRPC stubs on a grpc.aio channel (aetcd's transport), and the same unary requests on an
    h2grpc channel (EtcdStore's transport), without EtcdStore."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)
        self.h2 = H2Channel(target)

    @staticmethod
    def create_request(key: bytes, value: bytes = VALUE) -> Any:
        return rpc_pb2.TxnRequest(
            compare=[_Compare(key=key, target=_Compare.CREATE, result=_Compare.EQUAL, create_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value))],
        )

    async def create_txn_h2(self, key: bytes, value: bytes = VALUE) -> None:
        response = await self.h2.unary(KV_METHODS["Txn"], self.create_request(key, value), 5.0)
        assert response.succeeded

    async def get_h2(self, key: bytes) -> None:
        response = await self.h2.unary(KV_METHODS["Range"], rpc_pb2.RangeRequest(key=key), 5.0)
        assert response.kvs

    async def put(self, key: bytes) -> None:
        await self.kv.Put(rpc_pb2.PutRequest(key=key, value=VALUE))

    async def create_txn(self, key: bytes, value: bytes = VALUE) -> None:
        response = await self.kv.Txn(self.create_request(key, value))
        assert response.succeeded

    async def get(self, key: bytes) -> None:
        response = await self.kv.Range(rpc_pb2.RangeRequest(key=key))
        assert response.kvs

    async def close(self) -> None:
        await self.channel.close()
        await self.h2.close()


async def watch_latency(
    seconds: float,
    concurrency: int,
    raw: Raw,
    subscribe: Callable[[bytes], Awaitable[Callable[[], Awaitable[list[bytes]]]]],
) -> list[float]:
    """``concurrency`` writers each put a unique key (a raw Put, the same for both watchers) and wait for the watch
    to deliver it before the next, so latency is measured with a bounded number in flight rather than piling up
    behind a writer that outruns the watcher. Returns the latencies in seconds."""
    prefix = fresh_prefix("watch")
    waiting: dict[bytes, asyncio.Future[float]] = {}
    latencies: list[float] = []
    next_keys = await subscribe(prefix)
    loop = asyncio.get_running_loop()

    async def watcher() -> None:
        while True:
            keys = await next_keys()
            now = time.perf_counter()
            for key in keys:
                waiting.pop(key).set_result(now)

    async def put_and_see(w: int, i: int) -> None:
        key = prefix + b"w%02d-%07d" % (w, i)
        seen = waiting[key] = loop.create_future()
        sent = time.perf_counter()
        await raw.put(key)
        latencies.append(await seen - sent)

    watching = asyncio.create_task(watcher())
    try:
        await run_for(seconds, concurrency, put_and_see)
    finally:
        watching.cancel()
    return latencies


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3
    return pick(0.50), pick(0.99)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each measurement")
    parser.add_argument("--endpoint", help="an etcd client URL to use instead of a throwaway local etcd")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the local etcd and the client to CPUs")
    args = parser.parse_args()

    local: LocalEtcd | None = None
    pinned = ""
    tmp = tempfile.TemporaryDirectory(prefix="etcd-bench-")
    if args.endpoint:
        endpoint = args.endpoint
    else:
        local = LocalEtcd(Path(tmp.name) / "etcd")
        await local.start()
        endpoint = local.endpoint
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2 and not args.no_pin:
            # Client and server on separate CPUs: otherwise they steal time from each other unevenly between
            # runs and the figures wander by a third.
            os.sched_setaffinity(local.pid or 0, {cpus[-1]})
            os.sched_setaffinity(0, set(cpus[:-1]))
            pinned = f" (etcd on CPU {cpus[-1]}, client on {cpus[:-1]})"
    target = endpoint.split("://", 1)[-1]
    raw = Raw(target)
    store = EtcdStore([endpoint], compaction_interval=0)
    host, port = target.rsplit(":", 1)
    high = aetcd.Client(host=host, port=int(port))
    rows: list[tuple[str, int, Result, Result, Result | None]] = []  # (baseline, concurrency, raw, store, aetcd)
    latency_rows: list[tuple[int, list[list[float]]]] = []  # (concurrency, [raw, raw + prev_kv, store])
    try:
        read_prefix = fresh_prefix("read")
        for i in range(READ_KEYS):
            await raw.put(read_prefix + b"%05d" % i)
        read_keys = [read_prefix + b"%05d" % i for i in range(READ_KEYS)]
        read_names = [k.decode() for k in read_keys]
        rng = random.Random(1)

        def keyer(label: str) -> Callable[[int, int], bytes]:
            prefix = fresh_prefix(label)
            counter = itertools.count()  # unique across the interleaved slices, which restart i at 0
            return lambda w, i: prefix + b"%08d" % next(counter)

        s = args.seconds
        for c in (1, 32):
            k_put, k_txn, k_h2, k_store, k_aetcd = (keyer(x) for x in ("put", "txn", "h2", "store", "aetcd"))
            put, txn, txn_h2, create, high_put = await interleaved(
                s,
                c,
                [
                    lambda w, i, k=k_put: raw.put(k(w, i)),
                    lambda w, i, k=k_txn: raw.create_txn(k(w, i)),
                    lambda w, i, k=k_h2: raw.create_txn_h2(k(w, i)),
                    lambda w, i, k=k_store: store.create(k(w, i).decode(), VALUE),
                    lambda w, i, k=k_aetcd: high.put(k(w, i), VALUE),
                ],
            )
            rows.append(("write: raw Put", c, put, create, high_put))
            rows.append(("write: raw create txn", c, txn, create, None))
            rows.append(("  the same on h2grpc", c, txn_h2, create, None))
            get, get_h2, store_get, high_get = await interleaved(
                s,
                c,
                [
                    lambda w, i: raw.get(rng.choice(read_keys)),
                    lambda w, i: raw.get_h2(rng.choice(read_keys)),
                    lambda w, i: store.get(rng.choice(read_names)),
                    lambda w, i: high.get(rng.choice(read_keys)),
                ],
            )
            rows.append(("read: raw Range", c, get, store_get, high_get))
            rows.append(("  the same on h2grpc", c, get_h2, store_get, None))
            # The store asks for each event's previous value (a DELETED event must carry the last value, as
            # kube-apiserver's watcher does), which costs etcd a read per event: raw is shown with and without.
            # Interleaved slices again, so machine drift falls on all three alike.
            samples: list[list[float]] = [[], [], []]
            for _ in range(6):
                samples[0] += await watch_latency(s / 6, c, raw, lambda p: raw_subscribe(raw, p, False))
                samples[1] += await watch_latency(s / 6, c, raw, lambda p: raw_subscribe(raw, p, True))
                samples[2] += await watch_latency(s / 6, c, raw, lambda p: store_subscribe(store, p))
            latency_rows.append((c, samples))
    finally:
        await high.close()
        await store.close()
        await raw.close()
        if local is not None:
            await local.stop()
        tmp.cleanup()

    print(
        f"\netcd {endpoint}, {args.seconds:g} s per figure, {os.cpu_count()} CPUs{pinned}; "
        "raw = aetcd's generated gRPC stubs on grpc.aio, or the same requests on h2grpc; "
        "EtcdStore op: create (write), get (read)\n"
    )
    print(f"{'':<24}{'':>5}{'ops/s':^34}{'client CPU us/op':^22}")
    print(
        f"{'':<24}{'conc':>5}{'raw':>10}{'EtcdStore':>11}{'store/raw':>11}"
        f"{'raw':>8}{'store':>8}{'+':>6}{'aetcd.Client ops/s':>20}"
    )
    for what, c, r, st, hi in rows:
        high_text = f"{hi.rate:>20,.0f}" if hi is not None else ""
        print(
            f"{what:<24}{c:>5}{r.rate:>10,.0f}{st.rate:>11,.0f}{st.rate / r.rate:>10.0%} "
            f"{r.cpu_us:>8.0f}{st.cpu_us:>8.0f}{st.cpu_us - r.cpu_us:>+6.0f}{high_text}"
        )
    print(f"\n{'watch latency, put sent -> event seen (ms)':<44}{'p50':>8}{'p99':>8}{'events':>8}")
    for c, samples in latency_rows:
        (r50, r99), (k50, k99), (s50, s99) = (percentiles(x) for x in samples)
        print(f"  concurrency {c:<2} {'raw watch':<27}{r50:>8.2f}{r99:>8.2f}{len(samples[0]):>8}")
        print(f"  {'':<15}{'raw watch + prev_kv':<27}{k50:>8.2f}{k99:>8.2f}{len(samples[1]):>8}")
        print(
            f"  {'':<15}{'EtcdStore.watch':<27}{s50:>8.2f}{s99:>8.2f}{len(samples[2]):>8}"
            f"   p50 {s50 / k50:.2f}x raw + prev_kv"
        )


async def raw_subscribe(raw: Raw, prefix: bytes, prev_kv: bool) -> Callable[[], Awaitable[list[bytes]]]:
    call = raw.watch.Watch()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    create = rpc_pb2.WatchCreateRequest(key=prefix, range_end=end, prev_kv=prev_kv)
    await call.write(rpc_pb2.WatchRequest(create_request=create))
    created = await call.read()
    assert created.created

    async def next_keys() -> list[bytes]:
        response = await call.read()
        return [event.kv.key for event in response.events]

    return next_keys


async def store_subscribe(store: EtcdStore, prefix: bytes) -> Callable[[], Awaitable[list[bytes]]]:
    watch = store.watch(prefix.decode(), revision=await store.current_revision())

    async def next_keys() -> list[bytes]:
        event = await anext(watch)
        return [event.key.encode()]

    return next_keys


if __name__ == "__main__":
    asyncio.run(main())
