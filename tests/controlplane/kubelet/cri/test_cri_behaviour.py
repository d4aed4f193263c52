"""One CRI behaviour suite, run against every runtime: what a kubelet may rely on, whichever runtime it drives."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cri_harness import IGNORES_SIGTERM, LONG_RUNNING, PRINTS, CRIHarness, exits_with

from controlplane.kubelet.cri import crilog
from controlplane.kubelet.cri.api import (
    RUNTIME_READY,
    ContainerFilter,
    ContainerState,
    CRIError,
    DeadlineExceededError,
    ExecRequest,
    ImageFilter,
    ImageSpec,
    NotFoundError,
    PodSandboxFilter,
    PodSandboxState,
    collect,
)
from controlplane.kubelet.cri.containerd_testing import BUSYBOX_IMAGE, EXTRA_IMAGE


async def test_version_and_status(cri: CRIHarness) -> None:
    version = await cri.runtime.version()
    assert version.runtime_api_version == "v1"
    assert version.runtime_name
    status = await cri.runtime.status()
    ready = status.status.condition(RUNTIME_READY)
    assert ready is not None and ready.status


async def test_sandbox_lifecycle(cri: CRIHarness) -> None:
    config = cri.sandbox_config("web", labels={"app": "web"}, annotations={"note": "x"})
    sid = await cri.run_sandbox(config)

    status = await cri.runtime.pod_sandbox_status(sid)
    assert status.state == PodSandboxState.SANDBOX_READY
    assert status.metadata.name == "web" and status.metadata.uid == config.metadata.uid
    assert status.metadata.namespace == "default"
    assert status.labels["app"] == "web" and status.annotations["note"] == "x"
    assert status.network.ip, "a sandbox has an IP once RunPodSandbox returns"
    assert status.created_at > 0
    assert sid in [s.id for s in await cri.runtime.list_pod_sandbox()]

    await cri.runtime.stop_pod_sandbox(sid)
    assert (await cri.runtime.pod_sandbox_status(sid)).state == PodSandboxState.SANDBOX_NOTREADY
    await cri.runtime.stop_pod_sandbox(sid)  # idempotent

    await cri.runtime.remove_pod_sandbox(sid)
    with pytest.raises(NotFoundError):
        await cri.runtime.pod_sandbox_status(sid)
    assert sid not in [s.id for s in await cri.runtime.list_pod_sandbox()]
    await cri.runtime.remove_pod_sandbox(sid)  # idempotent


async def test_sandboxes_get_distinct_ips(cri: CRIHarness) -> None:
    a = await cri.run_sandbox(cri.sandbox_config("a"))
    b = await cri.run_sandbox(cri.sandbox_config("b"))
    ip_a = (await cri.runtime.pod_sandbox_status(a)).network.ip
    ip_b = (await cri.runtime.pod_sandbox_status(b)).network.ip
    assert ip_a != ip_b


async def test_container_lifecycle(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    config = cri.container_config("app", LONG_RUNNING, labels={"tier": "front"})
    cid = await cri.runtime.create_container(sid, config, sandbox)

    created = await cri.runtime.container_status(cid)
    assert created.state == ContainerState.CONTAINER_CREATED
    assert created.metadata.name == "app"
    assert created.labels["tier"] == "front"
    assert created.image is not None
    assert created.image_ref.startswith("sha256:")
    assert created.created_at > 0 and created.started_at == 0

    await cri.runtime.start_container(cid)
    running = await cri.runtime.container_status(cid)
    assert running.state == ContainerState.CONTAINER_RUNNING
    assert running.started_at >= running.created_at
    with pytest.raises(CRIError):
        await cri.runtime.start_container(cid)  # only a CREATED container starts

    await cri.runtime.stop_container(cid, 10)
    stopped = await cri.runtime.container_status(cid)
    assert stopped.state == ContainerState.CONTAINER_EXITED
    assert stopped.finished_at >= stopped.started_at
    await cri.runtime.stop_container(cid, 10)  # stopping an exited container is fine

    await cri.runtime.remove_container(cid)
    with pytest.raises(NotFoundError):
        await cri.runtime.container_status(cid)
    await cri.runtime.remove_container(cid)  # idempotent


async def test_container_exits_with_code(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    failed = await cri.run_container(sid, sandbox, cri.container_config("fails", exits_with(3)))
    done = await cri.run_container(sid, sandbox, cri.container_config("done", exits_with(0)))

    status = await cri.wait_state(failed, ContainerState.CONTAINER_EXITED)
    assert status.exit_code == 3
    assert status.reason == "Error"
    # Both set; not ordered: containerd stamps started_at after a quick process may already have exited.
    assert status.started_at > 0 and status.finished_at > 0

    status = await cri.wait_state(done, ContainerState.CONTAINER_EXITED)
    assert status.exit_code == 0
    assert status.reason == "Completed"


async def test_graceful_stop_within_timeout(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("app", LONG_RUNNING))
    await cri.wait_log(cid, b"ready")
    started = time.monotonic()
    await cri.runtime.stop_container(cid, 30)
    assert time.monotonic() - started < 10, "a container that handles SIGTERM must not wait for the timeout"
    status = await cri.runtime.container_status(cid)
    assert status.state == ContainerState.CONTAINER_EXITED
    assert status.exit_code == 0


async def test_stop_kills_after_timeout(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("stubborn", IGNORES_SIGTERM))
    await cri.wait_log(cid, b"ready")
    started = time.monotonic()
    await cri.runtime.stop_container(cid, 1)
    elapsed = time.monotonic() - started
    status = await cri.runtime.container_status(cid)
    assert status.state == ContainerState.CONTAINER_EXITED
    assert status.exit_code == 137, "killed by SIGKILL"
    assert 0.9 <= elapsed < 15


async def test_stop_pod_sandbox_stops_its_containers(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("app", LONG_RUNNING))
    await cri.runtime.stop_pod_sandbox(sid)
    assert (await cri.runtime.container_status(cid)).state == ContainerState.CONTAINER_EXITED
    await cri.runtime.remove_pod_sandbox(sid)
    with pytest.raises(NotFoundError):
        await cri.runtime.container_status(cid)


async def test_logs_in_cri_format(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("talker", PRINTS))
    status = await cri.wait_state(cid, ContainerState.CONTAINER_EXITED)
    assert status.log_path == str(Path(sandbox.log_directory) / "talker" / "0.log")

    lines = Path(status.log_path).read_bytes().splitlines()
    entries = [crilog.parse_line(line) for line in lines]
    assert {(e.stream, e.content) for e in entries} >= {("stdout", b"hello"), ("stderr", b"oops")}
    assert all(not e.partial for e in entries)
    assert all(e.timestamp.year >= 2020 for e in entries)


async def test_exec_sync(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("app", LONG_RUNNING))

    stdout, stderr, exit_code = await cri.runtime.exec_sync(cid, ["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert (stdout, stderr, exit_code) == (b"out\n", b"err\n", 3)
    assert await cri.runtime.exec_sync(cid, ["true"], 10) == (b"", b"", 0)
    assert (await cri.runtime.exec_sync(cid, ["false"], 10)).exit_code == 1
    assert (await cri.runtime.exec_sync(cid, ["echo", "a", "b"], 10)).stdout == b"a b\n"


async def test_exec_sync_timeout(cri: CRIHarness) -> None:
    if cri.kind.endswith("simulated"):
        pytest.skip("the simulated shell has no sleep: nothing it runs can take time")
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("app", LONG_RUNNING))
    started = time.monotonic()
    with pytest.raises(DeadlineExceededError):
        await cri.runtime.exec_sync(cid, ["sleep", "30"], 1)
    assert time.monotonic() - started < 10


async def test_exec_sync_in_stopped_container_fails(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("done", exits_with(0)))
    await cri.wait_state(cid, ContainerState.CONTAINER_EXITED)
    with pytest.raises(CRIError):
        await cri.runtime.exec_sync(cid, ["true"], 10)


async def test_exec_streams_output_and_exit_code(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("app", LONG_RUNNING))
    session = await cri.runtime.exec(ExecRequest(cid, ["sh", "-c", "echo streamed; echo warn >&2; exit 4"]))
    try:
        stdout, stderr, exit_code = await collect(session)
    finally:
        await session.close()
    assert (stdout, stderr, exit_code) == (b"streamed\n", b"warn\n", 4)


async def test_missing_container_is_not_found(cri: CRIHarness) -> None:
    with pytest.raises(NotFoundError):
        await cri.runtime.container_status("0" * 64)
    with pytest.raises(NotFoundError):
        await cri.runtime.pod_sandbox_status("0" * 64)


async def test_list_filters(cri: CRIHarness) -> None:
    cfg_a = cri.sandbox_config("a", labels={"app": "a"})
    cfg_b = cri.sandbox_config("b", labels={"app": "b"})
    a = await cri.run_sandbox(cfg_a)
    b = await cri.run_sandbox(cfg_b)
    a1 = await cri.run_container(a, cfg_a, cri.container_config("one", LONG_RUNNING, labels={"role": "main"}))
    a2 = await cri.run_container(a, cfg_a, cri.container_config("two", exits_with(0), labels={"role": "side"}))
    b1 = await cri.run_container(b, cfg_b, cri.container_config("one", LONG_RUNNING, labels={"role": "main"}))
    await cri.wait_state(a2, ContainerState.CONTAINER_EXITED)
    ours = {a1, a2, b1}

    async def ids(flt: ContainerFilter | None = None) -> set[str]:
        return {c.id for c in await cri.runtime.list_containers(flt)} & ours  # a shared runtime may hold more

    assert await ids() == ours
    assert await ids(ContainerFilter(pod_sandbox_id=a)) == {a1, a2}
    assert await ids(ContainerFilter(state=ContainerState.CONTAINER_RUNNING)) == {a1, b1}
    assert await ids(ContainerFilter(state=ContainerState.CONTAINER_EXITED)) == {a2}
    assert await ids(ContainerFilter(label_selector={"role": "main"})) == {a1, b1}
    assert await ids(ContainerFilter(pod_sandbox_id=b, label_selector={"role": "main"})) == {b1}
    assert await ids(ContainerFilter(id=a2)) == {a2}

    listed = {c.id: c for c in await cri.runtime.list_containers(ContainerFilter(pod_sandbox_id=a))}
    assert listed[a1].pod_sandbox_id == a and listed[a1].metadata.name == "one"
    assert listed[a1].state == ContainerState.CONTAINER_RUNNING

    sandboxes = {s.id for s in await cri.runtime.list_pod_sandbox(PodSandboxFilter(label_selector={"app": "b"}))}
    assert b in sandboxes and a not in sandboxes
    assert {s.id for s in await cri.runtime.list_pod_sandbox(PodSandboxFilter(id=a))} == {a}
    await cri.runtime.stop_pod_sandbox(b)
    not_ready = {s.id for s in await cri.runtime.list_pod_sandbox(PodSandboxFilter(state=PodSandboxState.NOTREADY))}
    assert b in not_ready and a not in not_ready


async def test_container_stats(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    cid = await cri.run_container(sid, sandbox, cri.container_config("app", LONG_RUNNING))
    stats = await cri.runtime.container_stats(cid)
    assert stats.attributes.id == cid and stats.attributes.metadata.name == "app"
    assert stats.cpu is not None and stats.cpu.timestamp > 0
    assert stats.memory is not None
    assert cid in {s.attributes.id for s in await cri.runtime.list_container_stats()}


async def test_image_status_and_list(cri: CRIHarness) -> None:
    image = await cri.images.image_status(ImageSpec(BUSYBOX_IMAGE))
    assert image is not None
    assert image.id.startswith("sha256:")
    assert BUSYBOX_IMAGE in image.repo_tags
    assert image.id in {i.id for i in await cri.images.list_images()}
    filtered = [i.id for i in await cri.images.list_images(ImageFilter(ImageSpec(BUSYBOX_IMAGE)))]
    if cri.kind == "containerd":
        assert image.id in filtered  # containerd 1.6 ignores ListImages' filter
    else:
        assert filtered == [image.id]
    assert await cri.images.image_status(ImageSpec("ccmkit.local/never-seen:1")) is None


async def test_image_remove(cri: CRIHarness) -> None:
    name = EXTRA_IMAGE
    await cri.ensure_image(name)
    image = await cri.images.image_status(ImageSpec(name))
    assert image is not None and name in image.repo_tags
    await cri.images.remove_image(ImageSpec(name))
    assert await cri.images.image_status(ImageSpec(name)) is None
    assert name not in {t for i in await cri.images.list_images() for t in i.repo_tags}
    await cri.images.remove_image(ImageSpec(name))  # idempotent


async def test_image_pull(cri: CRIHarness) -> None:
    if not cri.can_pull:
        pytest.skip("no image registry reachable from this runtime here; images are imported instead")
    ref = await cri.images.pull_image(ImageSpec("ccmkit.local/pulled:v1"))
    image = await cri.images.image_status(ImageSpec("ccmkit.local/pulled:v1"))
    assert image is not None and image.id == ref
    # Docker's normalisation: a bare name is docker.io/library/NAME:latest.
    await cri.images.pull_image(ImageSpec("alpine"))
    alpine = await cri.images.image_status(ImageSpec("docker.io/library/alpine:latest"))
    assert alpine is not None and alpine.repo_tags == ["docker.io/library/alpine:latest"]


async def test_create_needs_the_image(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    config = cri.container_config("app", LONG_RUNNING)
    config.image = ImageSpec("ccmkit.local/not-pulled:1")
    with pytest.raises(CRIError):
        await cri.runtime.create_container(sid, config, sandbox)


async def test_container_name_is_reserved_per_attempt(cri: CRIHarness) -> None:
    sandbox = cri.sandbox_config()
    sid = await cri.run_sandbox(sandbox)
    await cri.runtime.create_container(sid, cri.container_config("app", LONG_RUNNING), sandbox)
    with pytest.raises(CRIError):
        await cri.runtime.create_container(sid, cri.container_config("app", LONG_RUNNING), sandbox)
    await cri.runtime.create_container(sid, cri.container_config("app", LONG_RUNNING, attempt=1), sandbox)
