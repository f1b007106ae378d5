"""The caller's request body: buffered when small (so an attempt can be repeated),
streamed when large (so a big upload passes in flat memory), never over ``max_body``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import PayloadTooLarge

# Bodies up to this size are kept whole: attempts can be repeated and failed writes kept.
REPLAY_LIMIT = 1024 * 1024


class RequestBody:
    """Either whole bytes (``replayable``) or a one-shot stream of a larger body."""

    def __init__(self, data: bytes | None, *, stream_from: web.Request | None = None, max_body: int = 0) -> None:
        self.data = data
        self._request = stream_from
        self._max_body = max_body
        self.too_large = False

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
        async for chunk in request.content.iter_any():
            sent += len(chunk)
            if sent > self._max_body:
                # The client library may wrap what we raise; the flag is what the pipeline reads.
                self.too_large = True
                raise PayloadTooLarge(f"the request body is over the limit of {self._max_body} bytes")
            yield chunk


async def read_body(request: web.Request, max_body: int) -> RequestBody:
    declared = request.content_length
    if declared is not None and declared > max_body:
        raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {max_body}")
    if not request.body_exists:
        return RequestBody(None)
    head = bytearray()
    while chunk := await request.content.readany():
        head += chunk
        if len(head) > max_body:
            raise PayloadTooLarge(f"the request body is over the limit of {max_body} bytes")
        if len(head) > REPLAY_LIMIT:
            return RequestBody(bytes(head), stream_from=request, max_body=max_body)
    return RequestBody(bytes(head))
