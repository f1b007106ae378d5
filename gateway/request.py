"""What one proxied request carries between the steps, and the request it makes upstream.

``RequestContext`` is small and typed, and each of its fields has one writer: routing
names the vendor, the caller step the caller, the attempts count themselves and keep the
budgets of the latest one, the cache step its X-Gateway-Cache label, and the answer
whether the caller left before its end. Labels start pessimistic, so that a request that
fails early is still counted.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict

from gateway.body import RequestBody
from gateway.budgets import Charged
from gateway.callers import ANONYMOUS
from gateway.config.model import Caller, Policy
from gateway.core.headers import CALLER_ONLY_PREFIX, NOT_FORWARDED, not_forwarded
from gateway.core.routing import Target, UnsafeTarget, parse_target
from gateway.errors import BadRequest, MethodNotAllowed, UnknownVendor

# TRACE and TRACK would echo the injected credential back to the caller; CONNECT would tunnel.
REFUSED_METHODS = frozenset({"TRACE", "TRACK", "CONNECT"})

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")


def _never_gone() -> bool:
    return False


@dataclass
class RequestContext:
    """One request as it goes through the steps (who writes which field: the docstring above)."""

    request_id: str
    started: float  # monotonic, for the request's duration
    gone: Callable[[], bool] = _never_gone  # whether the caller has disconnected
    started_at: float = field(default_factory=time.time)  # wall clock, for dead letters
    vendor: str = "unknown"
    caller: str = "unauthenticated"
    who: Caller = ANONYMOUS
    max_wait: float = 0.0  # seconds an attempt may wait for budget
    attempts: int = 0
    charged: Charged | None = None  # the budgets of the latest attempt
    cache: str | None = None  # X-Gateway-Cache on a cacheable route
    left: bool = False  # the caller left before the whole answer went out
    upstream_seconds: float = 0.0  # the attempts' time until the vendor's headers
    budget_seconds: float = 0.0  # the attempts' time held for budget


# Where the access log finds the request's context.
REQUEST_CONTEXT = web.RequestKey("gateway_context", RequestContext)


@dataclass(frozen=True)
class UpstreamRequest:
    """The request to send, as the vendor will see it less the credential (added per attempt)."""

    method: str
    target: Target
    headers: CIMultiDict[str]
    body: RequestBody

    @property
    def idempotency_key(self) -> bool:
        return "Idempotency-Key" in self.headers


def route(policies: Mapping[str, Policy], raw_path: str) -> tuple[Policy, Target]:
    """Step 1: the vendor from the first path segment, the rest of the path checked."""
    try:
        target = parse_target(raw_path)
    except UnsafeTarget as exc:
        raise BadRequest(str(exc)) from None
    policy = policies.get(target.vendor) if target else None
    if target is None or policy is None:
        name = f" {target.vendor!r}" if target else ""
        raise UnknownVendor(f"no vendor{name} is configured at this path")
    return policy, target


def refuse_method(method: str, vendor: str) -> None:
    if method in REFUSED_METHODS:
        raise MethodNotAllowed(f"{method} is not forwarded", vendor=vendor)


def request_id(request: web.BaseRequest) -> str:
    """The caller's X-Request-Id when it is a sane token, else a new one."""
    supplied = request.headers.get("X-Request-Id")
    return supplied if supplied and _REQUEST_ID.fullmatch(supplied) else new_request_id()


def new_request_id() -> str:
    """128 random bits as 32 hex digits (uuid4's form). From ``random`` (seeded from the
    system's randomness, and again in each forked worker), a third of os.urandom's cost
    (a system call): an id names a request in logs, it guards nothing."""
    return random.randbytes(16).hex()


def forward_headers(request: web.Request, request_id: str, body: RequestBody) -> CIMultiDict[str]:
    """The caller's headers as they go to the vendor: hop-by-hop and the caller's own dropped."""
    caller = request.headers
    dropped = not_forwarded(caller.getall("Connection")) if "Connection" in caller else NOT_FORWARDED
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in caller.items():
        lowered = name.lower()
        if lowered not in dropped and not lowered.startswith(CALLER_ONLY_PREFIX):
            headers.add(name, value)
    headers["X-Request-Id"] = request_id
    if not body.replayable and request.content_length is not None:
        # A streamed upload keeps its declared length instead of becoming chunked.
        headers["Content-Length"] = str(request.content_length)
    return headers
