"""`ccmkit up` runs the scheduler in process: a pod created with kubectl-like calls is scheduled onto the cluster's
kubelet node (which then runs it), by a profile from `--scheduler-config`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import yaml
from scheduler_e2e_helpers import eventually, pod, wait_bound, wait_event

from controlplane.client import PODS, ApiClient

ROOT = Path(__file__).resolve().parents[3]


async def test_up_schedules_pods_with_the_given_scheduler_config(tmp_path: Path) -> None:
    config = tmp_path / "scheduler.yaml"
    config.write_text(textwrap.dedent("""\
        apiVersion: kubescheduler.config.k8s.io/v1
        kind: KubeSchedulerConfiguration
        profiles:
        - schedulerName: default-scheduler
        - schedulerName: from-config-file
        """))
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "controlplane.cli", "up", "--data-dir", str(data), "--port", "0",
                             "--store", "memory", "--nodes", "1", "--runtime", "simulated",
                             "--scheduler-config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        kubeconfig = data / "kubeconfig"
        deadline = time.monotonic() + 60
        while not kubeconfig.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else "ccmkit up exited"
            assert time.monotonic() < deadline, "ccmkit up did not write its kubeconfig"
            await asyncio.sleep(0.05)  # polling for the file `up` writes once every component has started
        url = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        async with ApiClient(url) as client:
            await client.create(PODS, pod("web", scheduler="from-config-file"))
            assert await wait_bound(client, "web", timeout=30) == "ccmkit-node-1"
            ev = await wait_event(client, "web", "Scheduled")
            assert ev["source"]["component"] == "from-config-file"

            async def running() -> bool:
                return (await client.get(PODS, "web", "default"))["status"].get("phase") == "Running"
            await eventually(running, 30, "the kubelet runs the scheduled pod")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_up_rejects_an_invalid_scheduler_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
                   "profiles:\n- schedulerName: x\n  plugins:\n    nowhere: {}\n")
    proc = subprocess.run([sys.executable, "-m", "controlplane.cli", "up", "--data-dir", str(tmp_path / "d"),
                           "--port", "0", "--store", "memory", "--nodes", "0", "--scheduler-config", str(bad)],
                          check=False, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=60)
    assert proc.returncode == 2
    assert "profiles[0].plugins.nowhere: unknown extension point" in proc.stderr
    assert not (tmp_path / "d" / "kubeconfig").exists()
