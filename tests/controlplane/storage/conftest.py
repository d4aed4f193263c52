"""The ``store`` fixture: every contract test runs once per backend registered in STORE_FACTORIES.

A backend is added with one line: a factory (an async context manager that yields an open Store under a temporary
directory and cleans up after it) and the marks its tests need, e.g. a skip when a server binary is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from controlplane.storage import Store
from controlplane.storage.etcd_process import local_etcd_store
from controlplane.storage.memory import MemoryStore
from controlplane.storage.sqlite import SqliteStore


def needs_binary(name: str) -> pytest.MarkDecorator:
    """Skip a backend whose server binary is not installed on this machine."""
    return pytest.mark.skipif(shutil.which(name) is None, reason=f"{name} is not on PATH")


@dataclass(frozen=True)
class Backend:
    factory: Callable[[Path], AbstractAsyncContextManager[Store]]
    marks: tuple[pytest.MarkDecorator, ...] = ()


@asynccontextmanager
async def memory_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = MemoryStore()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def sqlite_store(tmp_path: Path) -> AsyncIterator[Store]:
    store = await SqliteStore.open(tmp_path / "state.db")
    try:
        yield store
    finally:
        await store.close()


STORE_FACTORIES: dict[str, Backend] = {
    "memory": Backend(memory_store),
    "sqlite": Backend(sqlite_store),
    "etcd": Backend(local_etcd_store, marks=(pytest.mark.etcd, needs_binary("etcd"))),
}


@pytest.fixture(params=[pytest.param(name, marks=b.marks) for name, b in STORE_FACTORIES.items()])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with STORE_FACTORIES[request.param].factory(tmp_path) as opened:
        yield opened
