"""`ccmkit up` as a library: open the store, start the API server, start the other components, write a kubeconfig.

Composition lives here, in one place, so the CLI, the pytest fixtures and embedding programs all get the same
cluster. Each component talks to the API server over HTTP through `controlplane.client` exactly as it would in its
own process; running them in this process is only a deployment choice (like k3s).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from controlplane.apiserver import ApiServer, ServerOptions
from controlplane.storage import Store, open_store
from controlplane.testing import write_kubeconfig

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """$CCMKIT_DATA_DIR, else ~/.ccmkit, else ./.ccmkit when there is no usable home directory."""
    env = os.environ.get("CCMKIT_DATA_DIR")
    if env:
        return Path(env)
    home = Path.home() if os.environ.get("HOME") else None
    if home is not None and os.access(home, os.W_OK):
        return home / ".ccmkit"
    return Path.cwd() / ".ccmkit"


class Component(Protocol):
    """A long-running part of the cluster (scheduler, controller manager, kubelets, CCM)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# A factory gets the API server URL and the data dir, and returns a component to start.
ComponentFactory = Callable[[str, Path], Awaitable[Component]]


@dataclass
class ClusterConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 6443
    store: str = "sqlite"
    options: ServerOptions = field(default_factory=ServerOptions)
    components: list[ComponentFactory] = field(default_factory=list)


class Cluster:
    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.apiserver: ApiServer | None = None
        self.components: list[Component] = []
        self.ready_in: float = 0.0  # until the API server answered and the kubeconfig was written
        self.started_in: float = 0.0  # until every component had started

    @property
    def url(self) -> str:
        assert self.apiserver is not None
        return self.apiserver.url

    @property
    def kubeconfig(self) -> Path:
        return self.config.data_dir / "kubeconfig"

    async def start(self) -> None:
        began = time.perf_counter()
        cfg = self.config
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = await open_store(cfg.store, cfg.data_dir)
        try:
            self.apiserver = ApiServer(self.store, host=cfg.host, port=cfg.port, options=cfg.options)
            await self.apiserver.start()
            # The kubeconfig means "the API server answers", as upstream's readyz: clients may start right away
            # while controllers, the scheduler and kubelets sync their informers (they are level-based).
            write_kubeconfig(self.kubeconfig, self.url)
            self.ready_in = time.perf_counter() - began
            for factory in cfg.components:
                component = await factory(self.url, cfg.data_dir)
                await component.start()
                self.components.append(component)
        except BaseException:
            # Whatever failed, close what was opened: a store may own a process (`--store etcd` runs etcd).
            await self.stop()
            raise
        self.started_in = time.perf_counter() - began

    async def stop(self) -> None:
        """Stop the components, the API server and the store; safe to call again, or after a failed start."""
        for component in reversed(self.components):
            try:
                await component.stop()
            except Exception:  # noqa: BLE001 - stop the rest even if one component fails to stop
                log.exception("stopping %r failed", component)
        self.components.clear()
        apiserver, self.apiserver = self.apiserver, None
        store, self.store = self.store, None
        try:
            if apiserver is not None:
                await apiserver.stop()
        finally:
            if store is not None:
                await store.close()

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
