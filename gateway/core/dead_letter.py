"""A dead letter as kept: a write whose final answer was an error, held for review and replay.

An entry holds the request as forwarded (never a credential: those are added per attempt,
and the caller's key is never forwarded), the last error, the attempt count and times,
and the caller. Plain data and its JSON form; the stores keep it (the embedded mode in
the local SQLite store, which survives ``kill -9``; Redis mode in Redis) and
gateway.deadletters decides what becomes one.
"""

from __future__ import annotations

import base64
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from gateway.core.clock import iso_utc


@dataclass(frozen=True)
class DeadLetter:
    id: str
    vendor: str
    caller: str
    method: str
    path: str
    query: str | None
    headers: list[tuple[str, str]]
    body: bytes | None  # None: the body was streamed (over 1 MiB) and could not be kept
    status: int
    error: str
    attempts: int
    first_at: float
    last_at: float
    replays: int = 0

    @staticmethod
    def new_id(now: float) -> str:
        return f"{int(now * 1000):013d}-{os.urandom(4).hex()}"

    def failed_again(self, status: int, error: str, attempts: int, now: float) -> DeadLetter:
        return replace(self, status=status, error=error, attempts=self.attempts + attempts, last_at=now,
                       replays=self.replays + 1)

    def to_json(self) -> bytes:
        data = asdict(self)
        data["body"] = base64.b64encode(self.body).decode("ascii") if self.body is not None else None
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes) -> DeadLetter:
        data = orjson.loads(raw)
        data["body"] = base64.b64decode(data["body"]) if data["body"] is not None else None
        data["headers"] = [tuple(pair) for pair in data["headers"]]
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        """What the admin API lists: everything but the body, whose size is given."""
        return {
            "id": self.id, "vendor": self.vendor, "caller": self.caller, "method": self.method,
            "path": self.path, "query": self.query, "status": self.status, "error": self.error,
            "attempts": self.attempts, "replays": self.replays,
            "first_at": iso_utc(self.first_at), "last_at": iso_utc(self.last_at),
            "body_bytes": len(self.body) if self.body is not None else None,
        }

    def detail(self) -> dict[str, Any]:
        body = self.body
        shown: dict[str, Any] = {"headers": [list(pair) for pair in self.headers]}
        if body is None:
            shown["body"] = None
        else:
            try:
                shown["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                shown["body_base64"] = base64.b64encode(body).decode("ascii")
        return {**self.summary(), **shown}
