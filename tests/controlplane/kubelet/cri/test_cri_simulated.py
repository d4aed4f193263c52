"""The simulated runtime's own promises: annotation-driven behaviour on a fake clock, a fake exec shell, and scale
without a task per container."""

from __future__ import annotations

import asyncio

import pytest

from controlplane.kubelet.cri.api import (
    ContainerConfig,
    ContainerFilter,
    ContainerMetadata,
    ContainerState,
    CRIError,
    ImageSpec,
    InvalidArgumentError,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    NamespaceMode,
    NamespaceOption,
    PodSandboxConfig,
    PodSandboxMetadata,
)
from controlplane.kubelet.cri.clock import FakeClock
from controlplane.kubelet.cri.simulated import SimulatedRuntime, normalize_image_ref

IMAGE = "ccmkit.local/app:1"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def rt(clock: FakeClock) -> SimulatedRuntime:
    runtime = SimulatedRuntime(clock=clock)
    runtime.images.add(IMAGE)
    return runtime


def pod(name: str = "pod", **annotations: str) -> PodSandboxConfig:
    return PodSandboxConfig(
        PodSandboxMetadata(name, f"uid-{name}", "default"),
        annotations={f"sim.ccmkit.io/{k.replace('_', '-')}": v for k, v in annotations.items()},
    )


def container(name: str = "app", annotations: dict[str, str] | None = None) -> ContainerConfig:
    return ContainerConfig(ContainerMetadata(name), ImageSpec(IMAGE), annotations=annotations or {})


async def run(rt: SimulatedRuntime, sandbox: PodSandboxConfig, config: ContainerConfig | None = None) -> str:
    sid = await rt.run_pod_sandbox(sandbox)
    cid = await rt.create_container(sid, config or container(), sandbox)
    await rt.start_container(cid)
    return cid


async def wait_until(predicate: object, timeout: float = 5.0) -> None:
    """Yield to the loop until ``predicate()`` holds: for tasks that must reach an await on the fake clock."""

    async def poll() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0)

    await asyncio.wait_for(poll(), timeout)


async def state(rt: SimulatedRuntime, cid: str) -> ContainerState:
    return (await rt.container_status(cid)).state


async def test_containers_run_until_stopped_by_default(rt: SimulatedRuntime, clock: FakeClock) -> None:
    cid = await run(rt, pod())
    clock.advance(10 * 365 * 86400)
    assert await state(rt, cid) == ContainerState.RUNNING


async def test_exit_after_seconds_on_the_fake_clock(rt: SimulatedRuntime, clock: FakeClock) -> None:
    cid = await run(rt, pod(exit_after_s="5", exit_code="3"))
    clock.advance(4.9)
    assert await state(rt, cid) == ContainerState.RUNNING
    clock.advance(0.2)
    status = await rt.container_status(cid)
    assert status.state == ContainerState.EXITED
    assert (status.exit_code, status.reason) == (3, "Error")
    assert status.finished_at - status.started_at == 5_000_000_000


async def test_per_container_annotations_override_pod_wide_ones(rt: SimulatedRuntime, clock: FakeClock) -> None:
    sandbox = pod(exit_after_s="1", exit_code="1", **{"sidecar.exit_code": "2", "other.exit_code": "9"})
    sid = await rt.run_pod_sandbox(sandbox)
    ids = {}
    for name, own in (("main", {}), ("sidecar", {}), ("pinned", {"sim.ccmkit.io/exit-code": "3"})):
        ids[name] = await rt.create_container(sid, container(name, own), sandbox)
        await rt.start_container(ids[name])
    clock.advance(1)
    codes = {name: (await rt.container_status(cid)).exit_code for name, cid in ids.items()}
    assert codes == {"main": 1, "sidecar": 2, "pinned": 3}


async def test_unknown_simulation_annotation_is_rejected(rt: SimulatedRuntime) -> None:
    with pytest.raises(InvalidArgumentError):
        await rt.run_pod_sandbox(pod(exit_after="5"))
    sid = await rt.run_pod_sandbox(pod(exit_code="x"))
    with pytest.raises(InvalidArgumentError):
        await rt.create_container(sid, container(), pod(exit_code="x"))


async def test_slow_start(rt: SimulatedRuntime, clock: FakeClock) -> None:
    sandbox = pod(start_ms="2000")
    sid = await rt.run_pod_sandbox(sandbox)
    cid = await rt.create_container(sid, container(), sandbox)
    start = asyncio.create_task(rt.start_container(cid))
    await wait_until(lambda: len(rt.timers) == 1)
    clock.advance(1.9)
    await asyncio.sleep(0)
    assert not start.done() and await state(rt, cid) == ContainerState.CREATED
    clock.advance(0.2)
    await start
    assert await state(rt, cid) == ContainerState.RUNNING


async def test_start_error(rt: SimulatedRuntime) -> None:
    sandbox = pod(start_error="exec format error")
    sid = await rt.run_pod_sandbox(sandbox)
    cid = await rt.create_container(sid, container(), sandbox)
    with pytest.raises(CRIError, match="exec format error"):
        await rt.start_container(cid)
    status = await rt.container_status(cid)
    assert (status.state, status.exit_code, status.reason) == (ContainerState.EXITED, 128, "StartError")


async def test_slow_pull_and_pull_error(rt: SimulatedRuntime, clock: FakeClock) -> None:
    pull = asyncio.create_task(rt.images.pull_image(ImageSpec("slow/image:1"), sandbox_config=pod(pull_ms="3000")))
    await wait_until(lambda: len(rt.timers) == 1)
    clock.advance(2.9)
    await asyncio.sleep(0)
    assert not pull.done()
    clock.advance(0.2)
    assert (await pull).startswith("sha256:")
    assert await rt.images.image_status(ImageSpec("slow/image:1")) is not None
    with pytest.raises(CRIError, match="manifest unknown"):
        await rt.images.pull_image(ImageSpec("bad/image:1"), sandbox_config=pod(pull_error="manifest unknown"))
    assert await rt.images.image_status(ImageSpec("bad/image:1")) is None


async def test_graceful_stop_takes_stop_ms(rt: SimulatedRuntime, clock: FakeClock) -> None:
    cid = await run(rt, pod(stop_ms="1500"))
    stop = asyncio.create_task(rt.stop_container(cid, 30))
    await wait_until(lambda: len(rt.timers) == 1)
    clock.advance(1.4)
    await asyncio.sleep(0)
    assert not stop.done()
    clock.advance(0.2)
    await stop
    status = await rt.container_status(cid)
    assert (status.state, status.exit_code) == (ContainerState.EXITED, 143)


async def test_stop_kills_at_the_timeout(rt: SimulatedRuntime, clock: FakeClock) -> None:
    cid = await run(rt, pod(stop_ms="60000"))
    stop = asyncio.create_task(rt.stop_container(cid, 2))
    await wait_until(lambda: len(rt.timers) == 1)
    clock.advance(2)
    await stop
    status = await rt.container_status(cid)
    assert (status.exit_code, status.reason) == (137, "Error")
    assert status.finished_at - status.started_at == 2_000_000_000


async def test_natural_exit_beats_a_slow_stop(rt: SimulatedRuntime, clock: FakeClock) -> None:
    cid = await run(rt, pod(stop_ms="10000", exit_after_s="1", exit_code="0"))
    stop = asyncio.create_task(rt.stop_container(cid, 30))
    await wait_until(lambda: len(rt.timers) == 1)
    clock.advance(1)
    await stop
    status = await rt.container_status(cid)
    assert (status.exit_code, status.reason) == (0, "Completed")


async def test_ex_exit_simulates_an_oom_kill(rt: SimulatedRuntime) -> None:
    cid = await run(rt, pod())
    rt.ex_exit(cid, 137, reason="OOMKilled")
    status = await rt.container_status(cid)
    assert (status.state, status.exit_code, status.reason) == (ContainerState.EXITED, 137, "OOMKilled")


async def test_stats_follow_annotations_and_the_clock(rt: SimulatedRuntime, clock: FakeClock) -> None:
    cid = await run(rt, pod(cpu_millicores="250", memory_bytes="1048576"))
    clock.advance(4)
    stats = await rt.container_stats(cid)
    assert stats.cpu is not None and stats.memory is not None
    assert stats.cpu.usage_nano_cores == 250_000_000
    assert stats.cpu.usage_core_nano_seconds == 1_000_000_000  # a quarter core for four seconds
    assert stats.memory.working_set_bytes == 1_048_576
    await rt.stop_container(cid, 0)
    stopped = await rt.container_stats(cid)
    assert stopped.cpu is not None and stopped.cpu.usage_nano_cores == 0
    assert stopped.memory is not None and stopped.memory.working_set_bytes == 0


async def test_fake_shell(rt: SimulatedRuntime) -> None:
    cid = await run(rt, pod(files='{"/tmp/healthy": "ok\\n"}'))
    assert await rt.exec_sync(cid, ["cat", "/tmp/healthy"]) == (b"ok\n", b"", 0)
    assert (await rt.exec_sync(cid, ["test", "-f", "/tmp/healthy"])).exit_code == 0
    missing = await rt.exec_sync(cid, ["cat", "/nope"])
    assert missing.exit_code == 1 and b"No such file" in missing.stderr
    # A liveness probe flips when the file goes away, as in the Kubernetes docs' exec probe example.
    assert (await rt.exec_sync(cid, ["sh", "-c", "rm /tmp/healthy && echo gone"])).stdout == b"gone\n"
    assert (await rt.exec_sync(cid, ["cat", "/tmp/healthy"])).exit_code == 1
    rt.ex_write_file(cid, "/tmp/healthy", b"back")
    assert (await rt.exec_sync(cid, ["cat", "/tmp/healthy"])).stdout == b"back"
    script = "echo one > /tmp/f; echo two >> /tmp/f; cat /tmp/f; false || echo recovered; exit 7; echo never"
    assert await rt.exec_sync(cid, ["sh", "-c", script]) == (b"one\ntwo\nrecovered\n", b"", 7)
    assert (await rt.exec_sync(cid, ["sh", "-c", "nosuchcmd"])).exit_code == 127
    with pytest.raises(CRIError, match="executable file not found"):
        await rt.exec_sync(cid, ["nosuchcmd"])
    assert (await rt.exec_sync(cid, ["hostname"])).stdout == b"pod\n"


async def test_ips_are_released_on_remove_and_host_network_has_none(rt: SimulatedRuntime) -> None:
    a = await rt.run_pod_sandbox(pod("a"))
    b = await rt.run_pod_sandbox(pod("b"))
    ip_a = (await rt.pod_sandbox_status(a)).network.ip
    assert ip_a == "10.244.0.1" and (await rt.pod_sandbox_status(b)).network.ip == "10.244.0.2"
    await rt.remove_pod_sandbox(a)
    c = await rt.run_pod_sandbox(pod("c"))
    assert (await rt.pod_sandbox_status(c)).network.ip == ip_a
    host = pod("host")
    host.linux = LinuxPodSandboxConfig(
        security_context=LinuxSandboxSecurityContext(namespace_options=NamespaceOption(network=NamespaceMode.NODE))
    )
    hid = await rt.run_pod_sandbox(host)
    assert (await rt.pod_sandbox_status(hid)).network.ip == ""


async def test_ten_thousand_containers_with_one_timer_heap(rt: SimulatedRuntime, clock: FakeClock) -> None:
    tasks_before = len(asyncio.all_tasks())
    sandboxes = []
    for i in range(1000):
        sandbox = pod(f"p{i}", exit_after_s=str(1 + i % 10))
        sid = await rt.run_pod_sandbox(sandbox)
        sandboxes.append(sid)
        for j in range(10):
            cid = await rt.create_container(sid, container(f"c{j}"), sandbox)
            await rt.start_container(cid)
    assert len(asyncio.all_tasks()) == tasks_before, "no task per container"
    assert len(rt.timers) == 10_000  # one heap entry per scheduled exit
    assert len(await rt.list_containers(ContainerFilter(state=ContainerState.RUNNING))) == 10_000
    clock.advance(5)
    assert len(await rt.list_containers(ContainerFilter(state=ContainerState.EXITED))) == 5_000
    for sid in sandboxes:
        await rt.remove_pod_sandbox(sid)
    assert await rt.list_containers() == []


def test_image_reference_normalisation() -> None:
    assert normalize_image_ref("busybox") == "docker.io/library/busybox:latest"
    assert normalize_image_ref("library/busybox:1.36") == "docker.io/library/busybox:1.36"
    assert normalize_image_ref("ccmkit.local/app") == "ccmkit.local/app:latest"
    assert normalize_image_ref("localhost:5000/app:2") == "localhost:5000/app:2"
    digest = "sha256:" + "a" * 64
    assert normalize_image_ref(f"quay.io/x/y@{digest}") == f"quay.io/x/y@{digest}"


async def test_images_resolve_by_tag_digest_and_id(rt: SimulatedRuntime) -> None:
    ref = await rt.images.pull_image(ImageSpec("busybox"))
    image = await rt.images.image_status(ImageSpec("docker.io/library/busybox:latest"))
    assert image is not None and image.id == ref
    assert await rt.images.image_status(ImageSpec(ref)) == image
    assert await rt.images.image_status(ImageSpec(image.repo_digests[0])) == image
