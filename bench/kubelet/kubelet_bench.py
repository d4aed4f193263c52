"""Benchmark: many simulated kubelets in one process (a KubeletPool) against a real API server.

Four processes, as a cluster would run them: the API server (``ccmkit apiserver --store memory``), the scheduler
(``ccmkit scheduler``), the kubelet pool of N simulated nodes, and this load generator, which creates the pods
through the API server and watches them until every one is Ready. ``--no-scheduler`` binds the pods round-robin at
create (spec.nodeName) instead, to see the kubelets' share alone. Reported: node registration time, pods/s reaching Ready, p50/p99 pod startup latency (create request
sent -> Ready seen on a watch), CPU per pod in each process (independent of other load on the machine), and peak
RSS of each process.

    python bench/kubelet/kubelet_bench.py            # 1000 nodes, 30,000 pods
    python bench/kubelet/kubelet_bench.py --quick    # 100 nodes, 3,000 pods
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.procstats import cpu_seconds, peak_rss_mb, stop
from bench.simulated_pool import add_pool_arguments, run_pool
from controlplane.client import PODS, ApiClient
from controlplane.client.watch import watch


def start_apiserver(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    kubeconfig = data_dir / "kubeconfig"
    proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "apiserver", "--store", "memory", "--port", "0",
                             "--data-dir", str(data_dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not kubeconfig.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the API server did not start")
        time.sleep(0.05)  # polling for a file another process writes
    url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    return proc, url


def start_scheduler(url: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """The scheduler in its own process, returned once it has synced its informers and schedules (its log says
    so): pods created before that would wait for its start, which is not what this benchmark measures."""
    log_path = data_dir / "scheduler.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "scheduler", "--server", url,
                                 "--log-level", "info"], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 60
    while b"scheduler started" not in log_path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the scheduler did not start; see {log_path}")
        time.sleep(0.05)  # polling a file another process writes
    return proc


def pod(name: str, node: str | None) -> dict:
    spec: dict = {"nodeName": node} if node else {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default",
                                                             "labels": {"app": "bench"}},
            "spec": {**spec, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "app", "image": "registry.local/app:1",
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


def start_pool(url: str, nodes: int, workers: int, data_dir: Path) -> tuple[subprocess.Popen[str], float]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve-pool", url, "--nodes", str(nodes), "--workers",
                             str(workers), "--data-dir", str(data_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the pool has registered every node
    if not line.startswith("ready "):
        raise SystemExit(f"the kubelet pool did not start: {line!r}")
    return proc, float(line.split()[1])


async def run(nodes: int, pods: int, concurrency: int, workers: int, rate: float = 0.0,
              use_scheduler: bool = True) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="kubelet-bench-"))
    apiserver, url = start_apiserver(data_dir)
    result: dict = {"nodes": nodes, "pods": pods,
                    "binding": "the scheduler (own process)" if use_scheduler
                    else "round-robin spec.nodeName at create (no scheduler)",
                    "create_rate": rate or "as fast as the API server takes them"}
    pool: subprocess.Popen[str] | None = None
    scheduler: subprocess.Popen[bytes] | None = None
    try:
        pool, result["register_s"] = await asyncio.to_thread(start_pool, url, nodes, workers, data_dir)
        print(f"{nodes} nodes registered (Node + status + Lease each) in {result['register_s']} s", flush=True)
        if use_scheduler:
            scheduler = await asyncio.to_thread(start_scheduler, url, data_dir)

        limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
        async with ApiClient(url, limits=limits) as client:
            sent: dict[str, float] = {}
            bound: dict[str, float] = {}  # spec.nodeName first seen on the watch
            ready: dict[str, float] = {}
            all_ready = asyncio.Event()
            listing = await client.list(PODS, "default", limit=1)
            rv = listing["metadata"]["resourceVersion"]

            async def watcher() -> None:
                nonlocal rv
                while not all_ready.is_set():
                    async with watch(client, PODS, "default", resource_version=rv, timeout_seconds=600) as events:
                        async for ev in events:
                            if ev.type == "BOOKMARK":
                                rv = ev.object["metadata"]["resourceVersion"]
                                continue
                            obj = ev.object
                            rv = obj["metadata"]["resourceVersion"]
                            name = obj["metadata"]["name"]
                            if name in ready:
                                continue
                            if name not in bound and (obj.get("spec") or {}).get("nodeName"):
                                bound[name] = time.perf_counter()
                            if any(c.get("type") == "Ready" and c.get("status") == "True"
                                   for c in (obj.get("status") or {}).get("conditions") or []):
                                ready[name] = time.perf_counter()
                                if len(ready) == pods:
                                    all_ready.set()
                                    return

            watch_task = asyncio.create_task(watcher())
            semaphore = asyncio.Semaphore(concurrency)

            async def create(i: int) -> None:
                name = f"bench-{i}"
                if rate:
                    # Open loop at a fixed rate: startup latency without a backlog of pods waiting to be synced.
                    await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                async with semaphore:
                    sent[name] = time.perf_counter()
                    await client.create(PODS, pod(name, None if use_scheduler else f"node-{i % nodes}"))

            start = time.perf_counter()
            cpu_pool, cpu_api, cpu_load = cpu_seconds(pool.pid), cpu_seconds(apiserver.pid), cpu_seconds()
            cpu_sched = cpu_seconds(scheduler.pid) if scheduler else 0.0
            progress = asyncio.create_task(report(ready, pods, start))
            await asyncio.gather(*(create(i) for i in range(pods)))
            created_s = time.perf_counter() - start
            await asyncio.wait_for(all_ready.wait(), 1800)
            total_s = time.perf_counter() - start
            cpu_pool = cpu_seconds(pool.pid) - cpu_pool
            cpu_api = cpu_seconds(apiserver.pid) - cpu_api
            cpu_load = cpu_seconds() - cpu_load
            cpu_sched = cpu_seconds(scheduler.pid) - cpu_sched if scheduler else 0.0
            progress.cancel()
            watch_task.cancel()
            latencies = sorted(ready[n] - sent[n] for n in sent)
            with open(data_dir / "timings.json", "w") as f:  # per pod, seconds from the start: for plots
                json.dump({n: [sent[n] - start, bound.get(n, ready[n]) - start, ready[n] - start] for n in sent}, f)
            to_bind = sorted(bound.get(n, ready[n]) - sent[n] for n in sent)
            bind_to_ready = sorted(ready[n] - bound.get(n, ready[n]) for n in sent)

            def pct(values: list[float], q: float) -> int:
                return round(values[max(0, int(len(values) * q) - 1)] * 1000)

            result.update({
                "create_s": round(created_s, 2),
                "creates_per_s": round(pods / created_s),
                "all_ready_s": round(total_s, 2),
                "ready_pods_per_s": round(pods / total_s),
                "startup_p50_ms": round(statistics.median(latencies) * 1000),
                "startup_p90_ms": pct(latencies, 0.90),
                "startup_p99_ms": pct(latencies, 0.99),
                "create_to_bound_p50_p99_ms": [pct(to_bind, 0.5), pct(to_bind, 0.99)],
                "bound_to_ready_p50_p99_ms": [pct(bind_to_ready, 0.5), pct(bind_to_ready, 0.99)],
                "startup_max_ms": round(latencies[-1] * 1000),
                # CPU per pod, from create to Ready: what bounds throughput on dedicated cores, whatever the load.
                "kubelet_pool_cpu_ms_per_pod": round(cpu_pool * 1000 / pods, 2),
                "apiserver_cpu_ms_per_pod": round(cpu_api * 1000 / pods, 2),
                "load_generator_cpu_ms_per_pod": round(cpu_load * 1000 / pods, 2),
                "scheduler_cpu_ms_per_pod": round(cpu_sched * 1000 / pods, 2),
                "load_average_1m": round(os.getloadavg()[0], 1),
            })
        result["kubelet_pool_peak_rss_mb"] = round(peak_rss_mb(pool.pid))
        result["apiserver_peak_rss_mb"] = round(peak_rss_mb(apiserver.pid))
        result["load_generator_peak_rss_mb"] = round(peak_rss_mb())
        if scheduler is not None:
            result["scheduler_peak_rss_mb"] = round(peak_rss_mb(scheduler.pid))
        result["peak_rss_total_mb"] = sum(v for k, v in result.items() if k.endswith("_peak_rss_mb"))
    finally:
        if scheduler is not None:
            stop(scheduler)
        if pool is not None:
            stop(pool, 60)
        stop(apiserver)
    return result


async def report(ready: dict[str, float], total: int, start: float) -> None:
    while True:
        await asyncio.sleep(5)
        print(f"  {time.perf_counter() - start:6.1f} s: {len(ready)}/{total} Ready", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 nodes / 3000 pods")
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--pods", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent pod creates")
    parser.add_argument("--workers", type=int, default=32, help="pod sync workers of the pool")
    parser.add_argument("--rate", type=float, default=0.0, help="pods created per second (0: as fast as possible)")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="bind pods round-robin at create instead of running the scheduler")
    add_pool_arguments(parser)
    args = parser.parse_args()
    if args.serve_pool:
        run_pool(args.serve_pool, args.nodes, args.workers, args.data_dir)
        return
    nodes = args.nodes or (100 if args.quick else 1000)
    pods = args.pods or (3000 if args.quick else 30000)
    logging.basicConfig(level=logging.WARNING)
    try:
        import uvloop

        result = uvloop.run(run(nodes, pods, args.concurrency, args.workers, args.rate, not args.no_scheduler))
    except ImportError:
        result = asyncio.run(run(nodes, pods, args.concurrency, args.workers, args.rate, not args.no_scheduler))
    print(json.dumps(result, indent=2))
    os._exit(0)


if __name__ == "__main__":
    main()
