"""Callers' connections: how long a caller may take to send a request head, and how long
an idle keep-alive connection is kept open (config ``header_timeout``, ``keepalive_timeout``).

Two clocks run on a connection while it waits for a request:

- the idle clock (aiohttp's own ``keepalive_timeout``) from the connection's start and
  from the end of each answer, stopped by the first byte of the next request;
- the head clock (``header_timeout``) from the connection's start and from the first byte
  of each later request, stopped when the head is complete.

A connection that opens and stays silent is closed by whichever runs out first; one that
drips its head is closed by the head clock, with a 408 if it sent any bytes (a browser's
unused preconnect gets no answer it could take for another request's); an idle keep-alive
connection is closed by the idle clock. The request body is the pipeline's concern.

A head aiohttp cannot parse is answered 400 bad-request as a problem, logged at INFO:
aiohttp's own answer echoes the bytes and its log line is an ERROR with a traceback.

aiohttp has no hook before a head is parsed, so this subclasses its connection protocol
and server and reads three of their internals: the connection's ``_waiter`` (pending
while it waits for a request) and the server's ``_loop`` and ``_kwargs`` (its options).
tests/test_slow_callers.py holds them to the aiohttp the package requires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from gateway.errors import BadRequest, GatewayError, RequestTimeout
from gateway.upstream import describe_invalid

log = logging.getLogger("gateway.connections")


def timeout_answer(late: RequestTimeout) -> bytes:
    """The 408 sent on a connection whose head is late, as bytes ready for the socket."""
    body = orjson.dumps(late.problem())
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class CallerConnection(RequestHandler):
    """aiohttp's connection protocol with a deadline on each request head."""

    __slots__ = ("_head_timeout", "_refused", "_head_timer", "_head_bytes", "_late", "_timeout_answer")

    def __init__(
        self, manager: web.Server, *, header_timeout: float, refused: Callable[[GatewayError], None], **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = header_timeout
        self._refused = refused  # told of each request refused here, for the metrics
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False  # whether any byte of the awaited head has arrived
        self._late = RequestTimeout(f"the request head did not arrive within {header_timeout:g}s")
        self._timeout_answer = timeout_answer(self._late)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_head_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_head_clock()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not (data and not self._head_bytes and self._awaiting_head()):
            super().data_received(data)
            return
        self._head_bytes = True
        super().data_received(data)
        waiter = self._waiter
        if waiter is None or not waiter.done():
            # Not known to be whole (the connection was not woken for it): public aiohttp
            # API, stops the idle clock, which a head in progress must not be closed by;
            # aiohttp starts it again after the answer. A head that came whole leaves the
            # clock as it runs (stopping it would make aiohttp set a new timer per request).
            self.keep_alive(True)
        if self._head_timer is None and waiter is not None and not waiter.done():
            # The head did not come whole with its first bytes (aiohttp would have woken
            # the connection for it): from now on it must arrive in time.
            self._start_head_clock()

    def head_arrived(self) -> None:
        """A complete head (or one aiohttp refuses) was parsed: it is on time."""
        self._stop_head_clock()
        self._head_bytes = False

    def _awaiting_head(self) -> bool:
        waiter = self._waiter
        return self._head_timer is not None or (waiter is not None and not waiter.done())

    def _start_head_clock(self) -> None:
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_is_late)

    def _stop_head_clock(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_is_late(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None:
            return
        if self._head_bytes:
            peer = transport.get_extra_info("peername")
            log.info("%s: no complete request head within %gs: 408, connection closed",
                     peer[0] if peer else "-", self._head_timeout)
            transport.write(self._timeout_answer)
            self._refused(self._late)
        self.force_close()

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if status != 400 or not isinstance(exc, http_exceptions.HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        refusal = BadRequest(f"malformed request: {describe_invalid(exc, 'request line')}")
        log.info("%s: %s", request.remote or "-", refusal.detail)
        self._refused(refusal)
        response = web.Response(status=400, body=orjson.dumps(refusal.problem()), content_type="application/problem+json")
        response.force_close()
        return response


class CallerServer(web.Server):
    """aiohttp's server, making CallerConnections; built from the server aiohttp made for
    the app, with its handler (or ``handler``, one around it), request factory and options."""

    def __init__(
        self, template: web.Server, *, header_timeout: float, refused: Callable[[GatewayError], None],
        handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]] | None = None,
    ) -> None:
        made = template.request_factory

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
            if isinstance(protocol, CallerConnection):
                protocol.head_arrived()
            return made(message, payload, protocol, writer, task)

        super().__init__(
            template.request_handler if handler is None else handler,
            request_factory=request_factory,
            handler_cancellation=template.handler_cancellation,
            loop=template._loop,
            **template._kwargs,
        )
        self._header_timeout = header_timeout
        self._refused = refused

    def __call__(self) -> RequestHandler:
        return CallerConnection(
            self, loop=self._loop, header_timeout=self._header_timeout, refused=self._refused, **self._kwargs
        )
