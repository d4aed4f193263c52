"""The SQLite Store: durable and embedded, the default backend of ``ccmkit up``.

The live state is a MemoryStore, so compare-and-swap, listing and watch fan-out exist in one place; SQLite is only
its write-ahead log, a kine-like table of every write that is read once, at start-up, to rebuild the state. One
writer thread owns the connection and commits whatever writes have queued up in one transaction (group commit), so
a burst of creates shares commits instead of each waiting for its own.

Durability promise: a write returns, and its watch event is published, only after its transaction has committed.
The log runs in WAL mode with ``synchronous=NORMAL``: a committed write survives the process crashing or being
SIGKILLed; it may not survive the machine losing power (that would need ``synchronous=FULL``).

After a restart the state and the revision counter continue where they were, but the watch history starts empty at
the recovered revision: watching or listing from an older revision raises ExpiredError (clients relist, as after
a 410 Gone). If the log fails (disk full, I/O error), the writes in flight fail with UnavailableError and the store
stays readable but takes no more writes until it is reopened. The file is locked for one process at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from controlplane.storage.interface import KeyValue, UnavailableError
from controlplane.storage.memory import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_WATCH_BACKLOG,
    FIRST_REVISION,
    Change,
    MemoryStore,
)

DEFAULT_COMPACT_EVERY = 10_000  # log rows written between two automatic compactions

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL
)
"""

_Row = tuple[int, str, int, int, int, int, bytes]


class SqliteStore(MemoryStore):
    """A MemoryStore whose journal is a SqliteLog. Open it with ``await SqliteStore.open(path)``."""

    path: Path

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        watch_backlog: int = DEFAULT_WATCH_BACKLOG,
        compact_every: int = DEFAULT_COMPACT_EVERY,
    ) -> SqliteStore:
        path = Path(path)
        conn, items, revision = await asyncio.to_thread(_open_log, path)
        log = SqliteLog(conn, path, asyncio.get_running_loop(), revision=revision, compact_every=compact_every)
        store = cls(
            journal=log, items=items, revision=revision, history_limit=history_limit, watch_backlog=watch_backlog
        )
        store.path = path
        return store


def _open_log(path: Path) -> tuple[sqlite3.Connection, list[KeyValue], int]:
    """Open (or create) the log and recover the state from it: the newest row of every key not deleted."""
    # isolation_level=None: transactions are begun explicitly by the writer; timeout=0: a locked file fails now.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=0)
    try:
        # EXCLUSIVE locking keeps a second process (a second `ccmkit up` on the same data dir) out: two writers
        # with separate in-memory states would hand out the same revisions.
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(_SCHEMA)
        conn.execute("BEGIN IMMEDIATE")  # take the write lock now rather than at the first write
        conn.execute("COMMIT")
        revision = conn.execute("SELECT MAX(revision) FROM log").fetchone()[0] or FIRST_REVISION
        # SQLite takes the bare columns of a MAX() aggregate from the row holding the maximum.
        rows = conn.execute(
            "SELECT key, MAX(revision), create_revision, deleted, value FROM log GROUP BY key"
        ).fetchall()
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc):
            raise UnavailableError(f"{path} is in use by another process") from exc
        raise
    except BaseException:
        conn.close()
        raise
    items = [
        KeyValue(key, bytes(value), rev, create_rev) for key, rev, create_rev, deleted, value in rows if not deleted
    ]
    return conn, items, revision


class SqliteLog:
    """The Journal behind SqliteStore: a queue the event loop fills and one thread drains into SQLite.

    The thread owns the connection (no SQLite call ever runs on the event loop). Each pass takes every queued
    change and commits them in one transaction, then resolves their futures on the loop, in order.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        *,
        revision: int,
        compact_every: int = DEFAULT_COMPACT_EVERY,
    ) -> None:
        self._conn = conn
        self._path = path
        self._loop = loop
        self._compact_every = compact_every
        self._cond = threading.Condition()
        # Guarded by _cond:
        self._queue: list[tuple[_Row, asyncio.Future[None]]] = []
        self._compactions: list[tuple[int, asyncio.Future[None]]] = []
        self._closing = False
        self._error: str | None = None
        # Owned by the writer thread:
        self._last_revision = revision  # the newest committed row
        self._compacted_to = 0  # log compaction is incremental from here; 0 rescans the log once after a restart
        self._since_compaction = 0
        self._thread = threading.Thread(target=self._run, name=f"sqlite-log:{path.name}", daemon=True)
        self._thread.start()

    def persist(self, change: Change) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        state = change.kv if change.kv is not None else change.prev
        assert state is not None
        row: _Row = (
            change.revision,
            change.key,
            int(change.prev is None),
            int(change.kv is None),
            state.create_revision,
            change.prev.revision if change.prev is not None else 0,
            change.event.value,  # a delete row keeps the last value, as kine does
        )
        with self._cond:
            if self._error is not None or self._closing:
                future.set_exception(UnavailableError(self._error or f"the SQLite log {self._path} is closed"))
            else:
                self._queue.append((row, future))
                self._cond.notify()
        return future

    async def compact(self, revision: int) -> None:
        future: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            if self._error is not None or self._closing:
                raise UnavailableError(self._error or f"the SQLite log {self._path} is closed")
            self._compactions.append((revision, future))
            self._cond.notify()
        await future

    async def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        await asyncio.to_thread(self._thread.join)

    # -- the writer thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        unsettled: list[asyncio.Future[None]] = []
        try:
            while True:
                with self._cond:
                    while not (self._queue or self._compactions or self._closing):
                        self._cond.wait()
                    batch, self._queue = self._queue, []
                    compactions, self._compactions = self._compactions, []
                if not batch and not compactions:
                    return  # closing, and everything queued is committed
                unsettled = [future for _, future in batch] + [future for _, future in compactions]
                if batch:
                    self._write_rows([row for row, _ in batch])
                    self._last_revision = batch[-1][0][0]
                    self._since_compaction += len(batch)
                    self._settle([future for _, future in batch])
                for revision, future in compactions:
                    self._compact(revision)
                    self._settle([future])
                if self._since_compaction >= self._compact_every:
                    self._compact(self._last_revision)
                unsettled = []
        except Exception as exc:  # any failure of the log makes it unusable: fail everything waiting on it
            message = f"the SQLite log {self._path} failed: {exc!r}"
            with self._cond:
                self._error = message
                unsettled += [future for _, future in self._queue] + [future for _, future in self._compactions]
                self._queue, self._compactions = [], []
            self._settle(unsettled, message)
        finally:
            self._conn.close()

    def _write_rows(self, rows: list[_Row]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _compact(self, revision: int) -> None:
        """Delete the rows up to ``revision`` that no restart needs: rows a later row replaced, and delete rows
        (tombstones). The newest row of all is always kept, since it carries the revision counter."""
        revision = min(revision, self._last_revision)
        low = self._compacted_to
        if revision <= low:
            return
        conn = self._conn
        conn.execute("BEGIN")
        try:
            # Each row names the row it replaced, so this round only needs the rows written since the last one.
            conn.execute(
                "DELETE FROM log WHERE revision IN "
                "(SELECT prev_revision FROM log WHERE revision > ? AND revision <= ? AND prev_revision > 0)",
                (low, revision),
            )
            # `>= low`: a tombstone that was the newest row at the last round could not go then.
            conn.execute(
                "DELETE FROM log WHERE deleted AND revision >= ? AND revision <= ? AND revision < ?",
                (low, revision, self._last_revision),
            )
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise
        self._compacted_to = revision
        self._since_compaction = 0

    def _settle(self, futures: list[asyncio.Future[None]], error: str | None = None) -> None:
        if not futures:
            return
        try:
            self._loop.call_soon_threadsafe(_settle_futures, futures, error)
        except RuntimeError:
            pass  # the loop is closed: nobody is left waiting


def _settle_futures(futures: list[asyncio.Future[None]], error: str | None) -> None:
    for future in futures:
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(UnavailableError(error))


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass  # the transaction may already be gone; the original error is what matters
