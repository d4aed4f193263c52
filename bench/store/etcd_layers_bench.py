"""What each layer over etcd costs, in one run: raw etcd (aetcd's gRPC stubs on grpc.aio, called directly; and the
same requests on h2grpc, EtcdStore's transport), EtcdStore, and the API server on etcd
(`ccmkit apiserver --store etcd://...` in its own process, over HTTP), with the same figures for sqlite
(SqliteStore in-process, the API server on `--store sqlite`) beside them.

Rows: writes/s (raw: the create transaction EtcdStore sends; store: create; API: POST of a ConfigMap), reads/s (raw
Range; store get; API GET of one ConfigMap) at 1 and 32 concurrent callers (connections, for HTTP), and watch
latency at 1 and 32 writers in flight. The targets the etcd backend was built to: EtcdStore at >= 80% of raw, the
API server on etcd at >= 50% of raw, at the same concurrency. "raw" there is aetcd's client (grpc.aio), as the issue
asks; the ratios to raw on h2grpc, a faster client than aetcd's, are printed beside them.

EtcdStore groups gets that overlap into one read-only transaction, so at 32 callers its reads can outrun raw
single Ranges; the API server's gets benefit the same way. Writes cannot be grouped (each create is its own
compare-and-swap with its own revision).

Measurements of one kind are interleaved in slices (A B C A B C ...) so drift in the machine or in etcd falls on
every layer alike. Client CPU per operation (this process only) is printed for the in-process layers.

Usage: python bench/store/etcd_layers_bench.py [--seconds 2] [--pin] (about 90 s with the defaults)
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson
import yaml
from aetcd.rpc import rpc_pb2
from etcd_store_bench import (
    Raw,
    Result,
    interleaved,
    percentiles,
    raw_subscribe,
    store_subscribe,
)

from controlplane.storage.etcd import EtcdStore
from controlplane.storage.etcd_process import LocalEtcd
from controlplane.storage.sqlite import SqliteStore

NAMESPACE = "bench"
CM_PATH = f"/api/v1/namespaces/{NAMESPACE}/configmaps"
CM_KEY = f"/registry/configmaps/{NAMESPACE}/"
# Raw and EtcdStore writes go elsewhere, so the API server's watch cache on configmaps never decodes them.
OTHER_KEY = "/bench-elsewhere/"
READ_OBJECTS = 500


def configmap(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {"payload": "x" * 400}}


def configmap_bytes(name: str) -> bytes:
    return orjson.dumps(configmap(name))  # ~500 B, the size of the stored value at every layer


# ---- a minimal HTTP/1.1 client: keep-alive requests and one watch stream -------------------------------------
# httpx spends about a millisecond of CPU per request here, which on two cores would be charged to the server.


class Http:
    """One keep-alive connection, one request at a time, Content-Length answers only."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> Http:
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, host)

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAccept: application/json\r\n"
        if method in ("POST", "PUT"):
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", header)
        assert match is not None, header
        return int(header[9:12]), await self.reader.readexactly(int(match.group(1)))

    async def close(self) -> None:
        self.writer.close()


async def http_watch(url: str, resource_version: str) -> Callable[[], Awaitable[list[bytes]]]:
    """A watch on the bench namespace's configmaps; each call returns the names of the next ADDED events."""
    http = await Http.open(url)
    path = f"{CM_PATH}?watch=true&resourceVersion={resource_version}&timeoutSeconds=3600"
    http.writer.write(f"GET {path} HTTP/1.1\r\nHost: {http.host}\r\n\r\n".encode())
    header = await http.reader.readuntil(b"\r\n\r\n")
    assert header.startswith(b"HTTP/1.1 200") and b"chunked" in header.lower(), header
    pending = bytearray()

    async def next_names() -> list[bytes]:
        while True:
            size = int((await http.reader.readuntil(b"\r\n")).strip(), 16)
            pending.extend((await http.reader.readexactly(size + 2))[:size])
            *frames, rest = bytes(pending).split(b"\n")
            pending[:] = rest
            names = [orjson.loads(f)["object"]["metadata"]["name"].encode() for f in frames if f]
            if names:
                return names

    next_names.close = http.close  # type: ignore[attr-defined]  # see watch_latency
    return next_names


# ---- servers -----------------------------------------------------------------------------------------------


class ApiserverProcess:
    def __init__(self, store: str, data_dir: Path) -> None:
        self.data_dir = data_dir
        with open(data_dir.with_suffix(".log"), "w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controlplane.cli", "apiserver", "--store", store, "--data-dir",
                 str(data_dir), "--port", "0"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
                start_new_session=True)

    async def ready(self, timeout: float = 60.0) -> str:
        config = self.data_dir / "kubeconfig"
        deadline = time.monotonic() + timeout
        while not config.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ccmkit apiserver did not start: {self.data_dir.with_suffix('.log').read_text()}")
            await asyncio.sleep(0.05)  # a process readiness poll
        return yaml.safe_load(config.read_text())["clusters"][0]["cluster"]["server"]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class HttpPool:
    """One connection per concurrent caller (worker w uses connection w)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conns: list[Http] = []

    async def get(self, w: int) -> Http:
        while len(self.conns) <= w:
            self.conns.append(await Http.open(self.url))
        return self.conns[w]

    async def post(self, w: int, path: str, body: bytes) -> None:
        status, answer = await (await self.get(w)).request("POST", path, body)
        assert status == 201, (status, answer[:300])

    async def fetch(self, w: int, path: str) -> None:
        status, answer = await (await self.get(w)).request("GET", path)
        assert status == 200, (status, answer[:300])

    async def close(self) -> None:
        for c in self.conns:
            await c.close()


# ---- watch latency -----------------------------------------------------------------------------------------


async def watch_latency(seconds: float, concurrency: int, write: Callable[[int, bytes], Awaitable[Any]],
                        subscribe: Callable[[], Awaitable[Callable[[], Awaitable[list[bytes]]]]],
                        label: str) -> list[float]:
    """``concurrency`` writers each write a fresh name and wait for the watch to deliver it before the next one;
    latency is from the write being sent to the event being read."""
    run = next(_runs)
    waiting: dict[bytes, asyncio.Future[float]] = {}
    latencies: list[float] = []
    next_names = await subscribe()
    loop = asyncio.get_running_loop()

    async def watcher() -> None:
        while True:
            names = await next_names()
            now = time.perf_counter()
            for name in names:
                future = waiting.pop(name, None)
                if future is not None:
                    future.set_result(now)

    async def write_and_see(w: int) -> None:
        for i in itertools.count():
            if time.perf_counter() >= end:
                return
            name = f"{label}-{run}-{w:02d}-{i:06d}".encode()
            seen = waiting[name] = loop.create_future()
            sent = time.perf_counter()
            await write(w, name)
            latencies.append(await asyncio.wait_for(seen, 30) - sent)

    watching = asyncio.create_task(watcher())
    end = time.perf_counter() + seconds
    try:
        await asyncio.gather(*(write_and_see(w) for w in range(concurrency)))
    finally:
        watching.cancel()
        # An HTTP watch left open and unread would go on costing its API server every later write (a frame per
        # event, until 20,000 pile up and the server ends it), and so inflate the server CPU of the rows after it.
        close = getattr(next_names, "close", None)
        if close is not None:
            await close()
    return latencies


_runs = itertools.count()


# ---- the run -----------------------------------------------------------------------------------------------


@dataclass
class Row:
    what: str
    concurrency: int
    layers: dict[str, Result]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    etcd = subprocess.run(["etcd", "--version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    return (f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {etcd}, "
            f"load average {os.getloadavg()[0]:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of each figure")
    parser.add_argument("--pin", action="store_true",
                        help="run etcd on the last CPU and everything else on the others (steadier, but the API "
                             "server then shares its CPU with the client)")
    args = parser.parse_args()
    s = args.seconds
    started = time.monotonic()
    print(f"machine: {machine()}", flush=True)

    tmp = tempfile.TemporaryDirectory(prefix="etcd-layers-")
    base = Path(tmp.name)
    etcd = LocalEtcd(base / "etcd")
    await etcd.start()
    if args.pin and len(cpus := sorted(os.sched_getaffinity(0))) >= 2:
        os.sched_setaffinity(etcd.pid or 0, {cpus[-1]})
        os.sched_setaffinity(0, set(cpus[:-1]))  # inherited by the API servers started below
    target = etcd.endpoint.split("://", 1)[1]
    raw = Raw(target)
    store = EtcdStore([etcd.endpoint], compaction_interval=0)
    sqlite = await SqliteStore.open(base / "bench-sqlite.db")
    api_etcd_proc = ApiserverProcess(f"etcd://{target}?compaction_interval=0", base / "api-etcd")
    api_sqlite_proc = ApiserverProcess("sqlite", base / "api-sqlite")
    rows: list[Row] = []
    latency_rows: list[tuple[int, dict[str, list[float]]]] = []
    try:
        api_etcd = HttpPool(await api_etcd_proc.ready())
        api_sqlite = HttpPool(await api_sqlite_proc.ready())
        for pool in (api_etcd, api_sqlite):
            ns = orjson.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            await pool.post(0, "/api/v1/namespaces", ns)

        # Objects to read: the same ConfigMaps at every layer (created through the API servers, so raw etcd and
        # EtcdStore read exactly what the API server on etcd reads).
        read_names = [f"read-{i:05d}" for i in range(READ_OBJECTS)]
        for i in range(0, READ_OBJECTS, 32):
            chunk = read_names[i:i + 32]
            await asyncio.gather(*(api_etcd.post(w, CM_PATH, configmap_bytes(n)) for w, n in enumerate(chunk)))
            await asyncio.gather(*(api_sqlite.post(w, CM_PATH, configmap_bytes(n)) for w, n in enumerate(chunk)))
        for n in read_names:
            await sqlite.create(CM_KEY + n, configmap_bytes(n))
        rng = random.Random(1)
        pick = lambda: rng.choice(read_names)

        async def api_rv(pool: HttpPool) -> str:
            status, body = await (await pool.get(0)).request("GET", f"{CM_PATH}?limit=1")
            assert status == 200, body
            return orjson.loads(body)["metadata"]["resourceVersion"]

        async def http_watch_now(pool: HttpPool) -> Callable[[], Awaitable[list[bytes]]]:
            return await http_watch(pool.url, await api_rv(pool))

        def raw_put(prefix: str) -> Callable[[int, bytes], Awaitable[None]]:
            async def put(w: int, name: bytes) -> None:
                await raw.kv.Put(rpc_pb2.PutRequest(key=prefix.encode() + name, value=configmap_bytes(name.decode())))

            return put

        async def sqlite_subscribe() -> Callable[[], Awaitable[list[bytes]]]:
            watch = sqlite.watch(CM_KEY, revision=await sqlite.current_revision())

            async def next_names() -> list[bytes]:
                return [(await anext(watch)).key[len(CM_KEY):].encode()]

            return next_names

        def names(label: str) -> Callable[[int, int], str]:
            counter = itertools.count()  # unique across the interleaved slices, which restart i at 0
            return lambda w, i: f"{label}-{next(counter):08d}"

        for c in (1, 32):
            n_raw, n_h2, n_store, n_api, n_sql, n_api_sql = (
                names(f"{x}-c{c}") for x in ("raw", "h2", "store", "api", "sql", "apisql"))
            cpu_etcd, cpu_sqlite = api_etcd_proc.cpu_seconds(), api_sqlite_proc.cpu_seconds()
            results = await interleaved(s, c, [
                lambda w, i, k=n_raw: raw.create_txn((OTHER_KEY + (n := k(w, i))).encode(), configmap_bytes(n)),
                lambda w, i, k=n_h2: raw.create_txn_h2((OTHER_KEY + (n := k(w, i))).encode(), configmap_bytes(n)),
                lambda w, i, k=n_store: store.create(OTHER_KEY + (n := k(w, i)), configmap_bytes(n)),
                lambda w, i, k=n_api: api_etcd.post(w, CM_PATH, configmap_bytes(k(w, i))),
                lambda w, i, k=n_sql: sqlite.create(CM_KEY + (n := k(w, i)), configmap_bytes(n)),
                lambda w, i, k=n_api_sql: api_sqlite.post(w, CM_PATH, configmap_bytes(k(w, i))),
            ])
            _server_cpu(results[3], api_etcd_proc.cpu_seconds() - cpu_etcd)
            _server_cpu(results[5], api_sqlite_proc.cpu_seconds() - cpu_sqlite)
            rows.append(Row("write (create)", c, dict(zip(LAYERS, results))))
            print(f"  [{time.monotonic() - started:5.0f}s] writes at {c} done", flush=True)

            cpu_etcd, cpu_sqlite = api_etcd_proc.cpu_seconds(), api_sqlite_proc.cpu_seconds()
            results = await interleaved(s, c, [
                lambda w, i: raw.get((CM_KEY + pick()).encode()),
                lambda w, i: raw.get_h2((CM_KEY + pick()).encode()),
                lambda w, i: store.get(CM_KEY + pick()),
                lambda w, i: api_etcd.fetch(w, f"{CM_PATH}/{pick()}"),
                lambda w, i: sqlite.get(CM_KEY + pick()),
                lambda w, i: api_sqlite.fetch(w, f"{CM_PATH}/{pick()}"),
            ])
            _server_cpu(results[3], api_etcd_proc.cpu_seconds() - cpu_etcd)
            _server_cpu(results[5], api_sqlite_proc.cpu_seconds() - cpu_sqlite)
            rows.append(Row("read (get one)", c, dict(zip(LAYERS, results))))
            print(f"  [{time.monotonic() - started:5.0f}s] reads at {c} done", flush=True)

            # Watch latency. The etcd layers share one writer, a raw Put of a ConfigMap, so the three rows differ
            # only in the watch path; the API servers are also timed from an HTTP create.
            def api_create(pool: HttpPool) -> Callable[[int, bytes], Awaitable[None]]:
                async def create(w: int, name: bytes) -> None:
                    # Writers take connections 1.. so they never share one with the rv probe on 0.
                    await pool.post(1 + w, CM_PATH, configmap_bytes(name.decode()))

                return create

            samples: dict[str, list[float]] = {k: [] for k in WATCH_LAYERS}
            rounds = 4
            for _ in range(rounds):
                t = s / rounds
                samples["raw"] += await watch_latency(
                    t, c, raw_put(OTHER_KEY), lambda: _strip(raw_subscribe(raw, OTHER_KEY.encode(), True)), "wr")
                samples["store"] += await watch_latency(
                    t, c, raw_put(OTHER_KEY), lambda: _strip(store_subscribe(store, OTHER_KEY.encode())), "ws")
                samples["api"] += await watch_latency(
                    t, c, raw_put(CM_KEY), lambda: http_watch_now(api_etcd), "wa")
                samples["api-create"] += await watch_latency(
                    t, c, api_create(api_etcd), lambda: http_watch_now(api_etcd), "wc")
                samples["sqlite"] += await watch_latency(
                    t, c, lambda w, n: sqlite.create(CM_KEY + n.decode(), configmap_bytes(n.decode())),
                    sqlite_subscribe, "wq")
                samples["api-sqlite"] += await watch_latency(
                    t, c, api_create(api_sqlite), lambda: http_watch_now(api_sqlite), "wqa")
            latency_rows.append((c, samples))
            print(f"  [{time.monotonic() - started:5.0f}s] watch latency at {c} done", flush=True)
    finally:
        api_etcd_proc.stop()
        api_sqlite_proc.stop()
        await store.close()
        await sqlite.close()
        await raw.close()
        await etcd.stop()
        tmp.cleanup()
    print_table(rows, latency_rows, s, args.pin, time.monotonic() - started)


LAYERS = ("raw", "raw-h2", "store", "api", "sqlite", "api-sqlite")
WATCH_LAYERS = ("raw", "store", "api", "api-create", "sqlite", "api-sqlite")


def _server_cpu(result: Result, seconds: float) -> None:
    result.cpu = seconds  # for HTTP rows: the API server process's CPU, not this client's


async def _strip(subscription: Awaitable[Callable[[], Awaitable[list[bytes]]]]) -> Callable[[], Awaitable[list[bytes]]]:
    """Watch keys -> names (the part after the namespace's prefix), as the HTTP watch reports them."""
    next_keys = await subscription
    cut = len(OTHER_KEY)

    async def next_names() -> list[bytes]:
        return [k[cut:] for k in await next_keys()]

    return next_names


def print_table(rows: list[Row], latency_rows: list[tuple[int, dict[str, list[float]]]], seconds: float,
                pinned: bool, took: float) -> None:
    print(f"\n{seconds:g} s per figure (interleaved slices), etcd {'pinned to the last CPU' if pinned else 'unpinned'}; "
          f"run took {took:.0f} s, load average now {os.getloadavg()[0]:.2f}")
    print("raw = aetcd's gRPC stubs on grpc.aio (a create is the transaction EtcdStore sends); h2 = the same requests "
          "on h2grpc; store = EtcdStore; API = ccmkit apiserver over HTTP/1.1 keep-alive")
    print("CPU us/op: this process for raw/h2/store/sqlite rows, the API server process for API rows\n")
    head = (f"{'':<16}{'conc':>5}{'raw':>9}{'h2':>9}{'store':>9}{'API':>9}{'store/raw':>10}{'API/raw':>9}"
            f"{'API/h2':>8}{'sqlite':>9}{'API sqlite':>11}{'API/sqlite':>11}   CPU us/op raw/h2/store/API | sqlite/API")
    print(f"{'ops/s':<16}" + head[16:])
    for row in rows:
        r, h2, st, api, sq, api_sq = (row.layers[k] for k in LAYERS)
        print(f"{row.what:<16}{row.concurrency:>5}{r.rate:>9,.0f}{h2.rate:>9,.0f}{st.rate:>9,.0f}{api.rate:>9,.0f}"
              f"{st.rate / r.rate:>10.0%}{api.rate / r.rate:>9.0%}{api.rate / h2.rate:>8.0%}{sq.rate:>9,.0f}"
              f"{api_sq.rate:>11,.0f}{api_sq.rate / sq.rate:>11.0%}   "
              f"{r.cpu_us:>5.0f}/{h2.cpu_us:.0f}/{st.cpu_us:.0f}/{api.cpu_us:.0f} | "
              f"{sq.cpu_us:.0f}/{api_sq.cpu_us:.0f}")
    labels = {
        "raw": "raw etcd watch (prev_kv), raw put",
        "store": "EtcdStore.watch, raw put",
        "api": "API on etcd, HTTP watch, raw put",
        "api-create": "API on etcd, HTTP watch, HTTP create",
        "sqlite": "SqliteStore.watch, store create",
        "api-sqlite": "API on sqlite, HTTP watch, HTTP create",
    }
    print(f"\n{'watch latency: write sent -> event read (ms)':<48}{'p50':>8}{'p99':>8}{'events':>8}")
    for c, samples in latency_rows:
        for key in WATCH_LAYERS:
            p50, p99 = percentiles(samples[key])
            print(f"  {'writers ' + str(c) if key == 'raw' else '':<11}{labels[key]:<35}{p50:>8.2f}{p99:>8.2f}"
                  f"{len(samples[key]):>8}")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
