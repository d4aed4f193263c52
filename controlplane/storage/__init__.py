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
    GuardedCreate,
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
    "GuardedCreate",
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


async def _open_etcd(spec: str, data_dir: Path | None) -> Store:
    """Bare "etcd": a member ccmkit runs under ``data_dir/etcd`` and stops when the store closes, keeping its data.
    "etcd://h:p[,h:p][/prefix][?ca=&cert=&key=&timeout=&compaction_interval=]" (or "etcds://"): an existing
    cluster, checked to answer before the store is returned."""
    try:
        from controlplane.storage import etcd, etcd_process
    except ImportError as exc:
        raise RuntimeError(f"the etcd store needs the {exc.name!r} package: pip install 'ccmkit[etcd]'") from None
    if spec != "etcd":
        return await etcd.open_etcd_store(spec, data_dir)
    if data_dir is None:
        raise ValueError("the etcd store needs a data directory (it runs etcd in <data_dir>/etcd)")
    return await etcd_process.open_local_etcd_store(data_dir)


# Spec scheme -> opener. Backends are imported lazily, so an optional backend's dependencies are only needed when
# it is chosen.
_OPENERS: dict[str, Opener] = {
    "memory": _open_memory,
    "sqlite": _open_sqlite,
    "etcd": _open_etcd,
    "etcds": _open_etcd,
}


async def open_store(spec: str, data_dir: Path | None) -> Store:
    """Open the store named by ``spec``: "memory", "sqlite" (``data_dir/state.db``), "etcd" (a local etcd under
    ``data_dir/etcd``), "etcd://host:port[,host:port]" (an existing cluster), or another registered scheme."""
    scheme = spec.partition("://")[0]
    opener = _OPENERS.get(scheme)
    if opener is None:
        choices = ", ".join(repr(name) for name in _OPENERS)
        raise ValueError(f"unknown store {spec!r}; choose one of {choices}")
    return await opener(spec, data_dir)
