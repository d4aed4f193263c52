"""Benchmark: Deployments rolled out end to end by the controller manager on simulated nodes, beside KWOK's pace.

KWOK (kubernetes-sigs/kwok) reports that a real control plane with fake nodes brought 600 Deployments up in about
two minutes; the target here is ten times that pace: 1000 Deployments of 10 replicas Available within 20 s on 500
simulated nodes. Five processes, as a cluster runs them: the API server (``ccmkit apiserver --store memory``), the
controller manager (``ccmkit controller-manager``, every controller), the scheduler (``ccmkit scheduler``), a
KubeletPool of simulated nodes (this script with ``--serve-pool``), and this load generator, which creates the
Deployments and watches them (one watch on Deployments, no polling) until each reports Available=True with every
replica available.

Two phases:
  rollout   first Deployment create sent -> every Deployment Available with availableReplicas == replicas;
  churn     a rolling update of every Deployment (new image and pod-template label): first patch sent -> every
            Deployment complete again (observedGeneration current, all replicas updated and available), and then
            every pod of the old template gone (the kubelets finish their graceful deletion). Objects processed =
            Deployments updated + ReplicaSets created + pods created + pods deleted.
For each phase: wall time, rates, and CPU seconds of each process (from /proc, which other load on the machine
disturbs much less than wall time); at the end, peak RSS (VmHWM) of each process.

    python bench/controllers/controllers_bench.py            # 1000 Deployments x 10 replicas, 500 nodes
    python bench/controllers/controllers_bench.py --quick    # 100 Deployments x 10 replicas, 50 nodes
    python bench/controllers/controllers_bench.py --deployments 300 --replicas 5 --nodes 100 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.procstats import cpu_seconds, loadavg, machine, peak_rss_mb  # noqa: E402
from bench.simulated_pool import add_pool_arguments, run_pool  # noqa: E402

from controlplane.client import DEPLOYMENTS, PODS, ApiClient  # noqa: E402
from controlplane.client.watch import ResumableWatcher  # noqa: E402

NAMESPACE = "default"
IMAGE = "registry.local/app:{}"

# KWOK's published figure: 600 Deployments Available in about 2 minutes on fake nodes.
KWOK_DEPLOYMENTS = 600
KWOK_SECONDS = 120.0
KWOK_RATE = KWOK_DEPLOYMENTS / KWOK_SECONDS  # 5 Deployments/s
TARGET_FACTOR = 10.0  # the target: 50 Deployments/s, i.e. 1000 Deployments in 20 s


# ---------------------------------------------------------------------------------------------------------------
# measuring processes
# ---------------------------------------------------------------------------------------------------------------

class Component:
    """One process of the cluster, its output in a log file under the run's directory."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT, cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                                          "PYTHONUNBUFFERED": "1"},
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, marker: str, timeout: float) -> str:
        """The first log line containing ``marker`` (a component says it is ready by printing it)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log.read_text().splitlines():
                if marker in line:
                    return line
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text().splitlines()[-20:])
                raise SystemExit(f"{self.name} did not start (no {marker!r} in its output):\n{tail}")
            time.sleep(0.05)  # polling for a line another process writes

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "controlplane.cli", *args]


# ---------------------------------------------------------------------------------------------------------------
# the load generator
# ---------------------------------------------------------------------------------------------------------------

def deployment(name: str, replicas: int, version: int) -> dict[str, Any]:
    labels = {"app": name, "version": f"v{version}"}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": "app", "image": IMAGE.format(version),
                                                           "resources": {"requests": {"cpu": "10m",
                                                                                      "memory": "16Mi"}}}]}}}}


def rollout_done(d: dict[str, Any], replicas: int, generation: int) -> bool:
    """What `kubectl rollout status` waits for, and Available=True with every replica available."""
    meta, status = d["metadata"], d.get("status") or {}
    if int(meta.get("generation") or 0) < generation:
        return False
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False
    if (status.get("updatedReplicas"), status.get("replicas"), status.get("availableReplicas")) != (
            replicas, replicas, replicas):
        return False
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in status.get("conditions") or [])


@dataclass
class Tracker:
    """Which Deployments have finished the current phase, fed by one watch on Deployments."""

    expected: int
    replicas: int
    generation: int = 1
    done: dict[str, float] = field(default_factory=dict)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    events: int = 0

    def phase(self, generation: int) -> None:
        self.generation = generation
        self.done = {}
        self.all_done = asyncio.Event()

    def observe(self, obj: dict[str, Any]) -> None:
        self.events += 1
        name = obj["metadata"]["name"]
        if name not in self.done and rollout_done(obj, self.replicas, self.generation):
            self.done[name] = time.perf_counter()
            if len(self.done) >= self.expected:
                self.all_done.set()


async def watch_deployments(client: ApiClient, rv: str, tracker: Tracker) -> None:
    async for event in ResumableWatcher(client, DEPLOYMENTS, NAMESPACE, resource_version=rv):
        if event.type in ("ADDED", "MODIFIED"):
            tracker.observe(event.object)


async def progress(what: str, count: Callable[[], int], total: int, start: float) -> None:
    while True:
        await asyncio.sleep(5)  # a progress line every 5 s, not a synchronisation point
        print(f"  {time.perf_counter() - start:6.1f} s: {count()}/{total} {what}", flush=True)


async def old_pods_gone(client: ApiClient, version: int, timeout: float) -> int:
    """Wait until no pod of template ``version`` is left; return how many there were when we started looking."""
    selector = f"version=v{version}"
    listing = await client.list(PODS, NAMESPACE, label_selector=selector)
    left = {p["metadata"]["name"] for p in listing["items"]}
    initial = len(left)
    if not left:
        return 0
    watcher = ResumableWatcher(client, PODS, NAMESPACE, resource_version=listing["metadata"]["resourceVersion"],
                               label_selector=selector)

    async def drain() -> None:
        async for event in watcher:
            if event.type == "DELETED":
                left.discard(event.object["metadata"]["name"])
                if not left:
                    return

    try:
        await asyncio.wait_for(drain(), timeout)
    finally:
        await watcher.aclose()
    return initial


class Cpu:
    """CPU seconds of each process between two marks."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = pids
        self.start = {k: cpu_seconds(p) for k, p in pids.items()}

    def since(self) -> dict[str, float]:
        return {k: round(cpu_seconds(p) - self.start[k], 2) for k, p in self.pids.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n, replicas, nodes = args.deployments, args.replicas, args.nodes
    data_dir = Path(tempfile.mkdtemp(prefix="controllers-bench-"))
    result: dict[str, Any] = {"deployments": n, "replicas": replicas, "nodes": nodes, "pods": n * replicas,
                              "controllers": args.controllers, "create_concurrency": args.concurrency,
                              "data_dir": str(data_dir)}
    components: list[Component] = []
    try:
        apiserver = Component("apiserver", _cli("apiserver", "--store", "memory", "--port", "0", "--data-dir",
                                                str(data_dir / "apiserver")), data_dir / "apiserver.log")
        components.append(apiserver)
        kubeconfig = data_dir / "apiserver" / "kubeconfig"
        deadline = time.monotonic() + 60
        while not kubeconfig.exists():
            if apiserver.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the API server did not start: see " + str(apiserver.log))
            time.sleep(0.05)  # polling for the file the server writes once it answers
        url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]

        pool = Component(f"kubelet pool ({nodes} nodes)",
                         [sys.executable, str(Path(__file__).resolve()), "--serve-pool", url, "--nodes", str(nodes),
                          "--workers", str(args.workers), "--data-dir", str(data_dir)], data_dir / "pool.log")
        components.append(pool)
        extra = [a for opt in args.cm_option for a in ("--option", opt)]
        cm = Component("controller-manager", _cli("controller-manager", "--server", url, "--no-leader-elect",
                                                  "--controllers", args.controllers, "--log-level", "warning",
                                                  *extra), data_dir / "controller-manager.log")
        components.append(cm)
        scheduler = Component("scheduler", _cli("scheduler", "--server", url, "--log-level", "warning"),
                              data_dir / "scheduler.log")
        components.append(scheduler)
        line = await asyncio.to_thread(pool.wait_for_line, "ready ", 600)
        result["node_registration_s"] = float(line.split()[1])
        await asyncio.to_thread(cm.wait_for_line, "controller manager running", 120)
        await asyncio.to_thread(scheduler.wait_for_line, "scheduler running", 120)
        print(f"{nodes} nodes registered in {result['node_registration_s']} s; controller manager and scheduler "
              f"running (logs in {data_dir})", flush=True)

        pids: dict[str, int | None] = {"apiserver": apiserver.pid, "controller-manager": cm.pid,
                                       "scheduler": scheduler.pid, "kubelet pool": pool.pid, "load generator": None}
        async with ApiClient(url) as client:
            listing = await client.list(DEPLOYMENTS, NAMESPACE, limit=1)
            tracker = Tracker(n, replicas)
            watcher = asyncio.create_task(watch_deployments(client, listing["metadata"]["resourceVersion"], tracker))
            semaphore = asyncio.Semaphore(args.concurrency)

            # -- phase 1: create, wait until every Deployment is Available ------------------------------------
            async def create(i: int) -> None:
                async with semaphore:
                    await client.create(DEPLOYMENTS, deployment(f"bench-{i}", replicas, 1), NAMESPACE)

            cpu, start, created_s, available_s = await timed_phase("Deployments Available", create, n, tracker,
                                                                   watcher, pids, args.timeout)
            result["rollout"] = {
                "creates_s": round(created_s, 2),
                "all_available_s": round(available_s, 2),
                "deployments_per_s": round(n / available_s, 1),
                "pods_per_s": round(n * replicas / available_s, 1),
                "first_available_s": round(min(tracker.done.values()) - start, 2),
                "cpu_s": cpu.since(),
                "deployment_events_seen": tracker.events,
            }
            print(f"rollout: {n} Deployments Available in {available_s:.1f} s", flush=True)

            # -- phase 2: a rolling update of every Deployment ------------------------------------------------
            tracker.phase(2)
            patch = {"spec": {"template": {"metadata": {"labels": {"version": "v2"}},
                                           "spec": {"containers": [{"name": "app", "image": IMAGE.format(2)}]}}}}

            async def roll(i: int) -> None:
                async with semaphore:
                    await client.patch(DEPLOYMENTS, f"bench-{i}", patch, NAMESPACE, patch_type="strategic")

            cpu, start, patched_s, rolled_s = await timed_phase("Deployments rolled out", roll, n, tracker, watcher,
                                                                pids, args.timeout)
            left = await old_pods_gone(client, 1, args.timeout)
            settled_s = time.perf_counter() - start
            objects = n * (2 + 2 * replicas)  # Deployment updated, ReplicaSet created, pods created and deleted
            result["churn"] = {
                "patches_s": round(patched_s, 2),
                "rollout_complete_s": round(rolled_s, 2),
                "old_pods_left_at_rollout_complete": left,
                "settled_s": round(settled_s, 2),
                "objects": objects,
                "objects_per_s": round(objects / settled_s, 1),
                "pods_replaced_per_s": round(n * replicas / settled_s, 1),
                "deployments_per_s": round(n / rolled_s, 1),
                "cpu_s": cpu.since(),
            }
            print(f"churn: {n} Deployments rolled out in {rolled_s:.1f} s, old pods gone at {settled_s:.1f} s",
                  flush=True)
            watcher.cancel()
            result["check"] = await check(client, n, replicas)

        result["peak_rss_mb"] = {k: round(peak_rss_mb(p)) for k, p in pids.items()}
    finally:
        for c in reversed(components):
            c.stop()
    return result


async def timed_phase(what: str, send: Callable[[int], Awaitable[None]], n: int, tracker: Any,
                      watcher: asyncio.Task[None], pids: dict[str, int | None],
                      timeout: float) -> tuple[Cpu, float, float, float]:
    """``send(i)`` for each of the n Deployments, then wait until the tracker has seen all of them done, printing
    progress meanwhile: (the CPU mark taken at the start, the start, seconds to send, seconds until all done)."""
    cpu = Cpu(pids)
    start = time.perf_counter()
    ticker = asyncio.create_task(progress(what, lambda: len(tracker.done), n, start))
    try:
        await asyncio.gather(*(send(i) for i in range(n)))
        sent_s = time.perf_counter() - start
        await wait_or_fail(tracker.all_done, watcher, timeout, what)
    finally:
        ticker.cancel()
    return cpu, start, sent_s, max(tracker.done.values()) - start


async def wait_or_fail(event: asyncio.Event, watcher: asyncio.Task[None], timeout: float, what: str) -> None:
    waiter = asyncio.create_task(event.wait())
    done, _ = await asyncio.wait({waiter, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter in done:
        return
    waiter.cancel()
    if watcher in done:
        watcher.result()  # the watch failed: raise its error
        raise SystemExit("the Deployment watch ended")
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for all {what}")


async def check(client: ApiClient, n: int, replicas: int) -> str:
    """After the run: exactly the pods the Deployments ask for, all of the new template, bound and running."""
    pods = (await client.list(PODS, NAMESPACE))["items"]
    wrong = [p["metadata"]["name"] for p in pods
             if (p["metadata"].get("labels") or {}).get("version") != "v2" or p["metadata"].get("deletionTimestamp")
             or not (p.get("spec") or {}).get("nodeName") or (p.get("status") or {}).get("phase") != "Running"]
    if len(pods) != n * replicas or wrong:
        raise SystemExit(f"check failed: {len(pods)} pods (want {n * replicas}); not as expected: {wrong[:10]}")
    return f"ok: {len(pods)} pods, all v2, bound and Running"


# ---------------------------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------------------------

def rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    n, ro, ch = r["deployments"], r["rollout"], r["churn"]
    target_rate = KWOK_RATE * TARGET_FACTOR
    kwok_s = n / KWOK_RATE
    out: list[tuple[str, ...]] = [
        ("measurement", "ccmkit", "baseline", "baseline value", "ratio", "target", "met"),
        (f"Deployments Available/s ({n} x {r['replicas']} replicas, {r['nodes']} nodes)",
         f"{ro['deployments_per_s']:,.1f} /s", f"KWOK: {KWOK_DEPLOYMENTS} Deployments in ~{KWOK_SECONDS:.0f} s",
         f"{KWOK_RATE:.1f} /s", f"{ro['deployments_per_s'] / KWOK_RATE:.2f}", f">= {target_rate:.0f} /s (10x)",
         "yes" if ro["deployments_per_s"] >= target_rate else "NO"),
        ("  first create -> all Available", f"{ro['all_available_s']:.1f} s", f"KWOK's pace for {n}",
         f"{kwok_s:.1f} s", f"{ro['all_available_s'] / kwok_s:.2f}", f"< {n / target_rate:.1f} s", ""),
        ("  pods Available/s", f"{ro['pods_per_s']:,.1f} /s", "", "", "", "", ""),
        ("  creates sent (load generator)", f"{ro['creates_s']:.1f} s", "", "", "", "", ""),
        ("  first Deployment Available", f"{ro['first_available_s']:.1f} s", "", "", "", "", ""),
        ("churn: rolling update of all, objects/s (to old pods gone)", f"{ch['objects_per_s']:,.1f} /s", "", "",
         "", "", ""),
        (f"  objects: {n} Deployments + {n} ReplicaSets + {n * r['replicas']} pods created + as many deleted",
         f"{ch['objects']:,}", "", "", "", "", ""),
        ("  first patch -> all rolled out (kubectl rollout status)", f"{ch['rollout_complete_s']:.1f} s", "", "", "",
         "", ""),
        ("  first patch -> old pods gone", f"{ch['settled_s']:.1f} s", "", "", "", "", ""),
        ("  Deployments rolled out/s", f"{ch['deployments_per_s']:,.1f} /s", "KWOK rollout pace", f"{KWOK_RATE:.1f} /s",
         f"{ch['deployments_per_s'] / KWOK_RATE:.2f}", "", ""),
        ("  pods replaced/s", f"{ch['pods_replaced_per_s']:,.1f} /s", "", "", "", "", ""),
        ("node registration (Node + status + Lease each)", f"{r['node_registration_s']:.1f} s", "", "", "", "", ""),
    ]
    for proc in ro["cpu_s"]:
        out.append((f"CPU s, {proc}: rollout / churn", f"{ro['cpu_s'][proc]:.1f} / {ch['cpu_s'][proc]:.1f}",
                    "", "", "", "", ""))
    for proc, mb in r["peak_rss_mb"].items():
        out.append((f"peak RSS, {proc}", f"{mb:,} MiB", "", "", "", "", ""))
    return out


def print_table(r: dict[str, Any], info: dict[str, str], seconds: float) -> None:
    print(f"\nccmkit controller benchmark, {info['date']}: {info['nproc']} x {info['cpu']}, {info['ram']} RAM, "
          f"Python {info['python']}, kernel {info['kernel']}, load average {info['loadavg']} at start, "
          f"{loadavg()} at end ({seconds:.0f} s)")
    table = rows(r)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for i, row in enumerate(table):
        print(" | ".join(cell.ljust(w) if c in (0, 2, 5) else cell.rjust(w)
                         for c, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("-+-".join("-" * w for w in widths))
    print(f"check: {r['check']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 Deployments on 50 nodes (about a minute)")
    parser.add_argument("--deployments", type=int, default=None, help="[1000; --quick: 100]")
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=None, help="[500; --quick: 50]")
    parser.add_argument("--concurrency", type=int, default=16, help="Deployment creates/patches in flight")
    parser.add_argument("--workers", type=int, default=32, help="pod sync workers of the kubelet pool")
    parser.add_argument("--controllers", default="*", help="the controller manager's --controllers")
    parser.add_argument("--cm-option", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to the controller manager as --option (e.g. concurrent_deployment_syncs=10)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds each phase may take")
    parser.add_argument("--json", type=Path, help="also write the results here")
    add_pool_arguments(parser)
    args = parser.parse_args()
    if args.serve_pool:
        run_pool(args.serve_pool, args.nodes, args.workers, args.data_dir)
        return
    args.deployments = args.deployments or (100 if args.quick else 1000)
    args.nodes = args.nodes or (50 if args.quick else 500)
    logging.basicConfig(level=logging.WARNING)
    info = machine()
    began = time.perf_counter()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    result["machine"] = info
    result["load_average_end"] = loadavg()
    print_table(result, info, time.perf_counter() - began)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    os._exit(0)  # without waiting for the client's idle connections to be collected


if __name__ == "__main__":
    main()
