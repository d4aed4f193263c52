"""The API server's storage: the Store contract and the one place a backend is chosen from a spec string.

Callers import the contract from here and open a store with ``await open_store(spec, data_dir)``; they never
import a backend module, so adding one means writing its module and registering its opener in ``_OPENERS``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from controlplane.storage.interface import (
    ConflictError,
    EventType,
    ExpiredError,
    KeyExistsError,
    KeyNotFoundError,
    KeyValue,
    ListResult,
    StorageError,
    Store,
    TryUpdate,
    UnavailableError,
    WatchEvent,
    guaranteed_update,
)

__all__ = [
    "ConflictError",
    "EventType",
    "ExpiredError",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeyValue",
    "ListResult",
    "StorageError",
    "Store",
    "TryUpdate",
    "UnavailableError",
    "WatchEvent",
    "guaranteed_update",
    "open_store",
]

# An opener gets the whole spec (so "etcd://h1:2379,h2:2379" can carry its endpoints) and the data directory.
Opener = Callable[[str, "Path | None"], Awaitable[Store]]


async def _open_memory(spec: str, data_dir: Path | None) -> Store:
    from controlplane.storage.memory import MemoryStore

    return MemoryStore()


async def _open_sqlite(spec: str, data_dir: Path | None) -> Store:
    from controlplane.storage.sqlite import SqliteStore

    if data_dir is None:
        raise ValueError("the sqlite store needs a data directory (it writes <data_dir>/state.db)")
    data_dir.mkdir(parents=True, exist_ok=True)
    return await SqliteStore.open(data_dir / "state.db")


# Spec scheme -> opener. Backends are imported lazily, so an optional backend's dependencies are only needed when
# it is chosen. The etcd backend (controlplane/storage/etcd.py; specs "etcd" and "etcd://host:port[,host:port]")
# registers here with one entry:  "etcd": _open_etcd,  where _open_etcd imports controlplane.storage.etcd.
_OPENERS: dict[str, Opener] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
}


async def open_store(spec: str, data_dir: Path | None) -> Store:
    """Open the store named by ``spec``: "memory", "sqlite" (``data_dir/state.db``), or another registered
    scheme, given bare ("etcd") or with an address ("etcd://host:port")."""
    scheme = spec.partition("://")[0]
    opener = _OPENERS.get(scheme)
    if opener is None:
        choices = ", ".join(repr(name) for name in _OPENERS)
        raise ValueError(f"unknown store {spec!r}; choose one of {choices}")
    return await opener(spec, data_dir)
