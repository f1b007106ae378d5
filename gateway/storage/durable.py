"""The embedded mode's durable local store: a small SQLite file under ``data_dir``.

It survives restarts and ``kill -9`` (SQLite commits are atomic and synced). Rotated
refresh tokens, dead letters and the kept state (budgets, breakers: see ``kept.py``)
live here. Every failure of the disk or of SQLite (a full disk, a read-only one, a
corrupt file) leaves this module as StorageError.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway.errors import StorageError

T = TypeVar("T")

# A small WAL, checkpointed often: a data_dir may be a small volume, and the kept state
# is written every second while budgets are used.
_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA wal_autocheckpoint=100",
    "PRAGMA journal_size_limit=1048576",
)
_TABLES = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dead_letters (id TEXT PRIMARY KEY, vendor TEXT NOT NULL, data BLOB NOT NULL,"
    " claimed_until REAL NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS dead_letters_vendor ON dead_letters (vendor, id)",
    "CREATE TABLE IF NOT EXISTS state (section TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " until REAL NOT NULL, PRIMARY KEY (section, key))",
    "CREATE TABLE IF NOT EXISTS stats (vendor TEXT NOT NULL, minute INTEGER NOT NULL, field TEXT NOT NULL,"
    " value INTEGER NOT NULL, PRIMARY KEY (vendor, minute, field)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS stats_last (vendor TEXT PRIMARY KEY, at REAL NOT NULL)",
)

# One kept entry to write: section, key, its record (JSON), until when it matters.
StateRow = tuple[str, str, bytes, float]


def _reason(exc: sqlite3.Error | OSError) -> str:
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or type(exc).__name__}{where}"
    return str(exc) or type(exc).__name__


def _transaction(work: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """``work`` done whole or not at all."""

    def whole(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            work(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    return whole


class LocalStore:
    def __init__(self, data_dir: Path) -> None:
        self._db: sqlite3.Connection | None = None
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            path = data_dir / "gateway.db"
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # secrets inside: owner only
            os.close(fd)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            for statement in (*_PRAGMAS, *_TABLES):
                self._db.execute(statement)
        except FileExistsError:
            raise StorageError(f"data_dir {data_dir} is unusable: it is a file, not a folder") from None
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise StorageError(f"data_dir {data_dir} is unusable: {_reason(exc)}") from None
        self._lock = asyncio.Lock()

    @classmethod
    def check(cls, data_dir: Path) -> None:
        """Make sure the store can be opened, written and read; StorageError says why not."""
        store = cls(data_dir)
        try:
            store._call("write", lambda db: db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES ('probe', x'')"))
            store._call("write", lambda db: db.execute("DELETE FROM kv WHERE key = 'probe'"))
            store.read_state()
        except StorageError as exc:
            raise StorageError(f"data_dir {data_dir} is unusable: {exc}") from None
        finally:
            store.close()

    def _call(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise StorageError(f"local store {what} failed: the store is closed")
        try:
            return work(self._db)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"local store {what} failed: {_reason(exc)}") from None

    async def _run(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(self._call, what, work)

    async def _query(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        return await self._run(sql.split(None, 1)[0].lower(), lambda db: db.execute(sql, params).fetchall())

    async def get(self, key: str) -> bytes | None:
        rows = await self._query("SELECT value FROM kv WHERE key = ?", (key,))
        return bytes(rows[0][0]) if rows else None

    async def put(self, key: str, value: bytes) -> None:
        await self._query("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    async def put_entry(self, entry_id: str, vendor: str, data: bytes) -> None:
        await self._query(
            "INSERT OR REPLACE INTO dead_letters (id, vendor, data) VALUES (?, ?, ?)", (entry_id, vendor, data)
        )

    async def update_entry(self, entry_id: str, data: bytes) -> bool:
        rows = await self._query("UPDATE dead_letters SET data = ? WHERE id = ? RETURNING id", (data, entry_id))
        return bool(rows)

    async def claim_entry(self, entry_id: str, now: float, until: float) -> bool:
        rows = await self._query(
            "UPDATE dead_letters SET claimed_until = ? WHERE id = ? AND claimed_until <= ? RETURNING id",
            (until, entry_id, now),
        )
        return bool(rows)

    async def release_entry(self, entry_id: str) -> None:
        await self._query("UPDATE dead_letters SET claimed_until = 0 WHERE id = ?", (entry_id,))

    async def get_entry(self, entry_id: str) -> bytes | None:
        rows = await self._query("SELECT data FROM dead_letters WHERE id = ?", (entry_id,))
        return bytes(rows[0][0]) if rows else None

    async def delete_entry(self, entry_id: str) -> bool:
        rows = await self._query("DELETE FROM dead_letters WHERE id = ? RETURNING id", (entry_id,))
        return bool(rows)

    async def list_entries(self, vendor: str | None, after: str, limit: int) -> list[bytes]:
        if vendor is None:
            rows = await self._query("SELECT data FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        else:
            rows = await self._query(
                "SELECT data FROM dead_letters WHERE vendor = ? AND id > ? ORDER BY id LIMIT ?", (vendor, after, limit)
            )
        return [bytes(row[0]) for row in rows]

    async def count_entries(self, vendor: str) -> int:
        rows = await self._query("SELECT count(*) FROM dead_letters WHERE vendor = ?", (vendor,))
        return int(rows[0][0])

    def read_state(self) -> list[tuple[Any, ...]]:
        """Every kept entry as stored (section, key, value, until): read once, at start,
        before anything is served, so it need not wait for the event loop."""
        return self._call("read", lambda db: db.execute("SELECT section, key, value, until FROM state").fetchall())

    async def write_state(self, rows: Sequence[StateRow], now: float) -> None:
        """Write kept entries in one transaction, and drop those that no longer matter."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO state (section, key, value, until) VALUES (?, ?, ?, ?)", rows)
            db.execute("DELETE FROM state WHERE until <= ?", (now,))

        await self._run("state write", _transaction(write))

    async def add_stats(self, rows: Sequence[tuple[str, int, str, int]], successes: Sequence[tuple[str, float]],
                        before: int) -> None:
        """Add (vendor, minute, field, value) counters and raise latest successes in one
        transaction; the vendors' minutes before ``before`` are dropped."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany("INSERT INTO stats (vendor, minute, field, value) VALUES (?, ?, ?, ?)"
                           " ON CONFLICT DO UPDATE SET value = value + excluded.value", rows)
            db.executemany("INSERT INTO stats_last (vendor, at) VALUES (?, ?)"
                           " ON CONFLICT DO UPDATE SET at = max(at, excluded.at)", successes)
            vendors = sorted({row[0] for row in rows})
            db.executemany("DELETE FROM stats WHERE vendor = ? AND minute < ?", [(v, before) for v in vendors])

        await self._run("stats write", _transaction(write))

    async def read_stats(
        self, vendors: Sequence[str], spans: Sequence[tuple[int, int]]
    ) -> list[tuple[list[list[tuple[str, int]]], float | None]]:
        """Per vendor: its (field, sum) pairs over each span of minutes, and its latest success."""

        def read(db: sqlite3.Connection) -> list[tuple[list[list[tuple[str, int]]], float | None]]:
            found = []
            for vendor in vendors:
                sums = [
                    db.execute("SELECT field, sum(value) FROM stats WHERE vendor = ? AND minute BETWEEN ? AND ?"
                               " GROUP BY field", (vendor, first, last)).fetchall()
                    for first, last in spans
                ]
                last_row = db.execute("SELECT at FROM stats_last WHERE vendor = ?", (vendor,)).fetchone()
                found.append((sums, float(last_row[0]) if last_row else None))
            return found

        return await self._run("stats read", read)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
