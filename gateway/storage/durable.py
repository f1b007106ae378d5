"""The embedded mode's durable local store: a small SQLite file under ``data_dir``.

It survives restarts and ``kill -9`` (SQLite commits are atomic and synced). Rotated
refresh tokens live here; dead letters will too.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path


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

    def close(self) -> None:
        self._db.close()
