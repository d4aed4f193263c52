"""API server benchmarks, run on demand: each figure beside a baseline measured in the same run, as a ratio.

The machine these run on is shared and noisy, so absolute numbers drift between runs; the ratio to a baseline
taken minutes apart on the same machine is what to compare. Servers run in their own processes (`ccmkit apiserver`,
and a bare FastAPI app served by uvicorn the same way), load comes from `wrk` (C) or from a minimal asyncio HTTP
client (rawhttp.py), and the in-process baselines use the raw SqliteStore on the same event loop type (uvloop).

  1. creates/s over HTTP (wrk, ~500 B ConfigMaps, 1/16/64 connections) vs SqliteStore.create in-process
  2. p99 create latency at an open-loop 200 creates/s vs a bare FastAPI POST and vs the raw store
  3. gets/s and list pages (1000 objects, limit=500) vs a bare FastAPI endpoint with a similar body (wrk -t2 -c32)
  4. watch delivery latency to 1/10/100 HTTP watchers vs raw Store.watch in-process
  5. `ccmkit up` ready time (spawn -> kubeconfig written and /readyz ok) vs `python -c "import uvicorn, starlette"`,
     and the peak RSS of an idle `ccmkit up`

Usage: python bench/apiserver/run.py [--quick] [--only 1,3] [--json results.json]
(about 3 minutes; --quick under a minute). Needs `wrk` on PATH (Debian package wrk) and `ccmkit` installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench import procstats  # noqa: E402

import rawhttp

from controlplane.storage.sqlite import SqliteStore

PAYLOAD = "x" * 400


def configmap_body(name: str) -> bytes:
    """What the benchmark POSTs: a ConfigMap of about 500 bytes once the server has added its metadata."""
    return (b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"' + name.encode()
            + b'"},"data":{"payload":"' + PAYLOAD.encode() + b'"}}')


# The raw store stores what the API server would: the object with its metadata, without resourceVersion.
RAW_VALUE = (b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"raw-000000-000000","namespace":"default",'
             b'"uid":"6829243b-ec7e-484b-b209-fe48e862baee","creationTimestamp":"2026-11-25T17:23:29Z"},'
             b'"data":{"payload":"' + PAYLOAD.encode() + b'"}}')


@dataclass
class Settings:
    create_secs: float
    paced_secs: float
    paced_rate: float
    wrk_secs: float
    watch_creates: int
    watch_interval: float
    startup_runs: int
    rounds: int  # throughput pairs are run this many times, alternating, and the best of each side is kept
    idle_wait: float  # seconds `ccmkit up` idles before its peak RSS is read
    startup_extras: bool  # also time the bare FastAPI server, `ccmkit apiserver`, and a start without bytecode
    concurrency: tuple[int, ...] = (1, 16, 64)
    watchers: tuple[int, ...] = (1, 10, 100)
    list_size: int = 1000
    page: int = 500


FULL = Settings(create_secs=2, paced_secs=8, paced_rate=200, wrk_secs=2, watch_creates=60, watch_interval=0.05,
                startup_runs=10, rounds=2, idle_wait=2, startup_extras=True)
QUICK = Settings(create_secs=1, paced_secs=2, paced_rate=200, wrk_secs=1, watch_creates=15, watch_interval=0.05,
                 startup_runs=3, rounds=1, idle_wait=1, startup_extras=False)


@dataclass
class Row:
    section: str
    measure: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        ratio = f"  ratio {row.ratio:.2f}" if row.ratio is not None else ""
        base = f"  | {row.baseline_name}: {fmt(row.baseline, row.unit)}" if row.baseline is not None else ""
        verdict = "" if row.met is None else ("  MET" if row.met else "  MISSED")
        log(f"  {row.measure}: {fmt(row.value, row.unit)}{base}{ratio}{verdict}")
        return row


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    return f"{value:,.0f} {unit}"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# ------------------------------------------------------------------------------------------------ processes


class ServerProcess:
    """A server in its own process; ready once its ready file names a URL whose /readyz answers ok."""

    def __init__(self, argv: list[str], ready_file: Path, log_file: Path) -> None:
        self.argv = argv
        self.ready_file = ready_file
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    async def start(self, timeout: float = 30) -> ServerProcess:
        with self.log_file.open("wb") as err:
            # Spawning returns at once; the wait for readiness below is what awaits.
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,  # noqa: ASYNC220
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            await self._wait_ready(self.proc, timeout)
        except BaseException:
            self.stop()  # never leave a server behind
            raise
        return self

    async def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {proc.returncode}: "
                                   f"{self.log_file.read_text()[-2000:]}")
            if self.ready_file.exists():
                self.url = url_from_ready_file(self.ready_file)
                try:
                    status, _ = await rawhttp.fetch(self.url, path="/readyz")
                    if status == 200:
                        return
                except OSError:
                    pass
            await asyncio.sleep(0.01)
        raise RuntimeError(f"{' '.join(self.argv)} was not ready within {timeout} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def url_from_ready_file(path: Path) -> str:
    text = path.read_text()
    match = re.search(r"server:\s*(\S+)", text)  # a kubeconfig
    return match.group(1) if match else text.strip()


def ccmkit_binary() -> str:
    """The console script installed beside this interpreter; on PATH it may sit behind a version-manager shim
    (pyenv's costs ~0.1 s a start), which would be timed as if it were ccmkit's."""
    beside = Path(sys.executable).parent / "ccmkit"
    if beside.exists():
        return str(beside)
    found = shutil.which("ccmkit")
    if found is None:
        sys.exit("ccmkit is not on PATH: pip install -e . first")
    return found


async def start_ccmkit(tmp: Path, name: str, store: str = "sqlite") -> ServerProcess:
    data_dir = tmp / name
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [ccmkit_binary(), "apiserver", "--data-dir", str(data_dir), "--port", "0", "--store", store]
    return await ServerProcess(argv, data_dir / "kubeconfig", tmp / f"{name}.log").start()


async def start_bare(tmp: Path, name: str, list_size: int = 1000, bodies: Path | None = None) -> ServerProcess:
    ready = tmp / f"{name}.url"
    argv = [sys.executable, str(HERE / "bare_server.py"), "--ready-file", str(ready), "--list-size", str(list_size)]
    if bodies is not None:
        argv += ["--bodies", str(bodies)]
    return await ServerProcess(argv, ready, tmp / f"{name}.log").start()


@dataclass
class WrkResult:
    requests: int
    seconds: float
    status_errors: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    bytes: int = 0
    server_cpu: float = 0.0  # seconds of CPU the server process used during the run

    @property
    def cpu_per_request_us(self) -> float:
        return self.server_cpu / max(self.requests, 1) * 1e6

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process so far: a figure the other load on the machine disturbs less than
    wall-clock throughput does."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, path: str, threads: int, connections: int, secs: float, script: str,
        args: list[str] | None = None, server_pid: int | None = None) -> WrkResult:
    # wrk takes whole seconds only.
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(secs))}s", "-s", str(HERE / script),
            url + path]
    if args:
        argv += ["--", *args]
    cpu_before = process_cpu(server_pid) if server_pid else 0.0
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    cpu = process_cpu(server_pid) - cpu_before if server_pid else 0.0
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")
    out = done.stdout
    match = re.search(r"^RESULT (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
    values = dict(part.split("=") for part in match.group(1).split())
    return WrkResult(int(values["requests"]), int(values["duration_us"]) / 1e6, int(values["status_errors"]),
                     int(values["socket_errors"]), int(values["p50_us"]) / 1e3, int(values["p99_us"]) / 1e3,
                     int(values.get("bytes", 0)), cpu)


def best(results: list[WrkResult]) -> WrkResult:
    """Noise on a shared machine only ever slows a run down, so the fastest of several is the closest to the truth."""
    return max(results, key=lambda r: r.rate)


def wrk_note(result: WrkResult) -> str:
    errors = []
    if result.status_errors:
        errors.append(f"{result.status_errors} non-2xx")
    if result.socket_errors:
        errors.append(f"{result.socket_errors} socket errors")
    return ", ".join(errors)


async def create_many(url: str, namespace: str, names: list[str], concurrency: int = 16) -> None:
    host, _ = rawhttp.split_url(url)
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    queue = list(reversed(names))

    async def worker() -> None:
        conn = await rawhttp.Connection.open(url)
        try:
            while queue:
                status, body = await conn.send(rawhttp.request_bytes("POST", path, host,
                                                                     configmap_body(queue.pop())))
                if status != 201:
                    raise RuntimeError(f"create answered {status}: {body[:300]!r}")
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def create_namespace(url: str, name: str) -> None:
    body = b'{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"' + name.encode() + b'"}}'
    status, answer = await rawhttp.fetch(url, "POST", "/api/v1/namespaces", body)
    if status != 201:
        raise RuntimeError(f"creating namespace {name} answered {status}: {answer[:300]!r}")


# ------------------------------------------------------------------------------------------------ 1. creates/s


async def raw_store_creates(path: Path, concurrency: int, secs: float) -> tuple[float, float]:
    """Creates/s, and CPU microseconds per create (this process: the event loop and the SQLite writer thread)."""
    store = await SqliteStore.open(path)
    count = 0
    stop_at = time.perf_counter() + secs

    async def writer(w: int) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop_at:
            await store.create(f"/registry/configmaps/default/raw-{w:06d}-{i:06d}", RAW_VALUE)
            i += 1
            count += 1

    began, cpu = time.perf_counter(), process_cpu(os.getpid())
    try:
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        return count / (time.perf_counter() - began), (process_cpu(os.getpid()) - cpu) / max(count, 1) * 1e6
    finally:
        await store.close()


async def bench_creates(s: Settings, tmp: Path, results: Results) -> None:
    log("1. create throughput (wrk POST ~500 B ConfigMaps) vs SqliteStore.create in-process")
    bare = await start_bare(tmp, "bare-create")
    collection = "/api/v1/namespaces/default/configmaps"
    try:
        for c in s.concurrency:
            server = await start_ccmkit(tmp, f"create-{c}")
            raws, ours, theirs = [], [], []
            try:
                for r in range(s.rounds):
                    raws.append(await raw_store_creates(tmp / f"raw-create-{c}-{r}.db", c, s.create_secs))
                    ours.append(wrk(server.url, "", 1, c, s.create_secs, "create.lua", [f"c{c}r{r}", collection],
                                    server.pid))
                    theirs.append(wrk(bare.url, "", 1, c, s.create_secs, "create.lua", [f"c{c}r{r}", collection],
                                      bare.pid))
            finally:
                server.stop()
            (raw, raw_cpu), http, floor = max(raws), best(ours), best(theirs)
            ratio = http.rate / raw
            results.add(Row("1", f"creates/s, {c} conn (p50 {http.p50_ms:.1f} ms, p99 {http.p99_ms:.1f} ms; "
                                 f"CPU {http.cpu_per_request_us:.0f} vs raw {raw_cpu:.0f} us/create)",
                            http.rate, "/s", raw, f"raw SqliteStore.create x{c}", ">= 0.50 x raw", ratio >= 0.5,
                            wrk_note(http)))
            results.add(Row("1", f"  same, vs bare FastAPI POST, no store ({floor.cpu_per_request_us:.0f} us CPU "
                                 "per request)", http.rate, "/s", floor.rate, "bare FastAPI POST", note=wrk_note(floor)))
    finally:
        bare.stop()


# ------------------------------------------------------------------------------------------------ 2. paced latency


async def paced(send: Callable[[int], Awaitable[bool]], rate: float, secs: float) -> tuple[list[float], int]:
    """Open loop: request i is due at t0 + i/rate whatever happened to the ones before; its latency counts from
    when it was due, so a server that stalls is charged for the queue it caused (no coordinated omission)."""
    count = int(rate * secs)
    latencies: list[float] = []
    failures = 0

    async def one(i: int, due: float) -> None:
        nonlocal failures
        ok = await send(i)
        latencies.append(time.perf_counter() - due)
        failures += not ok

    tasks = []
    t0 = time.perf_counter() + 0.02
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return latencies, failures


def http_creator(pool: rawhttp.Pool, prefix: str) -> Callable[[int], Awaitable[bool]]:
    host, _ = rawhttp.split_url(pool.url)
    path = "/api/v1/namespaces/default/configmaps"

    async def send(i: int) -> bool:
        status, _ = await pool.send(rawhttp.request_bytes("POST", path, host, configmap_body(f"{prefix}-{i:06d}")))
        return status == 201

    return send


async def bench_paced(s: Settings, tmp: Path, results: Results) -> None:
    log(f"2. create latency at an open-loop {s.paced_rate:.0f} creates/s, {s.paced_secs:.0f} s each, in 1 s blocks "
        "alternating ccmkit, bare FastAPI and the raw store")
    server = await start_ccmkit(tmp, "paced")
    bare = await start_bare(tmp, "bare-paced")
    store = await SqliteStore.open(tmp / "raw-paced.db")
    pools = {"ccmkit": rawhttp.Pool(server.url), "bare": rawhttp.Pool(bare.url)}
    try:
        senders: dict[str, Callable[[int], Awaitable[bool]]] = {}
        for name, pool in pools.items():
            await pool.prewarm(8)
            await paced(http_creator(pool, "warm"), s.paced_rate, 0.25)
            senders[name] = http_creator(pool, "paced")

        async def raw_send(i: int) -> bool:
            await store.create(f"/registry/configmaps/default/paced-{i:06d}", RAW_VALUE)
            return True

        senders["raw"] = raw_send
        # Alternating short blocks spread the machine's other load evenly over the three, so a stall caused by
        # someone else's test lands on each about equally often.
        figures: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in senders}
        per_block = int(s.paced_rate)
        for block in range(max(1, round(s.paced_secs))):
            for name, send in senders.items():
                async def numbered(i: int, send: Callable[[int], Awaitable[bool]] = send,
                                   block: int = block) -> bool:
                    return await send(block * per_block + i)

                latencies, failures = await paced(numbered, s.paced_rate, 1.0)
                figures[name] = (figures[name][0] + latencies, figures[name][1] + failures)
    finally:
        for pool in pools.values():
            pool.close()
        await store.close()
        server.stop()
        bare.stop()
    ms = {name: [v * 1e3 for v in lat] for name, (lat, _) in figures.items()}
    note = f"{figures['ccmkit'][1]} failed" if figures["ccmkit"][1] else ""
    p99 = percentile(ms["ccmkit"], 99)
    results.add(Row("2", f"p99 create latency at {s.paced_rate:.0f}/s open loop (n={len(ms['ccmkit'])})", p99, "ms",
                    percentile(ms["bare"], 99), "bare FastAPI POST p99", "< 50 ms", p99 < 50, note))
    results.add(Row("2", "  p50 create latency", percentile(ms["ccmkit"], 50), "ms", percentile(ms["bare"], 50),
                    "bare FastAPI POST p50"))
    results.add(Row("2", "  max create latency", max(ms["ccmkit"]), "ms", max(ms["bare"]), "bare FastAPI POST max"))
    results.add(Row("2", "  p99 vs the raw store paced the same way", p99, "ms", percentile(ms["raw"], 99),
                    "raw SqliteStore p99"))


# ------------------------------------------------------------------------------------------------ 3. reads


async def bench_reads(s: Settings, tmp: Path, results: Results) -> None:
    log(f"3. reads with wrk -t2 -c32 -d{s.wrk_secs:.0f}s vs a bare FastAPI endpoint with a similar body")
    server = await start_ccmkit(tmp, "reads")
    bare: ServerProcess | None = None
    try:
        await create_many(server.url, "default", ["x"], 1)
        await create_namespace(server.url, "bench-list")
        await create_many(server.url, "bench-list", [f"cm-{i:05d}" for i in range(s.list_size)])
        list_path = "/api/v1/namespaces/bench-list/configmaps"
        # The baseline answers with exactly what ccmkit answers, so both serialise and send the same objects.
        bodies = tmp / "bodies"
        bodies.mkdir(exist_ok=True)
        for file, path in (("get.json", "/api/v1/namespaces/default/configmaps/x"),
                           ("page.json", f"{list_path}?limit={s.page}"), ("all.json", list_path)):
            status, body = await rawhttp.fetch(server.url, path=path)
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            (bodies / file).write_bytes(body)
        token = json.loads((bodies / "page.json").read_bytes())["metadata"]["continue"]
        bare = await start_bare(tmp, "bare-reads", s.list_size, bodies)
        cases = [
            ("GET one ConfigMap", "/api/v1/namespaces/default/configmaps/x", None),
            (f"LIST first page, limit={s.page} of {s.list_size}", f"{list_path}?limit={s.page}", None),
            (f"LIST next page (continue), limit={s.page}", f"{list_path}?limit={s.page}&continue={token}",
             f"{list_path}?limit={s.page}"),
            (f"LIST all {s.list_size}, no limit", list_path, None),
        ]
        for label, path, bare_path in cases:
            runs: tuple[list[WrkResult], list[WrkResult]] = ([], [])
            for _ in range(s.rounds):
                runs[0].append(wrk(server.url, path, 2, 32, s.wrk_secs, "stats.lua", server_pid=server.pid))
                runs[1].append(wrk(bare.url, bare_path or path, 2, 32, s.wrk_secs, "stats.lua", server_pid=bare.pid))
            ours, theirs = best(runs[0]), best(runs[1])
            size = ours.bytes / max(ours.requests, 1) / 1024
            results.add(Row("3", f"{label} (~{size:.0f} KiB; server CPU {ours.cpu_per_request_us:,.0f} vs "
                                 f"{theirs.cpu_per_request_us:,.0f} us/req)",
                            ours.rate, "/s", theirs.rate, "bare FastAPI", note=wrk_note(ours) or wrk_note(theirs)))
    finally:
        server.stop()
        if bare is not None:
            bare.stop()


# ------------------------------------------------------------------------------------------------ 4. watch latency


NAME_PATTERN = re.compile(rb'"name":"(w-\d+)"')


async def http_watch_latency(url: str, watchers: int, s: Settings,
                             namespace: str = "") -> tuple[list[float], list[float], int]:
    """Latencies (from the create returning, and from it being sent) of every (create, watcher) delivery."""
    namespace = namespace or f"wbench-{watchers}"
    await create_namespace(url, namespace)
    arrivals: dict[bytes, list[float]] = {}

    def on_name(name: bytes, at: float) -> None:
        arrivals.setdefault(name, []).append(at)

    streams = [await rawhttp.WatchStream.open(url, f"/api/v1/namespaces/{namespace}/configmaps?watch=true",
                                              NAME_PATTERN, on_name) for _ in range(watchers)]
    host, _ = rawhttp.split_url(url)
    conn = await rawhttp.Connection.open(url)
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    try:
        async def create(name: str) -> tuple[float, float]:
            sent = time.perf_counter()
            status, body = await conn.send(rawhttp.request_bytes("POST", path, host, configmap_body(name)))
            if status != 201:
                raise RuntimeError(f"create answered {status}: {body[:300]!r}")
            return sent, time.perf_counter()

        return await _watch_rounds(create, arrivals, watchers, s)
    finally:
        conn.close()
        for stream in streams:
            stream.close()


async def raw_watch_latency(path: Path, watchers: int, s: Settings) -> tuple[list[float], list[float], int]:
    store = await SqliteStore.open(path)
    arrivals: dict[bytes, list[float]] = {}
    prefix = "/registry/configmaps/wbench/"

    async def consume(ready: asyncio.Event) -> None:
        events = store.watch(prefix)
        ready.set()
        async for ev in events:
            at = time.perf_counter()
            arrivals.setdefault(ev.key[len(prefix):].encode(), []).append(at)

    readies = [asyncio.Event() for _ in range(watchers)]
    tasks = [asyncio.create_task(consume(r)) for r in readies]
    for r in readies:
        await r.wait()
    await asyncio.sleep(0.01)

    async def create(name: str) -> tuple[float, float]:
        sent = time.perf_counter()
        await store.create(prefix + name, RAW_VALUE)
        return sent, time.perf_counter()

    try:
        return await _watch_rounds(create, arrivals, watchers, s)
    finally:
        await store.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _watch_rounds(create: Callable[[str], Awaitable[tuple[float, float]]], arrivals: dict[bytes, list[float]],
                        watchers: int, s: Settings) -> tuple[list[float], list[float], int]:
    async def all_seen(names: list[bytes], timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(len(arrivals.get(n, ())) >= watchers for n in names):
                return
            await asyncio.sleep(0.005)

    warm = [f"w-{900000 + i}" for i in range(3)]
    for name in warm:
        await create(name)
    await all_seen([n.encode() for n in warm], 10)
    times: dict[bytes, tuple[float, float]] = {}
    for i in range(s.watch_creates):
        due = time.perf_counter() + s.watch_interval
        name = f"w-{i:06d}"
        times[name.encode()] = await create(name)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
    await all_seen(list(times), 10)
    from_return: list[float] = []
    from_send: list[float] = []
    missing = 0
    for key, (sent, returned) in times.items():
        got = arrivals.get(key, [])
        missing += watchers - len(got)
        from_return += [max(0.0, at - returned) * 1e3 for at in got]
        from_send += [(at - sent) * 1e3 for at in got]
    return from_return, from_send, missing


async def bench_watch(s: Settings, tmp: Path, results: Results) -> None:
    log(f"4. watch delivery: {s.watch_creates} creates {s.watch_interval * 1e3:.0f} ms apart, "
        "latency from the create returning to the ADDED event at each watcher")
    server = await start_ccmkit(tmp, "watch")
    try:
        for n in s.watchers:
            ours, ours_sent, missing = await http_watch_latency(server.url, n, s)
            raw, raw_sent, _ = await raw_watch_latency(tmp / f"raw-watch-{n}.db", n, s)
            p99 = percentile(ours, 99)
            note = f"{missing} deliveries missing" if missing else ""
            results.add(Row("4", f"watch p99 after the create returned, {n} HTTP watcher(s) "
                                 f"(p50 {percentile(ours, 50):.2f} ms)",
                            p99, "ms", percentile(raw, 99), "raw Store.watch, same", "< 20 ms", p99 < 20, note))
            results.add(Row("4", f"  p99 from the create being sent (p50 {percentile(ours_sent, 50):.2f} ms vs "
                                 f"{percentile(raw_sent, 50):.2f} ms)", percentile(ours_sent, 99), "ms",
                            percentile(raw_sent, 99), f"raw Store.watch x{n}, same"))
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------------ 5. startup


def http_get_blocking(url: str, path: str) -> tuple[int, bytes]:
    host, port = rawhttp.split_url(url)
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head[9:12]), body


@dataclass
class Started:
    ready: float  # seconds from spawn to ready
    cpu: float  # CPU seconds the process had used by then
    kubeconfig: float = 0.0  # seconds from spawn to the kubeconfig appearing
    peak_rss_kib: int = 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], began: float, ready_file: Path) -> tuple[float, float]:
    """Poll (every ms) for the ready file, then for /readyz answering ok; (ready file seen, ready) in seconds."""
    file_at = 0.0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if not file_at and ready_file.exists():
            file_at = time.perf_counter() - began
        if file_at:
            try:
                status, body = http_get_blocking(url_from_ready_file(ready_file), "/readyz")
                if status == 200 and body.strip() == b"ok":
                    return file_at, time.perf_counter() - began
            except OSError:
                pass
        time.sleep(0.001)


def time_up(tmp: Path, name: str, env: dict[str, str], idle_wait: float = 0.0, command: str = "up") -> Started:
    """`ccmkit up` (or another subcommand that writes a kubeconfig) from spawn to kubeconfig written and /readyz ok;
    its VmHWM after ``idle_wait`` more seconds."""
    data_dir = tmp / name
    argv = [ccmkit_binary(), command, "--data-dir", str(data_dir), "--port", "0", "--store", "sqlite"]
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        kube_at, ready = _wait_ready(proc, began, data_dir / "kubeconfig")
        cpu = process_cpu(proc.pid)
        if idle_wait:
            time.sleep(idle_wait)
        hwm = 0
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
        return Started(ready, cpu, kube_at, hwm)
    finally:
        _stop(proc)


def time_bare_ready(tmp: Path, name: str, env: dict[str, str]) -> Started:
    """The bare FastAPI app on uvicorn, from spawn to /readyz answering."""
    ready_file = tmp / f"{name}.url"
    argv = [sys.executable, str(HERE / "bare_server.py"), "--ready-file", str(ready_file), "--list-size", "0"]
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        _, ready = _wait_ready(proc, began, ready_file)
        return Started(ready, process_cpu(proc.pid))
    finally:
        _stop(proc)


def time_process(argv: list[str], env: dict[str, str]) -> Started:
    """Wall time, CPU time and peak RSS of a short process."""
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{argv} exited with {proc.returncode}")
    return Started(elapsed, usage.ru_utime + usage.ru_stime, peak_rss_kib=usage.ru_maxrss)


def bytecode_env(tmp: Path) -> dict[str, str]:
    """An environment whose interpreters keep compiled bytecode (in a private cache under ``tmp``), as any installed
    package has. This sandbox sets PYTHONDONTWRITEBYTECODE=1, so without this every start would also compile all
    of ccmkit's sources, which no installed ccmkit does."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "controlplane")], env=env,
                   stdout=subprocess.DEVNULL, check=False)
    return env


async def bench_startup(s: Settings, tmp: Path, results: Results) -> None:
    log(f"5. `ccmkit up` ready time over {s.startup_runs} runs, interleaved with the baselines")
    cached = bytecode_env(tmp)
    as_is = dict(os.environ)
    imports = [sys.executable, "-c", "import uvicorn, starlette"]
    nothing = [sys.executable, "-c", "pass"]
    # One untimed start of each server, so the bytecode cache holds every module the timed runs import.
    time_up(tmp, "up-warm", cached)
    if s.startup_extras:
        time_bare_ready(tmp, "bare-warm", cached)
    runs: dict[str, list[Started]] = {"imports": [], "pass": [], "up": [], "bare": [], "up-as-is": [],
                                      "apiserver": []}
    for i in range(s.startup_runs):
        runs["imports"].append(time_process(imports, cached))
        runs["pass"].append(time_process(nothing, cached))
        last = i == s.startup_runs - 1
        # The last run also stays up, idle, for its peak RSS (read after the ready time was taken).
        runs["up"].append(time_up(tmp, f"up-{i}", cached, idle_wait=s.idle_wait if last else 0.0))
        if not s.startup_extras:
            continue
        runs["bare"].append(time_bare_ready(tmp, f"bare-{i}", cached))
        if i % 2 == 0:  # the side figures need fewer runs
            runs["up-as-is"].append(time_up(tmp, f"up-as-is-{i}", as_is))
            runs["apiserver"].append(time_up(tmp, f"apiserver-{i}", cached, command="apiserver"))
    idle = runs["up"][-1]

    def med(key: str, attr: str = "ready") -> float:
        return statistics.median(getattr(r, attr) for r in runs[key])

    def p90(key: str) -> float:
        return percentile([r.ready for r in runs[key]], 90)

    median = med("up")
    results.add(Row("5", "`ccmkit up` ready, median (spawn -> kubeconfig + /readyz ok)", median, "s",
                    med("imports"), 'python -c "import uvicorn, starlette"', "< 0.5 s", median < 0.5))
    results.add(Row("5", "  `ccmkit up` ready, p90", p90("up"), "s", p90("imports"), "same baseline, p90"))
    results.add(Row("5", "  CPU used by then (user + sys), median", med("up", "cpu"), "s", med("imports", "cpu"),
                    "same baseline, CPU"))
    results.add(Row("5", "  kubeconfig written, median", med("up", "kubeconfig"), "s", med("pass"),
                    'python -c "pass"'))
    if s.startup_extras:
        results.add(Row("5", "  `ccmkit up` ready, median", median, "s", med("bare"),
                        "bare FastAPI app on uvicorn, spawn -> /readyz"))
        results.add(Row("5", f"  `ccmkit apiserver` (the API server alone) ready, median (CPU "
                             f"{med('apiserver', 'cpu'):.3f} s vs {med('bare', 'cpu'):.3f} s)", med("apiserver"),
                        "s", med("bare"), "bare FastAPI app on uvicorn, spawn -> /readyz"))
        results.add(Row("5", "  `ccmkit up` ready here without a bytecode cache (PYTHONDONTWRITEBYTECODE=1)",
                        med("up-as-is"), "s", med("up"), "with a bytecode cache"))
    results.add(Row("5", f"peak RSS of an idle `ccmkit up` (VmHWM after {s.idle_wait:.0f} s idle)",
                    idle.peak_rss_kib / 1024, "MiB",
                    statistics.median(r.peak_rss_kib for r in runs["imports"]) / 1024,
                    'python -c "import uvicorn, starlette"'))


# ------------------------------------------------------------------------------------------------ main


def machine() -> dict[str, str]:
    # wrk -v prints its version and exits 1.
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    return {**procstats.machine(), "wrk": wrk_version.strip()}


def print_table(results: Results, info: dict[str, str], seconds: float) -> None:
    print(f"\nccmkit API server benchmarks, {info['date']}: {info['nproc']} x {info['cpu']}, {info['ram']} RAM, "
          f"Python {info['python']}, load average {info['loadavg']} at start, "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])} at end ({seconds:.0f} s)")
    header = ("#", "measurement", "ccmkit", "baseline", "baseline value", "ratio", "target", "met")
    table = [header]
    for r in results.rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        met = "" if r.met is None else ("yes" if r.met else "NO")
        measure = r.measure + (f" [{r.note}]" if r.note else "")
        table.append((r.section, measure, fmt(r.value, r.unit), r.baseline_name, fmt(r.baseline, r.unit)
                      if r.baseline is not None else "", ratio, r.target, met))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for n, row in enumerate(table):
        print(" | ".join(cell.ljust(w) if i in (1, 3, 6) else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("-+-".join("-" * w for w in widths))


SECTIONS: dict[str, Callable[[Settings, Path, Results], Awaitable[None]]] = {
    "1": bench_creates,
    "2": bench_paced,
    "3": bench_reads,
    "4": bench_watch,
    "5": bench_startup,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs (under a minute)")
    parser.add_argument("--only", default="1,2,3,4,5", help="comma-separated sections to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not on PATH: apt-get install wrk")
    settings = QUICK if args.quick else FULL
    info = machine()
    results = Results()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="apiserver-bench-") as tmp_dir:
        for key in args.only.split(","):
            section_began = time.perf_counter()
            await SECTIONS[key.strip()](settings, Path(tmp_dir), results)
            log(f"  (section {key.strip()}: {time.perf_counter() - section_began:.0f} s)")
    elapsed = time.perf_counter() - began
    print_table(results, info, elapsed)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "seconds": round(elapsed, 1),
                                         "rows": [asdict(r) | {"ratio": r.ratio} for r in results.rows]}, indent=1))


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
