"""The Lua scripts' calls to one Redis node, on one connection of our own.

Every request calls a script (its budgets' charge), and redis-py's asyncio client spends
more on each call than the rest of the Redis side together: a pool acquire and release,
its command packing, parser and events. Here the calls of every request share one
connection: the commands of one loop turn are written together at its end (one write,
and Redis reads them in order: concurrent calls are pipelined), and the replies, which come back in that order, are
handed first in, first out to the callers waiting for them.

The failures are redis-py's exceptions, as from its client: ConnectionError when the
connection drops (a call is tried once more on a new connection, as redis-py's retry does,
which hides a restarted Redis), TimeoutError when the oldest call waits longer than the
timeout (every call on that connection fails with it and the connection is dropped: the
replies still to come would answer calls no longer waiting), ResponseError for an error
reply. A script Redis does not know (restarted, or flushed) is sent whole once (EVAL).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

Arg = str | int | float | bytes


# The bulk strings of the texts sent lately: most parts of a script call repeat (its
# hash, keys, a budget's limit and span), and are packed once. Emptied when full.
_PACKED: dict[str, str] = {}
PACKED_MAX = 4096


def pack(*parts: Arg) -> bytes:
    """A command in Redis's protocol (RESP), each part a bulk string."""
    return b"*%d\r\n%b" % (len(parts), bulks(parts))


def bulks(parts: Sequence[Arg]) -> bytes:
    """Parts as RESP bulk strings, one after the other (a command's, without its count)."""
    texts = []
    for part in parts:  # most often all text in ASCII: sized and encoded at once
        if type(part) is str:
            packed = _PACKED.get(part)
            if packed is None:
                if not part.isascii():
                    return _pack_bytes(parts)
                if len(_PACKED) >= PACKED_MAX:
                    _PACKED.clear()
                packed = _PACKED[part] = f"${len(part)}\r\n{part}\r\n"
        elif type(part) is bytes:
            return _pack_bytes(parts)
        else:
            text = str(part)
            packed = f"${len(text)}\r\n{text}\r\n"
        texts.append(packed)
    return "".join(texts).encode()


def bulk(text: str) -> str:
    """One text as a RESP bulk string, to be encoded (UTF-8) with the rest of its command."""
    return f"${len(text) if text.isascii() else len(text.encode())}\r\n{text}\r\n"


def _pack_bytes(parts: Sequence[Arg]) -> bytes:
    out = []
    for part in parts:
        raw = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(raw), raw))
    return b"".join(out)


def _error(message: str) -> ResponseError:
    """An error reply, as hiredis hands it over (redis-py gives its parser its own the same way)."""
    return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message)


# What ``hiredis.Reader.gets`` gives while a reply has not wholly come (no reply is this object).
_INCOMPLETE = object()


class _Connection(asyncio.Protocol):
    """One connection: commands written as they come, replies matched to them in order."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        # The replies are read by hiredis, a C parser: a Python one cost more than the rest of
        # the connection's work. Its protocol errors are ConnectionErrors: the connection drops.
        self._reader = hiredis.Reader(protocolError=ConnectionError, replyError=_error, notEnoughData=_INCOMPLETE)
        self._out: list[bytes] = []  # commands of this loop turn, written together at its end
        self._watch: asyncio.TimerHandle | None = None
        self.gone: Exception | None = None  # why it cannot be used any more

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is none of asyncio's classes

    def call(self, command: bytes) -> asyncio.Future[Any]:
        if self.gone is not None or self._transport is None:
            raise ConnectionError("redis connection closed")
        future = self._loop.create_future()
        deadline = self._loop.time() + self._timeout
        self._waiting.append((future, deadline))
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(command)
        if self._watch is None:
            self._watch = self._loop.call_at(deadline, self._check)
        return future

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.gone is None and self._transport is not None:
            self._transport.write(b"".join(out))

    def _check(self) -> None:
        """The oldest call's deadline passed: it times out (and every later one with it,
        the connection dropped), or it was answered and the next one's is watched."""
        self._watch = None
        if not self._waiting:
            return
        deadline = self._waiting[0][1]
        if self._loop.time() >= deadline:
            self._drop(TimeoutError(f"redis did not answer in {self._timeout:g}s"))
        else:
            self._watch = self._loop.call_at(deadline, self._check)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (value := self._reader.gets()) is not _INCOMPLETE:
                if not self._waiting:
                    raise ConnectionError("redis answered a command that was not sent")
                future = self._waiting.popleft()[0]
                if future.done():  # its caller gave up (cancelled)
                    continue
                if isinstance(value, ResponseError):
                    future.set_exception(value)
                else:
                    future.set_result(value)
        except ConnectionError as exc:
            self._drop(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"redis connection lost: {exc or 'closed by the server'}"))

    def _drop(self, exc: Exception) -> None:
        self._fail(exc)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, exc: Exception) -> None:
        if self.gone is None:
            self.gone = exc
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        waiting, self._waiting = self._waiting, deque()
        for future, _ in waiting:
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        self._fail(ConnectionError("redis connection closed"))
        if self._transport is not None:
            self._transport.close()


class ScriptWire:
    """EVALSHA to one Redis node (``redis://user:password@host:port/db``) on one
    connection, opened when first needed and again after it dropped."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "localhost", parts.port or 6379
        self._timeout = timeout
        self._hello: list[bytes] = []  # sent first on each connection
        if parts.password is not None:
            user = [unquote(parts.username)] if parts.username else []
            self._hello.append(pack("AUTH", *user, unquote(parts.password)))
        db = parts.path.strip("/")
        if db and db != "0":
            self._hello.append(pack("SELECT", int(db)))
        self._connection: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None  # the one the connection and lock are of

    @staticmethod
    def serves(url: str, cluster: bool) -> bool:
        """Whether this client can take a storage URL's script calls (plain TCP, one node)."""
        return not cluster and urlsplit(url).scheme == "redis"

    def evalsha(self, source: str, sha: str, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        return self.script(source, sha, 1 + len(keys) + len(args), bulks([len(keys), *keys, *args]))

    async def script(self, source: str, sha: str, count: int, body: bytes) -> Any:
        """EVALSHA (EVAL if Redis does not know the script) of ``body``: the ``count`` bulk
        strings after the script's hash (its number of keys, keys and arguments)."""
        command = b"*%d\r\n$7\r\nEVALSHA\r\n$40\r\n%b\r\n%b" % (count + 2, sha.encode(), body)
        connection = self._connection
        if connection is None or connection.gone is not None or self._loop is not asyncio.get_running_loop():
            connection = await self._connect()
        try:  # (``_send``'s work, inline: one coroutine less on every request's way)
            return await connection.call(command)
        except ConnectionError:  # dropped (a restarted Redis): once more, on a new connection
            connection = await self._connect()
            try:
                return await connection.call(command)
            except NoScriptError:  # a Redis restarted empty
                return await connection.call(_eval(source, count, body))
        except NoScriptError:
            return await self._send(_eval(source, count, body))

    async def _send(self, command: bytes) -> Any:
        connection = self._connection
        if connection is None or connection.gone is not None or self._loop is not asyncio.get_running_loop():
            connection = await self._connect()
        try:
            return await connection.call(command)
        except ConnectionError:  # dropped (a restarted Redis): once more, on a new connection
            return await (await self._connect()).call(command)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or another loop than before (each asyncio.run)
            self._loop, self._connecting = loop, asyncio.Lock()
            self._connection = None  # the old loop's, closed with it
        async with self._connecting:  # concurrent callers wait for the one connection
            if self._connection is not None and self._connection.gone is None:
                return self._connection
            try:
                _, connection = await asyncio.wait_for(
                    loop.create_connection(lambda: _Connection(self._timeout), self._host, self._port), self._timeout
                )
            except asyncio.TimeoutError:
                raise TimeoutError(f"redis did not take a connection in {self._timeout:g}s") from None
            except OSError as exc:
                raise ConnectionError(f"redis connection failed: {exc.strerror or exc}") from None
            try:
                for hello in self._hello:
                    await connection.call(hello)
            except ResponseError as exc:
                connection.close()
                raise ConnectionError(f"redis refused the connection: {exc}") from None
            self._connection = connection
            return connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _eval(source: str, count: int, body: bytes) -> bytes:
    raw = source.encode()
    return b"*%d\r\n$4\r\nEVAL\r\n$%d\r\n%b\r\n%b" % (count + 2, len(raw), raw, body)


def script_sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()
