"""open_store: the one place a backend is chosen from a spec string."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.storage import open_store
from controlplane.storage.memory import MemoryStore
from controlplane.storage.sqlite import SqliteStore


async def test_memory_spec_opens_a_memory_store() -> None:
    store = await open_store("memory", None)
    try:
        assert type(store) is MemoryStore
    finally:
        await store.close()


async def test_sqlite_spec_opens_state_db_in_the_data_dir(tmp_path: Path) -> None:
    store = await open_store("sqlite", tmp_path / "data")
    try:
        assert isinstance(store, SqliteStore)
        await store.create("/registry/a", b"x")
        assert (tmp_path / "data" / "state.db").exists()
    finally:
        await store.close()


async def test_sqlite_spec_needs_a_data_dir() -> None:
    with pytest.raises(ValueError, match="data directory"):
        await open_store("sqlite", None)


async def test_unknown_spec_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown store 'mysql://db'.*'memory', 'sqlite'"):
        await open_store("mysql://db", None)
