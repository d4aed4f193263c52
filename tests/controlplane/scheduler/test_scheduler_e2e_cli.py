"""`ccmkit scheduler` as a user runs it: its own process, a KubeSchedulerConfiguration file with a custom profile
(a disabled plugin, a changed score weight) beside the default one, against the test's API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from scheduler_e2e_helpers import create_nodes, node, pod, taint, wait_bound, wait_event

from controlplane.client import PODS, ApiClient
from controlplane.testing import ThreadedApiServer

CONFIG = textwrap.dedent("""\
    apiVersion: kubescheduler.config.k8s.io/v1
    kind: KubeSchedulerConfiguration
    profiles:
    - schedulerName: default-scheduler
    - schedulerName: custom
      plugins:
        multiPoint:
          disabled:
          - name: TaintToleration
        score:
          enabled:
          - name: NodeResourcesFit
            weight: 5
    """)

ROOT = Path(__file__).resolve().parents[3]


def ccmkit(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "controlplane.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


@pytest.fixture
def scheduler_process(apiserver: ThreadedApiServer, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    config = tmp_path / "scheduler.yaml"
    config.write_text(CONFIG)
    kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
    proc = ccmkit("scheduler", "--kubeconfig", str(kubeconfig), "--config", str(config))
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


async def test_config_file_profiles_run_in_a_scheduler_process(scheduler_process: subprocess.Popen[str],
                                                               client: ApiClient) -> None:
    # "pref" is nearly full; "spare" is empty; "tainted" only takes pods that tolerate its taint.
    await create_nodes(client, node("pref"), node("spare"), node("tainted", taints=[taint("dedicated", "infra")]))
    await client.create(PODS, pod("resident", cpu="3500m", memory="15Gi", nodeName="pref"))
    between = {"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["pref", "spare"]}]}]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": {"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": ["pref"]}]}}]}}
    # Default weights: the node-affinity preference (weight 2) outweighs pref being full (NodeResourcesFit, 1).
    await client.create(PODS, pod("default-pod", affinity=between))
    # The custom profile weighs NodeResourcesFit 5: free room wins over the preference.
    await client.create(PODS, pod("custom-pod", affinity=between, scheduler="custom"))
    # The custom profile has TaintToleration disabled: the taint does not keep its pods away.
    only_tainted = {"kubernetes.io/hostname": "tainted"}
    await client.create(PODS, pod("custom-tainted", scheduler="custom", nodeSelector=only_tainted))
    await client.create(PODS, pod("default-tainted", nodeSelector=only_tainted))

    assert await wait_bound(client, "default-pod", timeout=60) == "pref"
    assert await wait_bound(client, "custom-pod") == "spare"
    assert await wait_bound(client, "custom-tainted") == "tainted"
    ev = await wait_event(client, "default-tainted", "FailedScheduling")
    assert "1 node(s) had untolerated taint {dedicated: infra}" in ev["message"]
    assert (await wait_event(client, "custom-pod", "Scheduled"))["source"]["component"] == "custom"

    scheduler_process.send_signal(signal.SIGTERM)
    assert scheduler_process.wait(20) == 0
    assert "profiles: default-scheduler, custom" in (scheduler_process.stderr.read() if scheduler_process.stderr
                                                     else "")


def test_invalid_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n"
                   "profiles:\n- schedulerName: a\n- schedulerName: a\n")
    proc = ccmkit("scheduler", "--server", "http://127.0.0.1:1", "--config", str(bad))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "profiles[1].schedulerName: Duplicate value: 'a'" in err
    assert "Traceback" not in err
