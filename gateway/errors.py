"""Every error the gateway makes, in one place.

The hierarchy::

    GatewayError                      an answer the gateway gives instead of the vendor's
    ├── BadRequest                    400 bad-request: malformed path, absolute-form target
    ├── Unauthenticated               401 unauthenticated: caller key missing or wrong
    ├── Forbidden                     403 forbidden: caller may not use this vendor
    ├── UnknownVendor                 404 unknown-vendor: no policy for the prefix
    ├── NotFound                      404 not-found: no such dead letter (admin API)
    ├── MethodNotAllowed              405 method-not-allowed: TRACE, TRACK, CONNECT
    ├── RequestTimeout                408 request-timeout: the caller's head or body too slow
    ├── Conflict                      409 replay-in-progress: a dead letter is being replayed
    ├── PayloadTooLarge               413 payload-too-large: body over max_body
    ├── InvalidConfig                 422 invalid-config: a reload refused (the old snapshot kept)
    ├── BudgetExhausted               429 budget-exhausted: a budget cannot admit in time
    ├── CallerGone                    499 caller-gone: the caller left before its answer was out
    ├── UpstreamUnavailable           502 upstream-unavailable: connection failed, answer broken
    ├── ServiceUnavailable            503 (base of the four below)
    │   ├── CircuitOpen               503 circuit-open
    │   ├── CredentialsUnavailable    503 credentials-unavailable
    │   ├── CredentialsRejected       503 credentials-rejected
    │   └── StorageUnavailable        503 storage-unavailable (on_storage_error: reject; the admin API)
    └── UpstreamTimeout               504 upstream-timeout

    ConfigError                       invalid configuration; carries every Problem found
                                      (gateway.config.problems, re-exported here)
    StorageError                      a storage backend failed; the pipeline picks the fallback

Each GatewayError knows its status and problem type and renders itself as an RFC 9457
``application/problem+json`` body, so no handler builds an error body by hand.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

# The config's own errors, re-exported so that every error is found here.
from gateway.config.problems import ConfigError as ConfigError, Problem as Problem


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal gateway error"

    def __init__(
        self,
        detail: str,
        *,
        vendor: str | None = None,
        retry_after: float | None = None,
        budget: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.vendor = vendor
        self.retry_after = retry_after
        self.budget = budget

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "vendor": self.vendor,
        }
        if self.budget is not None:
            body["budget"] = self.budget
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after_seconds()
        return body

    def headers(self) -> dict[str, str]:
        """Headers this error adds to its answer besides Retry-After."""
        return {}

    def retry_after_seconds(self) -> int | None:
        """Whole seconds for the Retry-After header, rounded up so a caller never comes back early."""
        if self.retry_after is None:
            return None
        return max(0, math.ceil(self.retry_after))


class BadRequest(GatewayError):
    status = 400
    type = "bad-request"
    title = "Bad request"


class Unauthenticated(GatewayError):
    status = 401
    type = "unauthenticated"
    title = "Caller key missing or wrong"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="gateway"'}


class Forbidden(GatewayError):
    status = 403
    type = "forbidden"
    title = "Caller may not use this vendor"


class UnknownVendor(GatewayError):
    status = 404
    type = "unknown-vendor"
    title = "No policy for this vendor"


class NotFound(GatewayError):
    status = 404
    type = "not-found"
    title = "No such entry"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "method-not-allowed"
    title = "Method not forwarded"

    def headers(self) -> dict[str, str]:
        return {"Allow": "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"}


class RequestTimeout(GatewayError):
    status = 408
    type = "request-timeout"
    title = "Request too slow"


class Conflict(GatewayError):
    status = 409
    type = "replay-in-progress"
    title = "Already being replayed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "payload-too-large"
    title = "Request body too large"


class InvalidConfig(GatewayError):
    """A reload found problems; its body lists them, each ``FILE:LINE: FIELD: message``."""

    status = 422
    type = "invalid-config"
    title = "Invalid configuration"

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s); the old config and policies stay in force")
        self.problems = problems

    def problem(self) -> dict[str, Any]:
        return {**super().problem(), "problems": self.problems}


class BudgetExhausted(GatewayError):
    status = 429
    type = "budget-exhausted"
    title = "Vendor budget exhausted"

    def __init__(self, detail: str, *, extra: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.extra = extra or {}

    def headers(self) -> dict[str, str]:
        """The budgets' RateLimit headers, as on a proxied answer."""
        return self.extra


class CallerGone(GatewayError):
    """Nobody reads this answer; it names the request in logs and metrics (nginx's 499)."""

    status = 499
    type = "caller-gone"
    title = "Caller closed the connection"


class UpstreamUnavailable(GatewayError):
    status = 502
    type = "upstream-unavailable"
    title = "Vendor unreachable"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service-unavailable"
    title = "Service unavailable"


class CircuitOpen(ServiceUnavailable):
    type = "circuit-open"
    title = "Vendor circuit open"


class CredentialsUnavailable(ServiceUnavailable):
    type = "credentials-unavailable"
    title = "No valid credential for the vendor"


class CredentialsRejected(ServiceUnavailable):
    """The vendor keeps refusing our credential: its calls are stopped (the auth stop)."""

    type = "credentials-rejected"
    title = "The vendor rejects our credential"


class StorageUnavailable(ServiceUnavailable):
    type = "storage-unavailable"
    title = "Storage unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "upstream-timeout"
    title = "Vendor timed out"


class StorageError(Exception):
    """A storage backend failed (connection, timeout, protocol)."""
