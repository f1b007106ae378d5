"""The caller's request body: buffered when small (so an attempt can be repeated),
streamed when large (so a big upload passes in flat memory), never over ``max_body``,
never paused longer than ``header_timeout``.

What the caller does wrong or stops doing becomes a GatewayError here: 408 for a body
that stalls, 413 for one too large, 400 for a malformed one, 499 for a caller that left.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.deadline import within
from gateway.errors import BadRequest, CallerGone, PayloadTooLarge, RequestTimeout

# Bodies up to this size are kept whole: attempts can be repeated and failed writes kept.
REPLAY_LIMIT = 1024 * 1024


class RequestBody:
    """Either whole bytes (``replayable``) or a one-shot stream of a larger body."""

    def __init__(
        self, data: bytes | None, *, stream_from: web.Request | None = None, max_body: int = 0, stall: float = 0.0
    ) -> None:
        self.data = data
        self._request = stream_from
        self._max_body = max_body
        self._stall = stall

    @property
    def replayable(self) -> bool:
        return self._request is None

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        if self._request is None:
            return self.data
        return self._stream(self._request)

    async def _stream(self, request: web.Request) -> AsyncIterator[bytes]:
        head, self.data = self.data or b"", None
        sent = len(head)
        yield head
        # What this raises, the client library sending it wraps (gateway.upstream unwraps it).
        while chunk := await next_chunk(request, self._stall):
            sent += len(chunk)
            if sent > self._max_body:
                raise PayloadTooLarge(f"the request body is over the limit of {self._max_body} bytes")
            yield chunk


async def read_body(request: web.Request, max_body: int, stall: float) -> RequestBody:
    """The body, whole when it is at most REPLAY_LIMIT, else its first part and the rest
    to stream; ``stall``: the longest the caller may pause."""
    declared = request.content_length
    if declared is not None and declared > max_body:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {max_body}")
    if not request.body_exists:
        return RequestBody(None)
    head = bytearray()
    while chunk := await next_chunk(request, stall):
        head += chunk
        if len(head) > max_body:
            raise PayloadTooLarge(f"the request body is over the limit of {max_body} bytes")
        if len(head) > REPLAY_LIMIT:
            return RequestBody(bytes(head), stream_from=request, max_body=max_body, stall=stall)
    return RequestBody(bytes(head))


async def next_chunk(request: web.Request, stall: float) -> bytes:
    """The next bytes of the caller's body, b"" at its end."""
    content = request.content
    try:
        arrived = content.read_nowait()  # what came already (with the head, most often): no clock
        if arrived or content.at_eof():
            return arrived
        return await within(
            stall, content.readany(), lambda: RequestTimeout(f"the request body stalled: no bytes for {stall:g}s")
        )
    except RequestPayloadError:
        raise BadRequest("the request body is malformed (its length or chunked encoding)") from None
    except ConnectionError:
        # aiohttp fails the body's stream with ConnectionResetError when the caller hangs up.
        raise CallerGone("the caller left during its upload") from None
