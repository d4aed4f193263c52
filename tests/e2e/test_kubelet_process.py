"""A kubelet on the process runtime against a real API server, driven as users drive it: pods created over HTTP
(bound by hand, there is no scheduler here), watched through their status, and the real kubectl for logs, exec and
delete. Containers are real local processes, each pod on its own loopback IP."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controlplane.client import CONFIGMAPS, LEASES, NODES, PODS, SECRETS, ApiClient
from controlplane.kubelet.config import NodeConfig
from controlplane.kubelet.pool import KubeletPool
from controlplane.kubelet.runtimes import node_runtime
from controlplane.kubelet.testing import (
    condition,
    container_status,
    fast_options,
    get_pod,
    phase_is,
    pod_manifest,
    pod_where,
    wait_for,
)
from controlplane.testing import ThreadedApiServer

NODE = "proc-node"


@pytest.fixture
async def client(apiserver: ThreadedApiServer) -> AsyncIterator[ApiClient]:
    async with ApiClient(apiserver.url) as c:
        yield c


@pytest.fixture
async def kubelet(apiserver: ThreadedApiServer, tmp_path: Path) -> AsyncIterator[KubeletPool]:
    pool = KubeletPool(apiserver.url, [node_runtime("process", NodeConfig(NODE), tmp_path / "rt", 0)],
                       fast_options(tmp_path / "kubelet"), own_runtimes=True)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


async def run_kubectl(kubectl: Any, *args: str, check: bool = True) -> Any:
    # kubectl talks to the kubelet on this test's loop (through the API server): never block the loop on it.
    return await asyncio.to_thread(kubectl.run, *args, check=check)


def sh(script: str, **container: Any) -> dict[str, Any]:
    return {"name": container.pop("name", "main"), "image": "busybox", "command": ["sh", "-c", script],
            **container}


async def test_node_registers_and_renews_its_lease(kubelet: KubeletPool, client: ApiClient) -> None:
    node = await client.get(NODES, NODE)
    labels = node["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == NODE and labels["kubernetes.io/os"] == "linux"
    assert "kubernetes.io/arch" in labels
    status = node["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True", "MemoryPressure": "False", "DiskPressure": "False", "PIDPressure": "False"}
    assert status["nodeInfo"]["kubeletVersion"] == "v1.32.0-ccmkit"
    assert status["nodeInfo"]["containerRuntimeVersion"].startswith("ccmkit-process://")
    assert {a["type"]: a["address"] for a in status["addresses"]} == {"InternalIP": "127.0.0.1", "Hostname": NODE}
    assert {"cpu", "memory", "pods", "ephemeral-storage"} <= set(status["allocatable"])
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == kubelet.server_port
    assert "taints" not in node["spec"]

    first = (await client.get(LEASES, NODE, "kube-node-lease"))["spec"]
    assert first["holderIdentity"] == NODE and first["leaseDurationSeconds"] == 40
    await wait_for(lambda: _renewed(client, first["renewTime"]), 10, what="the lease to be renewed")


async def _renewed(client: ApiClient, before: str) -> bool:
    return (await client.get(LEASES, NODE, "kube-node-lease"))["spec"]["renewTime"] != before


async def test_external_cloud_provider_node_waits_for_the_ccm(apiserver: ThreadedApiServer, client: ApiClient,
                                                              tmp_path: Path) -> None:
    config = NodeConfig("ext-node", cloud_provider="external", hostname="ip-10-0-1-7.ec2.internal",
                        labels={"topology.kubernetes.io/zone": "us-east-1a"})
    pool = KubeletPool(apiserver.url, [node_runtime("process", config, tmp_path / "rt", 3)],
                       fast_options(tmp_path / "kubelet"), own_runtimes=True)
    await pool.start()
    try:
        node = await client.get(NODES, "ext-node")
        assert {"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true",
                "effect": "NoSchedule"} in node["spec"]["taints"]
        assert "addresses" not in node["status"]
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "ip-10-0-1-7.ec2.internal"
        assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == "us-east-1a"
        assert node["metadata"]["annotations"]["alpha.kubernetes.io/provided-node-ip"] == "127.0.0.1"
        # The CCM sets the addresses; the kubelet's later status reports must not wipe them out.
        addresses = [{"type": "InternalIP", "address": "10.0.1.7"}]
        await client.patch(NODES, "ext-node", {"status": {"addresses": addresses}}, subresource="status")
        before = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["lastHeartbeatTime"]
        await wait_for(lambda: _reported_after(client, before), 15, what="another node status report")
        assert (await client.get(NODES, "ext-node"))["status"]["addresses"] == addresses
    finally:
        await pool.stop()


async def _reported_after(client: ApiClient, before: str) -> bool:
    node = await client.get(NODES, "ext-node")
    return any(c["type"] == "Ready" and c["lastHeartbeatTime"] != before for c in node["status"]["conditions"])


async def test_pod_that_prints_and_exits_succeeds_and_its_logs_are_readable(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, pod_manifest("hello", NODE, [sh("echo hello from $HOSTNAME; echo oops >&2")],
                                           restartPolicy="Never"))
    pod = await pod_where(client, "hello", phase_is("Succeeded"), "Succeeded")
    st = container_status(pod)
    assert st["state"]["terminated"]["exitCode"] == 0 and st["state"]["terminated"]["reason"] == "Completed"
    assert st["containerID"].startswith("ccmkit-process://") and st["imageID"].startswith("sha256:")
    assert re.fullmatch(r"127\.1\.0\.\d+", pod["status"]["podIP"]) and pod["status"]["hostIP"] == "127.0.0.1"
    assert condition(pod, "Initialized") == "True" and condition(pod, "Ready") == "False"
    assert pod["status"]["startTime"]
    out = await run_kubectl(kubectl, "logs", "hello")
    assert out.stdout == "hello from hello\noops\n"


async def test_http_server_on_its_pod_ip_becomes_ready_through_a_readiness_probe(
        kubelet: KubeletPool, client: ApiClient) -> None:
    server = {
        "name": "web", "image": "python",
        # $(MY_IP) comes from a fieldRef and is expanded by the kubelet, as Kubernetes does.
        "command": ["python3", "-m", "http.server", "8080", "--bind", "$(MY_IP)"],
        "env": [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }
    await client.create(PODS, pod_manifest("web", NODE, [server]))
    pod = await pod_where(client, "web", lambda p: condition(p, "Ready") == "True", "Ready")
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "ContainersReady") == "True" and container_status(pod)["ready"] is True
    assert container_status(pod)["started"] is True
    async with httpx.AsyncClient(trust_env=False) as http:
        resp = await http.get(f"http://{pod['status']['podIP']}:8080/")
    assert resp.status_code == 200 and "Directory listing" in resp.text


async def test_failing_liveness_probe_restarts_the_container(kubelet: KubeletPool, client: ApiClient) -> None:
    container = sh("touch alive; sleep 1; rm alive; exec sleep 600", livenessProbe={
        "exec": {"command": ["test", "-f", "alive"]}, "periodSeconds": 1, "failureThreshold": 1})
    await client.create(PODS, pod_manifest("live", NODE, [container], terminationGracePeriodSeconds=1))
    pod = await pod_where(client, "live", lambda p: container_status(p).get("restartCount", 0) >= 1,
                          "a restart")
    last = container_status(pod)["lastState"]["terminated"]
    assert last["exitCode"] in (137, 143) and last["reason"] == "Error"


async def test_crashing_container_goes_into_crash_loop_back_off(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, pod_manifest("crash", NODE, [sh("echo attempt; exit 1")]))
    pod = await pod_where(client, "crash", lambda p: container_status(p).get("restartCount", 0) >= 2 and
                          container_status(p)["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff",
                          "CrashLoopBackOff after 2 restarts")
    st = container_status(pod)
    assert "back-off" in st["state"]["waiting"]["message"] and "container=main" in st["state"]["waiting"]["message"]
    assert st["lastState"]["terminated"]["exitCode"] == 1
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always: a crash-looping pod is still Running
    previous = await run_kubectl(kubectl, "logs", "crash", "--previous")
    assert previous.stdout == "attempt\n"


async def test_kubectl_logs_tail_timestamps_and_follow(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, pod_manifest("talker", NODE, [sh(
        "for i in 1 2 3; do echo line $i; done; sleep 1; echo line 4; exec sleep 600")]))
    await pod_where(client, "talker", phase_is("Running"), "Running")
    await wait_for(lambda: _logs_contain(kubectl, "talker", "line 4"), 15, what="all four lines")
    assert (await run_kubectl(kubectl, "logs", "talker", "--tail=2")).stdout == "line 3\nline 4\n"
    stamped = (await run_kubectl(kubectl, "logs", "talker", "--timestamps")).stdout.splitlines()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z line 1$", stamped[0])

    follower = kubectl.popen("logs", "-f", "talker")
    try:
        lines = await asyncio.wait_for(asyncio.to_thread(_read_lines, follower, 4), 20)
        assert lines == ["line 1", "line 2", "line 3", "line 4"]
        assert follower.poll() is None  # still following a running container
    finally:
        follower.send_signal(signal.SIGTERM)
        await asyncio.to_thread(follower.wait, 10)


def _read_lines(proc: Any, n: int) -> list[str]:
    return [proc.stdout.readline().rstrip("\n") for _ in range(n)]


async def _logs_contain(kubectl: Any, pod: str, text: str) -> bool:
    return text in (await run_kubectl(kubectl, "logs", pod, check=False)).stdout


async def test_kubectl_logs_follow_ends_when_the_container_exits(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, pod_manifest("brief", NODE, [sh("echo start; sleep 1; echo done")],
                                           restartPolicy="Never"))
    await pod_where(client, "brief", lambda p: (p.get("status") or {}).get("phase") in ("Running", "Succeeded"),
                    "started")
    out = await asyncio.wait_for(run_kubectl(kubectl, "logs", "-f", "brief"), 20)
    assert out.stdout == "start\ndone\n"


async def test_kubectl_exec_streams_stdout_stderr_and_the_exit_code(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(PODS, pod_manifest("box", NODE, [sh("exec sleep 600", env=[{"name": "GREETING",
                                                                                     "value": "hi"}])]))
    await pod_where(client, "box", lambda p: condition(p, "Ready") == "True", "Ready")
    ok = await run_kubectl(kubectl, "exec", "box", "--", "sh", "-c", "echo $GREETING; echo to-stderr >&2")
    assert ok.stdout == "hi\n" and "to-stderr" in ok.stderr
    failed = await run_kubectl(kubectl, "exec", "box", "--", "sh", "-c", "echo partial; exit 3", check=False)
    assert failed.returncode == 3 and failed.stdout == "partial\n"
    piped = await asyncio.to_thread(kubectl.run, "exec", "-i", "box", "--", "tr", "a-z", "A-Z", input="shout\n")
    assert piped.stdout == "SHOUT\n"  # stdin frames, then v5's close signal ends the command's input
    missing = await run_kubectl(kubectl, "exec", "box", "-c", "nope", "--", "true", check=False)
    assert missing.returncode != 0 and "container nope is not valid for pod box" in missing.stderr


async def test_kubectl_delete_runs_graceful_termination_with_pre_stop_hook(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    container = sh('trap "echo term > $CCMKIT_CONTAINER_ROOT/marks/term; exit 0" TERM; '
                   "while true; do sleep 0.1; done",
                   volumeMounts=[{"name": "marks", "mountPath": "/marks"}],
                   lifecycle={"preStop": {"exec": {"command": ["sh", "-c", "echo pre > ./marks/prestop"]}}})
    await client.create(PODS, pod_manifest("graceful", NODE, [container], terminationGracePeriodSeconds=10,
                                           volumes=[{"name": "marks", "hostPath": {"path": str(marks)}}]))
    await pod_where(client, "graceful", lambda p: condition(p, "Ready") == "True", "Ready")
    out = await run_kubectl(kubectl, "delete", "pod", "graceful", "--timeout=30s")
    assert 'pod "graceful" deleted' in out.stdout
    assert await get_pod(client, "graceful") is None
    assert (marks / "prestop").read_text() == "pre\n"
    assert (marks / "term").read_text() == "term\n"


async def test_env_and_volumes_from_configmaps_secrets_and_init_containers(
        kubelet: KubeletPool, client: ApiClient, kubectl: Any) -> None:
    await client.create(CONFIGMAPS, {"metadata": {"name": "settings", "namespace": "default"},
                                     "data": {"mode": "fast", "app.conf": "level=3\n"}})
    await client.create(SECRETS, {"metadata": {"name": "creds", "namespace": "default"},
                                  "data": {"password": base64.b64encode(b"s3cret").decode()}})
    init = sh("echo from-init > ./work/init.txt", name="prepare",
              volumeMounts=[{"name": "work", "mountPath": "/work"}])
    main = sh("echo mode=$MODE pw=$PASSWORD ns=$NS pre_mode=$SETTINGS_mode; cat ./conf/app.conf ./work/init.txt "
              "./secret/password; echo", name="main",
              env=[{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                   {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                   {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
              envFrom=[{"prefix": "SETTINGS_", "configMapRef": {"name": "settings"}}],
              volumeMounts=[{"name": "conf", "mountPath": "/conf"}, {"name": "work", "mountPath": "/work"},
                            {"name": "secret", "mountPath": "/secret"}])
    await client.create(PODS, pod_manifest(
        "configured", NODE, [main], restartPolicy="Never", initContainers=[init],
        volumes=[{"name": "conf", "configMap": {"name": "settings"}}, {"name": "work", "emptyDir": {}},
                 {"name": "secret", "secret": {"secretName": "creds"}}]))
    pod = await pod_where(client, "configured", phase_is("Succeeded"), "Succeeded")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    out = (await run_kubectl(kubectl, "logs", "configured")).stdout
    assert out == "mode=fast pw=s3cret ns=default pre_mode=fast\nlevel=3\nfrom-init\ns3cret\n"


async def test_missing_configmap_keeps_the_container_waiting_until_it_exists(
        kubelet: KubeletPool, client: ApiClient) -> None:
    main = sh("echo $VALUE; exec sleep 600", env=[
        {"name": "VALUE", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "v"}}}])
    await client.create(PODS, pod_manifest("patient", NODE, [main]))
    pod = await pod_where(client, "patient", lambda p: container_status(p).get("state", {}).get("waiting", {}).get(
        "reason") == "CreateContainerConfigError", "CreateContainerConfigError")
    assert container_status(pod)["state"]["waiting"]["message"] == 'configmap "later" not found'
    await client.create(CONFIGMAPS, {"metadata": {"name": "later", "namespace": "default"}, "data": {"v": "1"}})
    await pod_where(client, "patient", lambda p: condition(p, "Ready") == "True", "Ready once the ConfigMap exists")


async def test_pod_that_does_not_fit_is_rejected_as_out_of_cpu(kubelet: KubeletPool, client: ApiClient) -> None:
    big = sh("exec sleep 600", resources={"requests": {"cpu": "64"}})
    await client.create(PODS, pod_manifest("huge", NODE, [big]))
    pod = await pod_where(client, "huge", phase_is("Failed"), "Failed")
    assert pod["status"]["reason"] == "OutOfcpu"
    assert pod["status"]["message"] == ("Pod was rejected: Node didn't have enough resource: cpu, requested: 64000, "
                                        "used: 0, capacity: 4000")


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3 for the stats workload")
async def test_stats_summary_reports_per_pod_cpu_and_memory(kubelet: KubeletPool, client: ApiClient) -> None:
    burner = {"name": "burn", "image": "python", "command": ["python3", "-c",
                                                            "x = bytearray(30 * 1024 * 1024)\nwhile True: pass"]}
    await client.create(PODS, pod_manifest("burner", NODE, [burner]))
    await pod_where(client, "burner", lambda p: condition(p, "Ready") == "True", "Ready")

    async def busy() -> dict[str, Any] | None:
        summary = await kubelet.stats_summary(NODE)
        pods = {p["podRef"]["name"]: p for p in summary["pods"]}
        pod = pods.get("burner")
        return pod if pod and pod["cpu"]["usageNanoCores"] > 20_000_000 and \
            pod["memory"]["workingSetBytes"] > 30 * 1024 * 1024 else None

    pod = await wait_for(busy, 20, interval=0.5, what="CPU and memory usage in the summary")
    assert pod["containers"][0]["name"] == "burn"
    async with httpx.AsyncClient(trust_env=False) as http:
        served = (await http.get(f"http://127.0.0.1:{kubelet.server_port}/stats/summary")).json()
    assert served["node"]["nodeName"] == NODE and any(p["podRef"]["name"] == "burner" for p in served["pods"])
