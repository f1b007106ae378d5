"""The embedded mode's durable local store: a small SQLite file under ``data_dir``.

It survives restarts and ``kill -9`` (SQLite commits are atomic and synced). Rotated
refresh tokens live here; dead letters will too.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any


class LocalStore:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / "gateway.db"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # secrets inside: owner only
        os.close(fd)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters (id TEXT PRIMARY KEY, vendor TEXT NOT NULL, data BLOB NOT NULL,"
            " claimed_until REAL NOT NULL DEFAULT 0)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS dead_letters_vendor ON dead_letters (vendor, id)")
        self._lock = asyncio.Lock()

    async def get(self, key: str) -> bytes | None:
        async with self._lock:
            row = await asyncio.to_thread(self._get, key)
        return row

    async def put(self, key: str, value: bytes) -> None:
        async with self._lock:
            await asyncio.to_thread(self._put, key, value)

    def _get(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def _put(self, key: str, value: bytes) -> None:
        self._db.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, value))

    async def put_entry(self, entry_id: str, vendor: str, data: bytes) -> None:
        await self._run(
            "INSERT OR REPLACE INTO dead_letters (id, vendor, data) VALUES (?, ?, ?)", (entry_id, vendor, data)
        )

    async def update_entry(self, entry_id: str, data: bytes) -> bool:
        rows = await self._run("UPDATE dead_letters SET data = ? WHERE id = ? RETURNING id", (data, entry_id))
        return bool(rows)

    async def claim_entry(self, entry_id: str, now: float, until: float) -> bool:
        rows = await self._run(
            "UPDATE dead_letters SET claimed_until = ? WHERE id = ? AND claimed_until <= ? RETURNING id",
            (until, entry_id, now),
        )
        return bool(rows)

    async def release_entry(self, entry_id: str) -> None:
        await self._run("UPDATE dead_letters SET claimed_until = 0 WHERE id = ?", (entry_id,))

    async def get_entry(self, entry_id: str) -> bytes | None:
        rows = await self._run("SELECT data FROM dead_letters WHERE id = ?", (entry_id,))
        return bytes(rows[0][0]) if rows else None

    async def delete_entry(self, entry_id: str) -> bool:
        rows = await self._run("DELETE FROM dead_letters WHERE id = ? RETURNING id", (entry_id,))
        return bool(rows)

    async def list_entries(self, vendor: str | None, after: str, limit: int) -> list[bytes]:
        if vendor is None:
            rows = await self._run("SELECT data FROM dead_letters WHERE id > ? ORDER BY id LIMIT ?", (after, limit))
        else:
            rows = await self._run(
                "SELECT data FROM dead_letters WHERE vendor = ? AND id > ? ORDER BY id LIMIT ?", (vendor, after, limit)
            )
        return [bytes(row[0]) for row in rows]

    async def count_entries(self, vendor: str) -> int:
        rows = await self._run("SELECT count(*) FROM dead_letters WHERE vendor = ?", (vendor,))
        return int(rows[0][0])

    async def _run(self, sql: str, params: tuple[object, ...]) -> list[Any]:
        async with self._lock:
            return await asyncio.to_thread(lambda: self._db.execute(sql, params).fetchall())

    def close(self) -> None:
        self._db.close()
