"""Fixtures shared by every test package: a real API server over HTTP, a kubeconfig for it, kubectl, a local etcd."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controlplane.apiserver import ServerOptions
from controlplane.storage.etcd_process import LocalEtcd
from controlplane.testing import ThreadedApiServer


# The stores a test marked `every_store` runs its `apiserver` on. The acceptance tests promise the same API on
# every backend, so a representative subset of them (CRUD, watch and resume, 410, pagination, conflicts, kubectl)
# runs on each; the rest run on memory only, which keeps the suite's time in check.
EVERY_STORE = ("memory", "sqlite", "etcd")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "every_store: run the test's `apiserver` on each of " + ", ".join(EVERY_STORE))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("every_store") is None or "apiserver" not in metafunc.fixturenames:
        return
    params = []
    for spec in EVERY_STORE:
        marks = []
        if spec == "etcd":
            marks = [pytest.mark.etcd, pytest.mark.skipif(shutil.which("etcd") is None,
                                                          reason="the etcd binary is not installed "
                                                                 "(apt-get install etcd-server)")]
        params.append(pytest.param(spec, marks=marks, id=spec))
    metafunc.parametrize("apiserver", params, indirect=True)


def _dump_asyncio_tasks(test: str) -> None:
    """Print every task of every running event loop with its stack: pytest-timeout's thread dump only shows a hung
    async test's loop waiting in select, not which await never returned."""
    out = sys.__stderr__
    assert out is not None
    for loop in [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]:
        if not loop.is_running():
            continue
        print(f"\n~~~~~~~~ asyncio tasks of a running loop while {test} is hanging ~~~~~~~~", file=out)
        for task in list(asyncio.all_tasks(loop)):
            task.print_stack(limit=12, file=out)
    out.flush()


@pytest.fixture(autouse=True)
def _dump_tasks_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)
    if timeout <= 10:
        yield
        return
    timer = threading.Timer(timeout - 5, _dump_asyncio_tasks, args=(request.node.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture
async def etcd(tmp_path: Path) -> AsyncIterator[LocalEtcd]:
    """One etcd member on loopback ports under the test's tmp_path (the test skips itself when etcd is missing)."""
    member = LocalEtcd(tmp_path / "etcd")
    await member.start()
    try:
        yield member
    finally:
        await member.stop()


@pytest.fixture
def apiserver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ThreadedApiServer]:
    """A fresh API server with short bookmark intervals so tests can see them: on a memory store, or on each store
    in EVERY_STORE for a test marked `every_store` (sqlite and a local etcd under the test's tmp_path)."""
    spec = getattr(request, "param", "memory")
    server = ThreadedApiServer(spec, data_dir=tmp_path / f"apiserver-{spec}",
                               options=ServerOptions(bookmark_interval=0.5))
    with server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: ThreadedApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


class Kubectl:
    """The kubectl on PATH, pointed at one server."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}

    def run(self, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, env=self.env,
                              timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def __call__(self, *args: str, **kwargs: object) -> str:
        return self.run(*args, **kwargs).stdout  # type: ignore[arg-type]

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["kubectl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self.env)


@pytest.fixture
def kubectl(kubeconfig: Path) -> Kubectl:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    return Kubectl(kubeconfig)
