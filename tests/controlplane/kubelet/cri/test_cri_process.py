"""The process runtime's own promises: pods reachable on their loopback IP, whole process groups stopped and
killed, mounts as symlinks under a container root, exec in the container's environment, stats from /proc."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cri_harness import eventually, until

from controlplane.kubelet.cri.api import (
    STDOUT,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    CRIError,
    DeadlineExceededError,
    ExecRequest,
    ImageSpec,
    KeyValue,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    Mount,
    NamespaceMode,
    NamespaceOption,
    PodSandboxConfig,
    PodSandboxMetadata,
    collect,
)
from controlplane.kubelet.cri.ippool import IPPool
from controlplane.kubelet.cri.process import ProcessRuntime

IMAGE = "ccmkit.local/app:1"


@pytest.fixture
async def rt(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    # A range of its own, so these pods never share an address with another runtime's in the same test run.
    runtime = ProcessRuntime(tmp_path / "data", pod_cidr="127.2.0.0/16")
    runtime.images.add(IMAGE)
    try:
        yield runtime
    finally:
        await runtime.aclose()


def pod(name: str = "pod", log_dir: Path | None = None, host_network: bool = False) -> PodSandboxConfig:
    config = PodSandboxConfig(
        PodSandboxMetadata(name, f"uid-{name}", "default"), hostname=name, log_directory=str(log_dir) if log_dir else ""
    )
    if host_network:
        config.linux = LinuxPodSandboxConfig(
            security_context=LinuxSandboxSecurityContext(namespace_options=NamespaceOption(network=NamespaceMode.NODE))
        )
    return config


def container(command: list[str], name: str = "app", **kwargs: object) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata(name), ImageSpec(IMAGE), command=command, log_path=f"{name}.log", **kwargs)  # type: ignore[arg-type]


async def run(rt: ProcessRuntime, sandbox: PodSandboxConfig, config: ContainerConfig) -> tuple[str, str]:
    sid = await rt.run_pod_sandbox(sandbox)
    cid = await rt.create_container(sid, config, sandbox)
    await rt.start_container(cid)
    return sid, cid


async def exited(rt: ProcessRuntime, cid: str) -> bool:
    return (await rt.container_status(cid)).state == ContainerState.EXITED


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


async def test_http_server_on_the_pod_ip(rt: ProcessRuntime) -> None:
    server = [sys.executable, "-m", "http.server", "--bind", "$POD_IP", "8080"]
    sid, cid = await run(rt, pod(), container(["sh", "-c", "exec " + " ".join(server)]))
    ip = (await rt.pod_sandbox_status(sid)).network.ip
    assert ip.startswith("127.2.")

    async with httpx.AsyncClient(trust_env=False) as client:

        async def answers() -> httpx.Response | None:
            try:
                return await client.get(f"http://{ip}:8080/", timeout=2)
            except httpx.TransportError:
                return None

        response = await eventually(answers, what="the pod's HTTP server")
    assert response.status_code == 200
    await rt.stop_container(cid, 5)
    assert (await rt.container_status(cid)).state == ContainerState.EXITED


async def test_sigterm_ignoring_group_is_killed_after_the_timeout(rt: ProcessRuntime, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"trap '' TERM; sleep 3600 & echo $$ $! > {pids}; wait"
    _, cid = await run(rt, pod(), container(["sh", "-c", script]))
    await until(lambda: pids.exists() and len(pids.read_text().split()) == 2, what="the pid file")
    shell, child = map(int, pids.read_text().split())

    started = time.monotonic()
    await rt.stop_container(cid, 1)
    assert time.monotonic() - started >= 0.9
    status = await rt.container_status(cid)
    assert (status.state, status.exit_code) == (ContainerState.EXITED, 137)
    assert gone(shell) and gone(child), "the whole process group is killed"


async def test_leftover_processes_die_with_the_main_process(rt: ProcessRuntime, tmp_path: Path) -> None:
    pid_file = tmp_path / "child"
    _, cid = await run(rt, pod(), container(["sh", "-c", f"sleep 3600 & echo $! > {pid_file}; exit 2"]))
    await eventually(lambda: exited(rt, cid))
    assert (await rt.container_status(cid)).exit_code == 2
    assert gone(int(pid_file.read_text()))


async def test_pod_ips_are_loopback_and_released(rt: ProcessRuntime) -> None:
    a = await rt.run_pod_sandbox(pod("a"))
    b = await rt.run_pod_sandbox(pod("b"))
    assert (await rt.pod_sandbox_status(a)).network.ip == "127.2.0.1"
    assert (await rt.pod_sandbox_status(b)).network.ip == "127.2.0.2"
    await rt.remove_pod_sandbox(a)
    c = await rt.run_pod_sandbox(pod("c"))
    assert (await rt.pod_sandbox_status(c)).network.ip == "127.2.0.1"


async def test_host_network_pod(rt: ProcessRuntime) -> None:
    sid, cid = await run(rt, pod(host_network=True), container(["sleep", "3600"]))
    assert (await rt.pod_sandbox_status(sid)).network.ip == ""
    assert (await rt.exec_sync(cid, ["sh", "-c", "echo $POD_IP"])).stdout == b"127.0.0.1\n"


def test_ip_pool_skips_network_and_broadcast_looking_addresses() -> None:
    pool = IPPool("127.1.0.0/23")
    ips = [pool.allocate() for _ in range(508)]
    assert ips[0] == "127.1.0.1" and ips[254] == "127.1.1.1"
    assert not [ip for ip in ips if ip.endswith((".0", ".255"))]
    with pytest.raises(CRIError):
        pool.allocate()
    pool.release("127.1.1.7")
    assert pool.allocate() == "127.1.1.7"


async def test_environment_and_working_dir(rt: ProcessRuntime) -> None:
    config = container(["sleep", "3600"], envs=[KeyValue("GREETING", "hi"), KeyValue("HOSTNAME", "override")])
    sid, cid = await run(rt, pod("envpod"), config)
    out = (await rt.exec_sync(cid, ["sh", "-c", "echo $GREETING $HOSTNAME $POD_IP; pwd"])).stdout.decode().split()
    ip = (await rt.pod_sandbox_status(sid)).network.ip
    root = str(rt.data_dir / "containers" / cid / "root")
    assert out == ["hi", "override", ip, root]
    assert (await rt.exec_sync(cid, ["sh", "-c", "echo $CCMKIT_CONTAINER_ROOT"])).stdout.decode().strip() == root

    _, cid2 = await run(rt, pod("wd"), container(["sleep", "3600"], working_dir="/app/work"))
    assert (
        await rt.exec_sync(cid2, ["pwd"])
    ).stdout.decode().strip() == f"{rt.data_dir}/containers/{cid2}/root/app/work"


async def test_mounts_are_symlinks_under_the_container_root(rt: ProcessRuntime, tmp_path: Path) -> None:
    config_dir = tmp_path / "configmap"
    config_dir.mkdir()
    (config_dir / "app.yaml").write_text("key: value\n")
    empty_dir = tmp_path / "emptydir" / "cache"  # not there yet: the runtime creates it, as for an emptyDir
    config = container(
        ["sleep", "3600"], mounts=[Mount("/etc/config", str(config_dir)), Mount("/var/cache/app", str(empty_dir))]
    )
    _, cid = await run(rt, pod(), config)
    assert (await rt.exec_sync(cid, ["cat", "etc/config/app.yaml"])).stdout == b"key: value\n"
    assert (await rt.exec_sync(cid, ["sh", "-c", "echo hi > $CCMKIT_CONTAINER_ROOT/var/cache/app/f"])).exit_code == 0
    assert (empty_dir / "f").read_text() == "hi\n"
    await rt.remove_container(cid)
    assert (config_dir / "app.yaml").exists(), "removing a container must not delete what its mounts point at"


async def test_exec_sync_timeout(rt: ProcessRuntime) -> None:
    _, cid = await run(rt, pod(), container(["sleep", "3600"]))
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await rt.exec_sync(cid, ["sleep", "30"], timeout=0.5)
    assert time.monotonic() - started < 5


async def test_exec_with_stdin(rt: ProcessRuntime) -> None:
    _, cid = await run(rt, pod(), container(["sleep", "3600"]))
    session = await rt.exec(ExecRequest(cid, ["tr", "a-z", "A-Z"], stdin=True))
    await session.write_stdin(b"shout\n")
    await session.close_stdin()
    assert await session.read() == (STDOUT, b"SHOUT\n")
    assert await collect(session) == (b"", b"", 0)


async def test_start_failure_is_recorded(rt: ProcessRuntime) -> None:
    sandbox = pod()
    sid = await rt.run_pod_sandbox(sandbox)
    cid = await rt.create_container(sid, container(["/no/such/binary"]), sandbox)
    with pytest.raises(CRIError):
        await rt.start_container(cid)
    status = await rt.container_status(cid)
    assert (status.state, status.exit_code, status.reason) == (ContainerState.EXITED, 128, "StartError")


async def test_a_command_is_required(rt: ProcessRuntime) -> None:
    sandbox = pod()
    sid = await rt.run_pod_sandbox(sandbox)
    with pytest.raises(CRIError, match="needs a command"):
        await rt.create_container(sid, container([]), sandbox)


async def test_stats_from_proc(rt: ProcessRuntime) -> None:
    _, cid = await run(rt, pod(), container(["sh", "-c", "while :; do :; done"]))
    await rt.container_stats(cid)  # the first sample has no rate yet

    async def busy() -> bool:
        stats = await rt.container_stats(cid)
        assert stats.cpu is not None and stats.memory is not None
        return bool(stats.cpu.usage_core_nano_seconds and stats.cpu.usage_nano_cores and stats.memory.working_set_bytes)

    await eventually(busy, what="CPU usage of a busy loop to show")


async def test_logs_without_a_log_directory_go_under_the_data_dir(rt: ProcessRuntime) -> None:
    sandbox = pod()
    sid = await rt.run_pod_sandbox(sandbox)
    config = container(["echo", "hello"])
    config.log_path = ""
    cid = await rt.create_container(sid, config, sandbox)
    await rt.start_container(cid)
    await eventually(lambda: exited(rt, cid))
    log_path = Path((await rt.container_status(cid)).log_path)
    assert log_path.is_relative_to(rt.data_dir)
    assert log_path.read_bytes().endswith(b" stdout F hello\n")


async def test_aclose_kills_every_container(tmp_path: Path) -> None:
    runtime = ProcessRuntime(tmp_path / "data", pod_cidr="127.3.0.0/16")
    runtime.images.add(IMAGE)
    pid_file = tmp_path / "pid"
    await run(runtime, pod(), container(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 3600"]))
    await until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the pid file")
    pid = int(pid_file.read_text())
    await runtime.aclose()
    assert gone(pid)
    assert os.listdir(tmp_path / "data" / "containers") == []
