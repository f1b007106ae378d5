"""A scriptable mock vendor: a real aiohttp app the gateway talks to over loopback.

By default every request is answered 200 with a JSON echo of what arrived. A test can
queue behaviours (``vendor.script(503, 503, 200)``, ``vendor.script(HANG)``) that the
next requests take in order, and read back every request received.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Behaviour = int | Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Received:
    method: str
    raw_path: str
    headers: dict[str, list[str]]
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


@dataclass
class MockVendor:
    received: list[Received] = field(default_factory=list)
    queue: deque[Behaviour] = field(default_factory=deque)
    connections: int = 0

    def script(self, *behaviours: Behaviour) -> None:
        self.queue.extend(behaviours)

    @property
    def last(self) -> Received:
        return self.received[-1]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers: dict[str, list[str]] = {}
        for name, value in request.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        self.received.append(Received(request.method, request.raw_path, headers, body))
        behaviour: Behaviour = self.queue.popleft() if self.queue else 200
        if callable(behaviour):
            return await behaviour(request)
        return web.json_response(
            {"method": request.method, "path": request.raw_path, "size": len(body)},
            status=behaviour,
        )


async def hang(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


async def reset(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.abort()
    await asyncio.sleep(0.1)
    return web.Response()


def answer(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Behaviour:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, body=body, headers=headers)

    return respond


def stream(total: int, chunk: int = 1024 * 1024) -> Behaviour:
    """A body of ``total`` bytes, made and sent a chunk at a time."""

    async def respond(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        out.content_length = total
        await out.prepare(request)
        block = b"x" * chunk
        sent = 0
        while sent < total:
            piece = block[: min(chunk, total - sent)]
            await out.write(piece)
            sent += len(piece)
        await out.write_eof()
        return out

    return respond
