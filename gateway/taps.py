"""What else happens to a vendor's answer while it goes on to the caller.

The pipeline sends an answer on as its bytes arrive (in one write when its whole body came
with its head). A tap sees those bytes on the way: ``seen`` before each part goes out
(``last``: the answer ends with it), ``broke`` when the vendor's answer breaks off,
``left`` when the caller goes before its end. What a tap does with the last part is done
before that part goes out, so a caller that has the whole answer finds it stored in the
cache, or its dead letter kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateway.upstream import AnswerBroke

Broke = Callable[[AnswerBroke], Awaitable[None]]


class Tap:
    """An answer only the caller needs; ``broke`` is told when it breaks off (a write whose
    answer broke off is kept as a dead letter: the vendor may have done it). ``watching``:
    whether ``seen`` and ``left`` do anything (this one's do not: the answer skips them)."""

    watching = False

    def __init__(self, broke: Broke) -> None:
        self._broke = broke

    async def seen(self, chunk: bytes, last: bool) -> None:
        """Called before ``chunk`` goes out to the caller."""

    async def broke(self, cut: AnswerBroke) -> None:
        await self._broke(cut)

    async def left(self) -> None:
        """Called when the caller went before the answer's end."""


class Excerpt(Tap):
    """A failed write's answer: ``keep`` gets its first ``size`` bytes (all of a shorter
    one) as soon as they are seen, or what came of them when the caller leaves first; an
    answer that breaks off before goes to ``broke`` instead. Exactly one of them is called."""

    watching = True

    def __init__(self, broke: Broke, keep: Callable[[bytes], Awaitable[None]], size: int) -> None:
        super().__init__(broke)
        self._keep = keep
        self._size = size
        self._head = bytearray()
        self._kept = False

    async def seen(self, chunk: bytes, last: bool) -> None:
        if self._kept:
            return
        self._head += chunk[: self._size - len(self._head)]
        if last or len(self._head) >= self._size:
            await self._keep_once()

    async def broke(self, cut: AnswerBroke) -> None:
        if not self._kept:
            self._kept = True
            await self._broke(cut)

    async def left(self) -> None:
        if not self._kept:
            await self._keep_once()

    async def _keep_once(self) -> None:
        self._kept = True
        await self._keep(bytes(self._head))


class Copy(Tap):
    """A cacheable answer: ``done`` gets its whole body when it is at most ``limit`` bytes,
    ``too_large`` is told as soon as it is longer."""

    watching = True

    def __init__(
        self, broke: Broke, limit: int, done: Callable[[bytes], Awaitable[None]],
        too_large: Callable[[], Awaitable[None]],
    ) -> None:
        super().__init__(broke)
        self._limit = limit
        self._done = done
        self._too_large = too_large
        self._body: bytearray | None = bytearray()

    async def seen(self, chunk: bytes, last: bool) -> None:
        if self._body is None:
            return
        self._body += chunk
        if len(self._body) > self._limit:
            self._body = None
            await self._too_large()
        elif last:
            await self._done(bytes(self._body))


async def _unwatched(cut: AnswerBroke) -> None:
    """A broken answer nobody keeps."""


# An answer nothing else happens to: one for every such request.
UNWATCHED = Tap(_unwatched)
