"""The harness behind the CRI behaviour suite: one face for every runtime, and workloads each runtime can act out.

Workloads are given twice, as a command for the runtimes that run something and as ``sim.ccmkit.io/*``
annotations for the simulated one, so every test states one behaviour and each runtime acts it out its own way.
(A module of its own rather than conftest.py, so test modules can import it by a name no other conftest shares.)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from controlplane.kubelet.cri import crilog
from controlplane.kubelet.cri.api import (
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    ContainerStatus,
    ImageService,
    ImageSpec,
    NotFoundError,
    PodSandboxConfig,
    PodSandboxMetadata,
    RuntimeService,
)
from controlplane.kubelet.cri.containerd_testing import BUSYBOX_IMAGE, Containerd

T = TypeVar("T")

# Workloads: (command for real runtimes, annotations for the simulated one).
# `sleep & wait` rather than a bare sleep: a trapped signal interrupts `wait` at once, and as PID 1 in a container
# (containerd) a process without a handler would ignore SIGTERM altogether.
# Both print "ready" once their trap is set, so a test can wait for that before it sends a signal.
LONG_RUNNING = (
    ["sh", "-c", "trap 'exit 0' TERM; echo ready; sleep 3600 & wait"],
    {"sim.ccmkit.io/stop-exit-code": "0", "sim.ccmkit.io/stdout": "ready"},
)
IGNORES_SIGTERM = (
    ["sh", "-c", "trap '' TERM; echo ready; sleep 3600 & wait"],
    {"sim.ccmkit.io/stop-ms": "3600000", "sim.ccmkit.io/stdout": "ready"},
)
PRINTS = (
    ["sh", "-c", "echo hello; echo oops >&2"],
    {"sim.ccmkit.io/stdout": "hello", "sim.ccmkit.io/stderr": "oops", "sim.ccmkit.io/exit-after-s": "0"},
)


def exits_with(code: int) -> tuple[list[str], dict[str, str]]:
    return ["sh", "-c", f"exit {code}"], {"sim.ccmkit.io/exit-after-s": "0", "sim.ccmkit.io/exit-code": str(code)}


async def eventually(check: Callable[[], Awaitable[T | None]], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll an async check until it returns something truthy; the runtimes have no change feed to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def until(predicate: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> None:
    """``eventually`` for a plain (non-async) predicate, e.g. a file appearing."""

    async def check() -> bool:
        return bool(predicate())

    await eventually(check, timeout, what)


@dataclass
class CRIHarness:
    kind: str
    runtime: RuntimeService
    images: ImageService
    log_root: Path
    can_pull: bool = True  # no registry for containerd here
    containerd: Containerd | None = None
    sandboxes: list[str] = field(default_factory=list)

    def sandbox_config(
        self, name: str = "pod", labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
    ) -> PodSandboxConfig:
        uid = uuid.uuid4().hex
        return PodSandboxConfig(
            metadata=PodSandboxMetadata(name=name, uid=uid, namespace="default"),
            hostname=name,
            log_directory=str(self.log_root / f"default_{name}_{uid}"),
            labels=labels or {},
            annotations=annotations or {},
        )

    def container_config(
        self,
        name: str,
        workload: tuple[list[str], dict[str, str]] = LONG_RUNNING,
        labels: dict[str, str] | None = None,
        attempt: int = 0,
    ) -> ContainerConfig:
        command, annotations = workload
        return ContainerConfig(
            metadata=ContainerMetadata(name=name, attempt=attempt),
            image=ImageSpec(BUSYBOX_IMAGE),
            command=list(command),
            labels=labels or {},
            annotations=dict(annotations),
            log_path=f"{name}/{attempt}.log",
        )

    async def run_sandbox(self, config: PodSandboxConfig) -> str:
        sid = await self.runtime.run_pod_sandbox(config)
        self.sandboxes.append(sid)
        return sid

    async def run_container(self, sid: str, sandbox: PodSandboxConfig, config: ContainerConfig) -> str:
        cid = await self.runtime.create_container(sid, config, sandbox)
        await self.runtime.start_container(cid)
        return cid

    async def wait_state(self, cid: str, state: ContainerState, timeout: float = 15.0) -> ContainerStatus:
        async def check() -> ContainerStatus | None:
            status = await self.runtime.container_status(cid)
            return status if status.state == state else None

        return await eventually(check, timeout, f"container {cid[:12]} to be {state.name}")

    async def wait_log(self, cid: str, content: bytes, timeout: float = 15.0) -> None:
        """Wait until the container has logged a line with exactly ``content``."""
        log_path = Path((await self.runtime.container_status(cid)).log_path)

        async def check() -> bool:
            try:
                data = log_path.read_bytes()
            except FileNotFoundError:
                return False
            return any(crilog.parse_line(line).content == content for line in data.splitlines())

        await eventually(check, timeout, f"container {cid[:12]} to log {content!r}")

    async def ensure_image(self, name: str) -> None:
        """Make EXTRA_IMAGE present: pulled where there is something to pull from, else imported."""
        if self.can_pull:
            await self.images.pull_image(ImageSpec(name))
        else:
            assert self.containerd is not None
            await asyncio.to_thread(self.containerd.import_image, name)

    async def cleanup(self) -> None:
        for sid in self.sandboxes:
            try:
                await self.runtime.stop_pod_sandbox(sid)
            except NotFoundError:
                continue  # containerd answers NotFound for a sandbox the test already removed
            await self.runtime.remove_pod_sandbox(sid)
