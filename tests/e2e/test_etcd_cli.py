"""`ccmkit up --store etcd` as users run it: ccmkit starts a local etcd under the data directory, kubectl works, the
etcd goes when ccmkit does, and the next start on the same directory has every object back. Each way it cannot
start (no etcd binary, an etcd:// cluster nobody answers at) is one line on stderr, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import CcmkitUp

etcd_installed = shutil.which("etcd") is not None
needs_etcd = pytest.mark.skipif(not etcd_installed, reason="the etcd binary is not installed "
                                                           "(apt-get install etcd-server)")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@needs_etcd
@pytest.mark.etcd
@pytest.mark.slow
def test_up_runs_its_own_etcd_stops_it_on_sigterm_and_keeps_the_state(tmp_path: Path, kubectl_for) -> None:
    up = CcmkitUp(tmp_path / "data", store="etcd", extra=("--nodes", "0")).start()
    try:
        etcd_pid = int((up.data_dir / "etcd.pid").read_text())
        assert alive(etcd_pid)
        manifest = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"},
                               "data": {"where": "etcd"}})
        created = kubectl_for(up.kubeconfig, "create", "-f", "-", input=manifest)
        assert created.stdout.strip() == "configmap/kept created", created.stderr
        rv = kubectl_for(up.kubeconfig, "get", "configmap", "kept", "-o", "jsonpath={.metadata.resourceVersion}")

        up.signal(signal.SIGTERM)
        code, output = up.wait()
        assert code == 0, output
        assert output.strip().splitlines()[-1] == "ccmkit stopped."
        assert not alive(etcd_pid), "ccmkit left its etcd running"

        up.start()
        assert int((up.data_dir / "etcd.pid").read_text()) != etcd_pid
        kept = kubectl_for(up.kubeconfig, "get", "configmap", "kept", "-o", "json")
        assert kept.returncode == 0, kept.stderr
        obj = json.loads(kept.stdout)
        assert obj["data"] == {"where": "etcd"}
        assert obj["metadata"]["resourceVersion"] == rv.stdout  # the same object, not a re-creation
        again = kubectl_for(up.kubeconfig, "create", "configmap", "after-restart")
        assert again.returncode == 0, again.stderr
        newer = kubectl_for(up.kubeconfig, "get", "configmap", "after-restart", "-o",
                            "jsonpath={.metadata.resourceVersion}")
        assert int(newer.stdout) > int(rv.stdout), "revisions went backwards across the restart"
    finally:
        up.kill()
        pid_file = up.data_dir / "etcd.pid"
        if pid_file.exists() and alive(pid := int(pid_file.read_text())):
            os.kill(pid, signal.SIGKILL)  # only if the test failed with ccmkit killed before it stopped etcd


def test_up_with_etcd_but_no_etcd_binary_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CCMKIT_ETCD_BINARY"}
    env["PATH"] = str(empty)  # the interpreter is run by its full path; etcd cannot be found
    result = subprocess.run([sys.executable, "-m", "controlplane.cli", "up", "--store", "etcd",
                             "--data-dir", str(tmp_path / "d"), "--port", "0", "--nodes", "0"],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    line = one_line_error(result)
    assert "etcd binary ('etcd') was not found on PATH" in line and "apt-get install etcd-server" in line, line
    assert not (tmp_path / "d" / "kubeconfig").exists()


def test_apiserver_on_an_unreachable_etcd_names_the_endpoint(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "controlplane.cli", "apiserver", "--store",
                             "etcd://127.0.0.1:1", "--data-dir", str(tmp_path / "d"), "--port", "0"],
                            capture_output=True, text=True, timeout=60, check=False)
    line = one_line_error(result)
    assert line.startswith("Error: cannot reach etcd at 127.0.0.1:1 within 5s"), line
    assert "check that etcd is running" in line, line
    assert not (tmp_path / "d" / "kubeconfig").exists()
