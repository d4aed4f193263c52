"""Scheduler throughput end to end through the API server, beside the in-process figure for the same shape.

scheduler_perf.py measures the scheduling algorithm alone (pods fed to the snapshot, bindings confirmed in-process).
This measures what a user sees: `ccmkit apiserver --store memory` in its own process, Nodes created through the
API, Pods created by concurrent clients in another process, and the SchedulerService (in this process, or as
`ccmkit scheduler` in its own) watching them, scheduling, POSTing pods/binding and writing a Scheduled event per
pod. A pod counts once its binding was accepted (the scheduler's scheduler_schedule_attempts_total{result=
"scheduled"}); the run ends with a check that every pod is bound and no node is overcommitted.

Two modes, each on a fresh API server:
  concurrent  pods are created while the scheduler runs (the scheduler keeps up with creation or not);
  backlog     pods are created first, then the scheduler starts and drains them (its own ceiling).
Beside them, scheduler_perf's in-process SchedulingBasic on the same nodes and pods, and the ratio e2e/in-process.
The machine is shared and noisy: compare ratios taken in one run rather than absolute numbers across runs.

  python bench/scheduler/e2e_bench.py                  # 1000 nodes, 5000 pods, both modes, scheduler in-process
  python bench/scheduler/e2e_bench.py --quick          # 200 nodes, 1000 pods
  python bench/scheduler/e2e_bench.py --scheduler-process --mode backlog
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import httpx
import yaml

from controlplane.client import NODES, PODS, ApiClient

NAMESPACE = "default"


# ---------------------------------------------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


class ApiServerProcess:
    """`ccmkit apiserver --store memory --port 0` in its own process; the URL comes from the kubeconfig it writes."""

    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="sched-e2e-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> ApiServerProcess:
        data = Path(self.dir.name)
        self.proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "apiserver", "--store", "memory",
                                      "--port", "0", "--data-dir", str(data)], env=_env(), cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kubeconfig = data / "kubeconfig"
        deadline = time.monotonic() + timeout
        while not kubeconfig.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ccmkit apiserver did not start")
            time.sleep(0.05)  # polling for the file the server writes when ready
        self.url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.dir.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# objects
# ---------------------------------------------------------------------------------------------------------------

def node_body(i: int) -> dict[str, Any]:
    from scheduler_perf import node_template
    return node_template(f"node-{i}")


def pod_body(name: str) -> dict[str, Any]:
    from scheduler_perf import pod_default
    p = pod_default()
    p["metadata"] = {"name": name, "namespace": NAMESPACE}
    return p


async def create_nodes(url: str, n: int, concurrency: int = 32) -> None:
    async with ApiClient(url) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await client.create(NODES, node_body(i))
        await asyncio.gather(*(one(i) for i in range(n)))


async def _creator_main(url: str, start: int, count: int, clients: int) -> None:
    """Create pods ``pod-<start>``... with ``clients`` concurrent clients; prints start/end wall times as JSON."""
    names = [f"pod-{i}" for i in range(start, start + count)]
    t0 = time.time()

    async def worker(k: int) -> None:
        async with ApiClient(url) as client:
            for name in names[k::clients]:
                await client.create(PODS, pod_body(name), NAMESPACE)
    await asyncio.gather(*(worker(k) for k in range(clients)))
    print(json.dumps({"start": t0, "end": time.time()}), flush=True)


def start_creators(url: str, start: int, count: int, clients: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--_create", url, str(start), str(count),
                             str(clients)], env=_env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)


async def verify(url: str, expected: int) -> tuple[int, int]:
    """(bound pods, overcommitted nodes) as the API server sees them."""
    from controlplane.scheduler.quantity import to_int
    async with ApiClient(url) as client:
        pods = (await client.list_all(PODS, NAMESPACE, page_size=2000))["items"]
        nodes = (await client.list_all(NODES, page_size=2000))["items"]
    used: dict[str, int] = {}
    bound = 0
    for p in pods:
        nn = (p.get("spec") or {}).get("nodeName")
        if nn:
            bound += 1
            for c in p["spec"]["containers"]:
                used[nn] = used.get(nn, 0) + to_int("cpu", c["resources"]["requests"]["cpu"])
    over = sum(1 for n in nodes if used.get(n["metadata"]["name"], 0) > to_int("cpu", n["status"]["capacity"]["cpu"]))
    return bound, over


# ---------------------------------------------------------------------------------------------------------------
# the scheduler under test, in-process or as `ccmkit scheduler`
# ---------------------------------------------------------------------------------------------------------------

_SCHEDULED = re.compile(r'^scheduler_schedule_attempts_total\{profile="default-scheduler",result="scheduled"\} (\S+)$',
                        re.MULTILINE)


class SchedulerUnderTest:
    def __init__(self, url: str, in_process: bool) -> None:
        self.url = url
        self.in_process = in_process
        self.svc: Any = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_url = ""
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self.in_process:
            from controlplane.scheduler.service import SchedulerService
            self.svc = SchedulerService(self.url)
            await self.svc.start()
            return
        port = _free_port()
        self.metrics_url = f"http://127.0.0.1:{port}/metrics"
        self.proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "scheduler", "--server", self.url,
                                      "--metrics-port", str(port), "--log-level", "warning"], env=_env(), cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._http = httpx.AsyncClient(timeout=5.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                if (await self._http.get(self.metrics_url.replace("/metrics", "/healthz"))).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ccmkit scheduler did not start")
            await asyncio.sleep(0.05)  # polling for readiness

    async def scheduled(self) -> int:
        if self.in_process:
            return int(self.svc.metrics.schedule_attempts.labels("scheduled", "default-scheduler")._value.get())
        assert self._http is not None
        m = _SCHEDULED.search((await self._http.get(self.metrics_url)).text)
        return int(float(m.group(1))) if m else 0

    async def stop(self) -> None:
        """Idempotent."""
        svc, self.svc = self.svc, None
        if svc is not None:
            await svc.stop()
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()


# ---------------------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class E2EResult:
    mode: str
    nodes: int
    pods: int
    bound: int
    overcommitted: int
    create_seconds: float
    create_rate: float
    seconds: float  # first pod created (concurrent) / scheduler started (backlog) -> last pod bound
    rate: float


async def _wait_scheduled(sched: SchedulerUnderTest, total: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        n = await sched.scheduled()
        if n >= total:
            return time.time()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {n}/{total} pods bound within {timeout:.0f}s")
        await asyncio.sleep(0.05)  # sampling the counter


def _creators_done(proc: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError("pod creators failed")
    return json.loads(out.strip().splitlines()[-1])


async def run_e2e(mode: str, nodes: int, pods: int, clients: int, in_process: bool) -> E2EResult:
    server = ApiServerProcess().start()
    sched = SchedulerUnderTest(server.url, in_process)
    try:
        await create_nodes(server.url, nodes)
        if mode == "concurrent":
            await sched.start()
            creators = start_creators(server.url, 0, pods, clients)
            done_at = await _wait_scheduled(sched, pods, timeout=600)
            times = await asyncio.get_running_loop().run_in_executor(None, _creators_done, creators)
            began = times["start"]
        else:
            creators = start_creators(server.url, 0, pods, clients)
            times = await asyncio.get_running_loop().run_in_executor(None, _creators_done, creators)
            began = time.time()
            await sched.start()
            done_at = await _wait_scheduled(sched, pods, timeout=600)
        await sched.stop()
        bound, over = await verify(server.url, pods)
    finally:
        await sched.stop()
        server.stop()
    create_s = times["end"] - times["start"]
    secs = done_at - began
    return E2EResult(mode, nodes, pods, bound, over, create_s, pods / create_s, secs, pods / secs)


def run_in_process(nodes: int, pods: int) -> float:
    from scheduler_perf import pod_default, run_workload
    r = run_workload("SchedulingBasic", nodes, 0, pods, pod_default, pod_default, init_ns="default",
                     measure_ns="default")
    if r.check != "ok" or r.scheduled != pods:
        raise RuntimeError(f"in-process run failed: {r.scheduled}/{pods} scheduled, check {r.check}")
    return r.rate


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 nodes, 1000 pods")
    ap.add_argument("--nodes", type=int, default=None)
    ap.add_argument("--pods", type=int, default=None)
    ap.add_argument("--clients", type=int, default=8, help="concurrent pod-creating clients")
    ap.add_argument("--mode", choices=["concurrent", "backlog", "both"], default="both")
    ap.add_argument("--scheduler-process", action="store_true", help="run `ccmkit scheduler` in its own process")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--_create", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._create:
        url, start, count, clients = args._create
        asyncio.run(_creator_main(url, int(start), int(count), int(clients)))
        return 0
    nodes = args.nodes or (200 if args.quick else 1000)
    pods = args.pods or (1000 if args.quick else 5000)
    modes = ["concurrent", "backlog"] if args.mode == "both" else [args.mode]
    where = "subprocess" if args.scheduler_process else "in-process"
    print(f"SchedulingBasic end to end: {nodes} nodes, {pods} pods, {args.clients} creating clients, "
          f"scheduler {where}", flush=True)
    inproc = run_in_process(nodes, pods)
    print(f"  in-process (scheduler_perf):  {inproc:8.1f} pods/s", flush=True)
    results = []
    for mode in modes:
        r = asyncio.run(run_e2e(mode, nodes, pods, args.clients, not args.scheduler_process))
        results.append(r)
        print(f"  e2e {mode:10}: {r.rate:8.1f} pods/s bound ({r.seconds:.2f}s)  ratio {r.rate / inproc:.3f}; "
              f"creates {r.create_rate:.0f}/s; bound {r.bound}/{r.pods}, overcommitted nodes {r.overcommitted}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"in_process_rate": inproc, "scheduler": where,
                                         "results": [asdict(r) | {"ratio": r.rate / inproc} for r in results]},
                                        indent=2))
    return 0 if all(r.bound == r.pods and r.overcommitted == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
