"""Store throughput, run on demand: creates/s (1 and 32 concurrent writers), gets/s and list latency for the memory
and sqlite backends, beside raw sqlite3 inserts (one commit per insert, and one transaction for all) so the cost
of the Store layer and the gain of group commit can be read off one table.

Usage: python bench/store_bench.py [--n 5000]   (about 10 s)
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controlplane.storage import Store  # noqa: E402
from controlplane.storage.memory import MemoryStore  # noqa: E402
from controlplane.storage.sqlite import SqliteStore  # noqa: E402

VALUE = b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},"spec":{}}' * 8  # ~700 B


@dataclass
class Row:
    backend: str
    operation: str
    count: int
    seconds: float

    def rate(self) -> str:
        return f"{self.count / self.seconds:>12,.0f}/s"

    def latency(self) -> str:
        return f"{self.seconds / self.count * 1e3:>9.3f} ms"


async def timed(backend: str, operation: str, count: int, work: Callable[[], Awaitable[None]]) -> Row:
    start = time.perf_counter()
    await work()
    return Row(backend, operation, count, time.perf_counter() - start)


async def bench_store(name: str, open_store: Callable[[Path], Awaitable[Store]], n: int, tmp: Path) -> list[Row]:
    rows: list[Row] = []
    for concurrency in (1, 32):
        store = await open_store(tmp / f"{name}-{concurrency}.db")
        per_task = n // concurrency

        async def writer(w: int, store: Store = store, per_task: int = per_task) -> None:
            for i in range(per_task):
                await store.create(f"/registry/pods/ns{w % 10}/p{w:02d}-{i:06d}", VALUE)

        async def creates(store: Store = store, concurrency: int = concurrency) -> None:
            await asyncio.gather(*(writer(w) for w in range(concurrency)))

        rows.append(await timed(name, f"create x{concurrency}", per_task * concurrency, creates))
        if concurrency == 32:
            keys = [kv.key for kv in (await store.list("/registry/")).items]
            sample = [random.Random(1).choice(keys) for _ in range(4 * n)]

            async def gets(store: Store = store) -> None:
                for key in sample:
                    await store.get(key)

            async def update_one_key_each(store: Store = store) -> None:
                async def updater(key: str) -> None:
                    kv = await store.get(key)
                    for _ in range(per_task):
                        kv = await store.update(key, VALUE, kv.revision)

                await asyncio.gather(*(updater(keys[w * per_task]) for w in range(concurrency)))

            async def full_lists(store: Store = store) -> None:
                for _ in range(20):
                    await store.list("/registry/pods/")

            async def paginated(store: Store = store) -> None:
                start_after = None
                while True:
                    page = await store.list("/registry/pods/", limit=500, start_after=start_after)
                    if page.continue_key is None:
                        return
                    start_after = page.continue_key

            rows.append(await timed(name, "update x32", per_task * concurrency, update_one_key_each))
            rows.append(await timed(name, "get", len(sample), gets))
            rows.append(await timed(name, f"list all {len(keys)}", 20, full_lists))
            rows.append(await timed(name, "list pages of 500", len(keys) // 500 + 1, paginated))
        await store.close()
    return rows


def raw_sqlite(n: int, tmp: Path) -> list[Row]:
    """The floor: plain sqlite3 in the same WAL/NORMAL mode, no Store, no threads, no event loop."""
    rows: list[Row] = []
    for label, per_commit in (("insert, commit each", 1), ("insert, 32 per commit", 32), ("insert, one commit", n)):
        conn = sqlite3.connect(tmp / f"raw-{per_commit}.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE log (revision INTEGER PRIMARY KEY, key TEXT, created INT, deleted INT,"
            " create_revision INT, prev_revision INT, value BLOB)"
        )
        start = time.perf_counter()
        for first in range(0, n, per_commit):
            conn.execute("BEGIN")
            for revision in range(first + 2, min(n, first + per_commit) + 2):
                row = (revision, f"/registry/pods/p{revision}", revision, VALUE)
                conn.execute("INSERT INTO log VALUES (?, ?, 1, 0, ?, 0, ?)", row)
            conn.execute("COMMIT")
        rows.append(Row("raw sqlite3", label, n, time.perf_counter() - start))
        conn.close()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="keys created per run (default 5000)")
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp_dir:
        tmp = Path(tmp_dir)

        async def memory(path: Path) -> Store:
            return MemoryStore()

        async def sqlite(path: Path) -> Store:
            return await SqliteStore.open(path)

        rows = await bench_store("memory", memory, n, tmp)
        rows += await bench_store("sqlite", sqlite, n, tmp)
        rows += raw_sqlite(n, tmp)

    print(f"{'backend':<12} {'operation':<22} {'count':>7} {'rate':>14} {'per op':>12}")
    for row in rows:
        print(f"{row.backend:<12} {row.operation:<22} {row.count:>7} {row.rate()} {row.latency()}")


if __name__ == "__main__":
    asyncio.run(main())
