"""`ccmkit up` as a user runs it: a separate process on a sqlite store, reached through the kubeconfig it writes.

Covers what only the real command line shows: kubectl works with the written kubeconfig, SIGTERM and SIGINT end it
cleanly (exit 0), a bad flag is one line on stderr rather than a traceback, and every create that was acknowledged
survives a SIGKILL and a restart on the same data directory, with resourceVersions still increasing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from e2e_helpers import CcmkitUp, wait_until

pytestmark = pytest.mark.slow


def configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"crash": "test"}},
            "data": {"payload": name * 4}}


def test_kubectl_works_with_the_written_kubeconfig(ccmkit_up: CcmkitUp, kubectl_for, tmp_path: Path) -> None:
    namespaces = kubectl_for(ccmkit_up.kubeconfig, "get", "namespaces", "-o", "name")
    assert namespaces.returncode == 0, namespaces.stderr
    assert namespaces.stdout.split() == ["namespace/default", "namespace/kube-node-lease", "namespace/kube-public",
                                         "namespace/kube-system"]
    manifest = tmp_path / "app.yaml"
    manifest.write_text(json.dumps({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                                    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                                             "template": {"metadata": {"labels": {"app": "web"}},
                                                          "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}))
    applied = kubectl_for(ccmkit_up.kubeconfig, "apply", "-f", str(manifest))
    assert applied.stdout.strip() == "deployment.apps/web created", applied.stderr
    again = kubectl_for(ccmkit_up.kubeconfig, "apply", "-f", str(manifest))
    assert again.stdout.strip() == "deployment.apps/web unchanged", again.stderr
    wide = kubectl_for(ccmkit_up.kubeconfig, "get", "deploy", "-o", "wide")
    assert wide.stdout.splitlines()[0].split()[-3:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert wide.stdout.splitlines()[1].split()[-3:] == ["c", "nginx", "app=web"]
    deleted = kubectl_for(ccmkit_up.kubeconfig, "delete", "-f", str(manifest), "--wait")
    assert deleted.stdout.strip() == 'deployment.apps "web" deleted', deleted.stderr


def test_state_survives_a_clean_restart(ccmkit_up: CcmkitUp, kubectl_for) -> None:
    created = kubectl_for(ccmkit_up.kubeconfig, "create", "namespace", "kept", "--dry-run=client", "-o", "json")
    assert kubectl_for(ccmkit_up.kubeconfig, "create", "-f", "-", input=created.stdout).returncode == 0
    ccmkit_up.signal(signal.SIGTERM)
    assert ccmkit_up.wait()[0] == 0
    ccmkit_up.start()
    listed = kubectl_for(ccmkit_up.kubeconfig, "get", "namespace", "kept", "-o", "jsonpath={.status.phase}")
    assert listed.stdout == "Active", listed.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_end_it_cleanly(ccmkit_up: CcmkitUp, kubectl_for, sig: int) -> None:
    assert kubectl_for(ccmkit_up.kubeconfig, "get", "ns", "default", "-o", "name").stdout.strip() == \
        "namespace/default"
    ccmkit_up.signal(sig)
    code, err = ccmkit_up.wait()
    assert code == 0, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "ccmkit stopped."
    refused = kubectl_for(ccmkit_up.kubeconfig, "get", "ns", "--request-timeout=5s")
    assert refused.returncode != 0 and "was refused" in refused.stderr


def test_unknown_store_is_a_one_line_error(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "controlplane.cli", "up", "--data-dir", str(tmp_path / "d"),
                             "--port", "0", "--store", "floppy-disk"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "floppy-disk" in lines[0], result.stderr
    assert not (tmp_path / "d" / "kubeconfig").exists()


def test_acknowledged_creates_survive_sigkill(tmp_path: Path) -> None:
    up = CcmkitUp(tmp_path / "data").start()
    try:
        url = up.url
        acknowledged: dict[str, int] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def writer(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=10) as client:
                i = 0
                while not stop.is_set():
                    name = f"w{worker}-{i:05d}"
                    try:
                        response = client.post("/api/v1/namespaces/default/configmaps", json=configmap(name))
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 201:
                        with lock:
                            acknowledged[name] = int(response.json()["metadata"]["resourceVersion"])
                    i += 1

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acknowledged) >= 150, timeout=60, message="150 creates acknowledged")
        up.proc.send_signal(signal.SIGKILL)  # mid-stream: the writers are still sending
        code, _ = up.wait()
        stop.set()
        for t in threads:
            t.join(30)
        assert code == -signal.SIGKILL
        with lock:
            recorded = dict(acknowledged)

        up.start()
        with httpx.Client(base_url=up.url, timeout=30) as client:
            listing = client.get("/api/v1/namespaces/default/configmaps", params={"labelSelector": "crash=test"})
            assert listing.status_code == 200
            stored = {item["metadata"]["name"]: int(item["metadata"]["resourceVersion"])
                      for item in listing.json()["items"]}
            missing = sorted(set(recorded) - set(stored))
            assert not missing, f"{len(missing)} acknowledged creates lost, e.g. {missing[:5]}"
            assert all(stored[name] == rv for name, rv in recorded.items())
            after = client.post("/api/v1/namespaces/default/configmaps", json=configmap("after-restart"))
            assert after.status_code == 201
            assert int(after.json()["metadata"]["resourceVersion"]) > max(stored.values())
            assert int(listing.json()["metadata"]["resourceVersion"]) >= max(stored.values())
    finally:
        up.kill()
