"""Helpers for tests that need a real API server: run one in a background thread, write a kubeconfig for it.

Synchronous clients (kubectl in a subprocess, the official `kubernetes` client) and async tests alike can then
talk to a real server over HTTP. The server runs on its own event loop so a test's blocking calls never stall it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import yaml

from controlplane.apiserver import ApiServer, ServerOptions
from controlplane.storage import Store, open_store

T = TypeVar("T")


def kubeconfig_dict(server_url: str, name: str = "ccmkit") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server_url}}],
        "users": [{"name": name, "user": {}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
        "current-context": name,
        "preferences": {},
    }


def write_kubeconfig(path: Path, server_url: str, name: str = "ccmkit") -> Path:
    """Write atomically, so a reader polling for the file never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(kubeconfig_dict(server_url, name), sort_keys=False))
    tmp.replace(path)
    return path


class ThreadedApiServer:
    """An API server on its own event loop in a daemon thread."""

    def __init__(self, store_spec: str = "memory", data_dir: Path | None = None,
                 options: ServerOptions | None = None,
                 store_factory: Callable[[], Awaitable[Store]] | None = None) -> None:
        self.store_spec = store_spec
        self.data_dir = data_dir
        self.options = options or ServerOptions()
        self.store_factory = store_factory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="apiserver", daemon=True)
        self.server: ApiServer | None = None
        self.store: Store | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def run(self, coro: Awaitable[T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def start(self) -> ThreadedApiServer:
        self.thread.start()

        async def boot() -> None:
            if self.store_factory is not None:
                self.store = await self.store_factory()
            else:
                self.store = await open_store(self.store_spec, self.data_dir)
            self.server = ApiServer(self.store, options=self.options)
            await self.server.start()

        self.run(boot())
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self.server is not None:
                await self.server.stop()
            if self.store is not None:
                await self.store.close()

        try:
            self.run(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)

    def write_kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(path, self.url)

    def __enter__(self) -> ThreadedApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
