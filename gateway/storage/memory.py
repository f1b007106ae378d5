"""In-process storage: the embedded default for a single gateway process."""

from __future__ import annotations


class MemoryStorage:
    name = "memory"

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
