"""Sending one attempt to a vendor (a connection pool per vendor, no redirects, no
cookies, bodies untouched, the attempt's timeout) and reading its answer's body.

A broken answer is described in our words, never echoed: what a vendor (or whatever
listens at its address) sent may be anything, and problems and dead letters show it.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator, Iterable, Mapping

import aiohttp
from aiohttp import http_exceptions
from multidict import CIMultiDict
from yarl import URL

from gateway.config.model import Policy
from gateway.deadline import Deadline, within
from gateway.errors import GatewayError

# Per vendor, so a hung vendor can hold at most its own connections.
CONNECTIONS_PER_VENDOR = 100

# aiohttp adds these unless told not to; the vendor must see only what the caller sent.
_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
_SKIPPED: CIMultiDict[None] = CIMultiDict((name, None) for name in sorted(_AUTO_HEADERS))


class AsSent(aiohttp.ClientRequest):
    """aiohttp's request without the headers it adds of its own (_AUTO_HEADERS): the
    vendor sees only what the caller sent. The session's ``skip_auto_headers`` would do
    the same, sorting and copying them and the request's headers on every request; this
    sets aiohttp's (private, class-declared) skip list to one made once.
    tests/test_proxy.py holds it to the aiohttp the package requires."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIPPED


class AttemptFailed(Exception):
    """An attempt got no response: ``kind`` is ``timeout`` or ``connect``; ``by_caller``,
    when the caller's streamed body stopped it (too large, stalled, the caller left)."""

    def __init__(self, kind: str, sent: bool, reason: str, by_caller: GatewayError | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.sent = sent
        self.by_caller = by_caller


class UpstreamClients:
    """One pooled aiohttp session per vendor. A reload builds new clients from the old:
    a vendor whose upstream and timeout are unchanged keeps its session (and its pooled
    connections); the others get a new one, and ``retired`` names the old sessions no
    longer used, for the wiring to close once the requests using them are done."""

    def __init__(self, policies: Mapping[str, Policy], previous: UpstreamClients | None = None) -> None:
        self._pools = {vendor: (policy.upstream.url, policy.timeout) for vendor, policy in policies.items()}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        for vendor, policy in policies.items():
            if previous is not None and previous._pools.get(vendor) == self._pools[vendor]:
                self._sessions[vendor] = previous._sessions[vendor]
            else:
                self._sessions[vendor] = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=CONNECTIONS_PER_VENDOR, enable_cleanup_closed=True),
                    auto_decompress=False,
                    cookie_jar=aiohttp.DummyCookieJar(),
                    # The policy's timeout is ours to keep (a Deadline until the head, then
                    # read_part): aiohttp's sock_read moves a timer on every chunk received.
                    timeout=aiohttp.ClientTimeout(total=None),
                    request_class=AsSent,
                )

    def retired(self, previous: UpstreamClients) -> list[aiohttp.ClientSession]:
        """The sessions of ``previous`` these clients do not use."""
        kept = {id(session) for session in self._sessions.values()}
        return [session for session in previous._sessions.values() if id(session) not in kept]

    async def send(
        self,
        policy: Policy,
        method: str,
        url: str,
        headers: CIMultiDict[str],
        body: bytes | AsyncIterator[bytes] | None,
    ) -> aiohttp.ClientResponse:
        """The response, once its headers arrived within the policy's timeout."""
        session = self._sessions[policy.vendor]
        deadline = Deadline(policy.timeout)
        try:
            return await session.request(
                method,
                URL(url, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
            )
        except asyncio.CancelledError:
            if deadline.expired():
                raise _timed_out(policy) from None
            raise
        except TimeoutError:  # aiohttp's own: no byte of the head for the policy's timeout
            raise _timed_out(policy) from None
        except aiohttp.ClientError as exc:
            raise _attempt_failed(exc) from None
        finally:
            deadline.stop()

    async def close(self) -> None:
        await asyncio.gather(*(s.close() for s in self._sessions.values()))


def _timed_out(policy: Policy) -> AttemptFailed:
    return AttemptFailed("timeout", sent=True, reason=f"no answer within {policy.timeout:g}s")


def _attempt_failed(exc: aiohttp.ClientError) -> AttemptFailed:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return AttemptFailed("connect", sent=False, reason=f"cannot connect: {exc.os_error}")
    if isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        failed = AttemptFailed("connect", sent=True, reason=f"connection lost: {type(exc).__name__}")
    elif isinstance(exc, aiohttp.ClientResponseError):
        failed = AttemptFailed("connect", sent=True, reason=describe_invalid(exc))
    else:
        failed = AttemptFailed("connect", sent=True, reason=f"request failed: {type(exc).__name__}")
    failed.by_caller = _raised_by_body(exc)
    return failed


def _raised_by_body(exc: BaseException) -> GatewayError | None:
    """The gateway error the streamed request body raised, where aiohttp wrapped it (it
    keeps what the body raised as the cause of what it raises)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, GatewayError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


class AnswerBroke(Exception):
    """The body of a vendor's answer ended early or stopped coming: ``got`` bytes of
    ``expected`` (None: no Content-Length)."""

    def __init__(self, got: int, expected: int | None, cause: BaseException) -> None:
        self.got = got
        self.expected = expected
        self.stalled = isinstance(cause, asyncio.TimeoutError)
        of = f" of {expected}" if expected is not None else ""
        super().__init__(f"answer {'stalled' if self.stalled else 'broke off'} after {got}{of} bytes")


def arrived_whole(upstream: aiohttp.ClientResponse) -> bytes | None:
    """The answer's body when all of it came with its head (nothing left to wait for),
    else None: then it is to be read as it arrives."""
    content = upstream.content
    if not content.is_eof() or content.exception() is not None:
        return None
    return content.read_nowait()


async def read_part(content: aiohttp.StreamReader, size: int, seconds: float) -> bytes:
    """The next part of an answer's body, up to ``size`` bytes (b"" at its end). Raises
    TimeoutError when no byte comes for ``seconds`` (the policy's timeout), and what broke
    the answer. What has arrived already is taken without a clock."""
    part = content.read_nowait(size)
    if part or content.is_eof():
        return part
    return await within(seconds, content.read(size), lambda: TimeoutError(f"no byte of the answer for {seconds:g}s"))


async def read_answer(upstream: aiohttp.ClientResponse, limit: int, seconds: float) -> bytes:
    """The answer's body up to ``limit`` bytes, or a little more when it is longer.
    Raises AnswerBroke (``seconds`` without a byte: stalled)."""
    head = bytearray()
    try:
        while len(head) <= limit and (chunk := await read_part(upstream.content, limit + 1, seconds)):
            head += chunk
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise AnswerBroke(len(head), upstream.content_length, exc) from None
    return bytes(head)


async def peek_answer(upstream: aiohttp.ClientResponse, size: int, seconds: float) -> bytes:
    """The first ``size`` bytes of the answer's body (all of a shorter one), left in place:
    whoever reads the answer after still reads all of it. An answer that breaks off gives
    what came before; its reader finds out."""
    content = upstream.content
    head = bytearray()
    try:
        while len(head) < size and (chunk := await read_part(content, size, seconds)):
            head += chunk
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass  # the stream keeps its error: the answer's reader meets it
    finally:
        with warnings.catch_warnings():
            # unread_data is deprecated (aiohttp #3260) and has no replacement: it is the
            # one way to look at a streamed body's first bytes without taking them.
            warnings.simplefilter("ignore", DeprecationWarning)
            content.unread_data(bytes(head))
    return bytes(head[:size])


def describe_invalid(exc: BaseException, first_line: str = "status line") -> str:
    """What is wrong with a message aiohttp could not parse (an answer, or with
    ``first_line="request line"`` a request), in a fixed vocabulary: aiohttp's messages
    quote the offending bytes."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, http_exceptions.HttpProcessingError):
        cause = cause.__cause__
    # aiohttp re-raises the parser's error as a plain HttpProcessingError caused by it.
    while cause is not None and type(cause) is http_exceptions.HttpProcessingError and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, http_exceptions.LineTooLong):
        return "header too long"
    if isinstance(cause, http_exceptions.BadStatusLine):
        return f"invalid {first_line}"
    if isinstance(cause, http_exceptions.InvalidHeader):
        return "invalid header"
    if isinstance(cause, http_exceptions.TransferEncodingError):
        return "invalid chunked encoding"
    # The C parser raises BadHttpMessage for the rest; only its leading words are its own.
    words = str(getattr(cause, "message", "")).split(":", 1)[0].lower()
    for keyword, description in _PARSER_WORDS:
        if keyword in words:
            return description
    return "malformed answer"


_PARSER_WORDS = (
    ("chunk", "invalid chunked encoding"),
    ("content-length", "invalid Content-Length"),
    ("transfer-encoding", "invalid Transfer-Encoding"),
    ("status", "invalid status line"),
    ("method", "invalid method"),
    ("url", "invalid request target"),
    ("header", "invalid header"),
    ("version", "invalid HTTP version"),
)
