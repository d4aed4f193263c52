"""Fixtures for the CRI tests: every runtime behind one harness (cri_harness.py), so one suite runs on all.

``cri`` is parametrized over the simulated and process runtimes in process, both again over our own gRPC server
through the remote client, and a real containerd (started once per session) through the same client.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from cri_harness import CRIHarness

from controlplane.kubelet.cri.api import ImageSpec
from controlplane.kubelet.cri.containerd_testing import BUSYBOX_IMAGE, Containerd, missing_tools


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "containerd: needs containerd, runc, umoci, busybox-static (scripts/cri/install.sh)"
    )


@pytest.fixture(scope="session")
def containerd_daemon() -> Iterator[Containerd]:
    """One containerd for the session. Skipped where it is not installed, unless CCMKIT_REQUIRE_CONTAINERD=1."""
    if missing := missing_tools():
        if os.environ.get("CCMKIT_REQUIRE_CONTAINERD") == "1":
            pytest.fail("containerd tests required but missing: " + ", ".join(missing))
        pytest.skip("containerd not installed (scripts/cri/install.sh): missing " + ", ".join(missing))
    ctd = Containerd()
    ctd.start()
    try:
        yield ctd
    finally:
        ctd.stop()


RUNTIME_KINDS = ["simulated", "process", "remote-simulated", "remote-process", "containerd"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Marked here rather than with pytest.param(marks=...): that would use the marker before pytest_configure
    # above has registered it.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("cri") == "containerd":
            item.add_marker(pytest.mark.containerd)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths are limited to 107 bytes, pytest's tmp_path is long."""
    path = Path(tempfile.mkdtemp(prefix="cri-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=RUNTIME_KINDS)
async def cri(request: pytest.FixtureRequest, tmp_path: Path, short_dir: Path) -> AsyncIterator[CRIHarness]:
    from controlplane.kubelet.cri.process import ProcessRuntime
    from controlplane.kubelet.cri.simulated import SimulatedRuntime

    kind: str = request.param
    closers: list[Callable[[], Awaitable[None]]] = []
    if kind == "containerd":
        from controlplane.kubelet.cri.remote import RemoteRuntime

        daemon: Containerd = request.getfixturevalue("containerd_daemon")
        client = RemoteRuntime(daemon.endpoint)
        closers.append(client.aclose)
        harness = CRIHarness(kind, client, client, tmp_path / "logs", can_pull=False, containerd=daemon)
    else:
        local: SimulatedRuntime | ProcessRuntime
        if kind.endswith("simulated"):
            local = SimulatedRuntime()
        else:
            local = ProcessRuntime(tmp_path / "process", pod_cidr="127.1.0.0/16")
        closers.append(local.aclose)
        await local.images.pull_image(ImageSpec(BUSYBOX_IMAGE))
        if kind.startswith("remote-"):
            from controlplane.kubelet.cri.remote import RemoteRuntime
            from controlplane.kubelet.cri.server import serve

            server = await serve(local, local.images, short_dir / "cri.sock")
            closers.insert(0, server.stop)
            client = RemoteRuntime(server.endpoint)
            closers.insert(0, client.aclose)
            harness = CRIHarness(kind, client, client, tmp_path / "logs")
        else:
            harness = CRIHarness(kind, local, local.images, tmp_path / "logs")
    try:
        yield harness
    finally:
        try:
            await harness.cleanup()
        finally:
            for close in closers:
                await close()
