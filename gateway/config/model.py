"""The typed, frozen configuration: the gateway file and one policy per vendor.

Each dataclass has its spec beside it; the loader builds from the specs and
``gateway schema`` prints them, so validation and the JSON Schema share one source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.config.spec import (
    AnyOf,
    Bool,
    Duration,
    Field,
    Int,
    ListOf,
    Number,
    Obj,
    Percent,
    Reporter,
    Secret,
    INVALID,
    Context,
    SecretRef,
    Size,
    Spec,
    Str,
    Tagged,
)
from gateway.config.yamlread import LineList
from gateway.core.routing import RESERVED_VENDORS, VENDOR_NAME, compile_glob

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CACHEABLE_METHODS = frozenset({"GET", "HEAD", "POST"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _check_url(value: str) -> str | None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{value!r} is not an http:// or https:// URL with a host"
    if parts.username or parts.password:
        return "must not carry user:password (use credentials)"
    if parts.query or parts.fragment:
        return "must not carry a query or fragment"
    try:
        parts.port
    except ValueError:
        return f"{value!r} has an invalid port"
    return None


def _check_glob(value: str) -> str | None:
    if not value.startswith("/"):
        return "a path glob starts with '/'"
    if any("**" in seg and seg != "**" for seg in value.split("/")):
        return "'**' must stand alone as a whole segment"
    return None


def _check_vendor(value: str) -> str | None:
    if value in RESERVED_VENDORS:
        return f"{value!r} is reserved for the gateway's own endpoints"
    return None


def _check_timezone(value: str) -> str | None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown time zone {value!r}"
    return None


def _check_listen(value: str) -> str | None:
    return None if parse_listen(value) else f"expected HOST:PORT (IPv6 as [::1]:8080), got {value!r}"


def parse_listen(value: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})", value)
    if not m or int(m.group("port")) > 65535:
        return None
    return (m.group("v6") or m.group("host")), int(m.group("port"))


def _check_storage(value: str) -> str | None:
    if value == "memory":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        return "expected memory, redis://[:password@]host:port/db or rediss://..."
    return None


URL = Str(check=_check_url, refs=True)
GLOB = Str(check=_check_glob, description="path glob after the vendor prefix: * one segment, ** any")


@dataclass(frozen=True)
class Match:
    methods: frozenset[str] | None
    path: str | None
    pattern: re.Pattern[str] | None

    def fits(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern is None or self.pattern.fullmatch(path or "/") is not None


MATCH = Obj(
    lambda methods, path: Match(
        frozenset(methods) if methods else None, path, compile_glob(path) if path else None
    ),
    {
        "methods": Field(ListOf(Str(enum=HTTP_METHODS), min_items=1)),
        "path": Field(GLOB),
    },
    description="which requests: methods (default all) and a path glob",
)


# The vendors' own signals ``follow`` may name (gateway/core/signals.py reads them).
SIGNALS = (
    "ietf",
    "x-ratelimit",
    "hubspot-interval",
    "hubspot-secondly",
    "hubspot-daily",
    "salesforce-daily",
    "apollo-minute",
    "apollo-hour",
    "apollo-day",
)


@dataclass(frozen=True)
class Follow:
    """Where a budget reads the vendor's own count: a signal by name, or a pair of headers
    (``remaining``, and ``reset`` in ``reset_unit``)."""

    remaining: str | None
    reset: str | None
    reset_unit: str
    signal: str | None = None


@dataclass(frozen=True)
class Budget:
    name: str
    limit: int
    per: float
    window: str | None
    reset: str | None
    timezone: str | None
    match: Match | None
    cost: int
    key: str
    reserve: float
    shadow: bool
    follow: Follow | None


def _check_budget(b: dict[str, Any], r: Reporter) -> None:
    if b["window"] != "fixed":
        for name in ("reset", "timezone"):
            if r.has(name):
                r.error(name, "only applies with window: fixed")
    if b["window"] == "fixed" and b["per"] > 86400 and b["per"] % 86400:
        r.error("per", "a fixed window longer than a day is a whole number of days (7d, 30d)")
    if b["cost"] > b["limit"]:
        r.error("cost", f"cost {b['cost']} is more than the limit {b['limit']}: no request could ever pass")
    elif b["cost"] > b["limit"] * (1 - b["reserve"]):
        r.error("reserve", f"a reserve of {b['reserve']:.0%} leaves less than one request's cost to callers below priority high")


HEADER_NAME = Str(pattern=r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

FOLLOW_HEADERS = Obj(
    Follow,
    {
        "remaining": Field(HEADER_NAME, required=True),
        "reset": Field(HEADER_NAME),
        "reset_unit": Field(Str(enum=("seconds", "ms", "epoch")), default="seconds"),
    },
    description="the vendor's remaining count (and reset) in headers of your choosing",
)


class _FollowSpec(Spec):
    """A vendor signal's name, or the mapping of header names."""

    description = "the vendor's own count lowers this budget, never raises it: a signal by name, or headers"

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if isinstance(value, str):
            if value not in SIGNALS:
                return ctx.error(line, path, f"unknown signal {value!r} (known: {', '.join(SIGNALS)})")
            return Follow(remaining=None, reset=None, reset_unit="seconds", signal=value)
        return FOLLOW_HEADERS.build(value, ctx, path, line)

    def schema(self) -> dict[str, Any]:
        return self._schema({"anyOf": [{"type": "string", "enum": list(SIGNALS)}, FOLLOW_HEADERS.schema()]})


BUDGET = Obj(
    Budget,
    {
        "name": Field(Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*"), required=True),
        "limit": Field(Int(minimum=1), required=True),
        "per": Field(Duration(positive=True), required=True),
        "window": Field(Str(enum=("rolling", "fixed"), description="absent: token bucket")),
        "reset": Field(Str(pattern=r"([01]\d|2[0-3]):[0-5]\d", description="HH:MM the fixed window starts")),
        "timezone": Field(Str(check=_check_timezone, description="Area/City of reset"), default=None),
        "match": Field(MATCH),
        "cost": Field(Int(minimum=1), default=1),
        "key": Field(Str(enum=("shared", "caller")), default="shared"),
        "reserve": Field(Percent(), default=0.0),
        "shadow": Field(Bool(), default=False),
        "follow": Field(_FollowSpec()),
    },
    check=_check_budget,
)


@dataclass(frozen=True)
class WhenExhausted:
    wait: float = 0.0


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    multiplier: float = 2.0
    max: float = 60.0
    jitter: float = 0.5


@dataclass(frozen=True)
class Retry:
    attempts: int = 1
    on: frozenset[int | str] = frozenset()
    backoff: Backoff = Backoff()


RETRY_WORDS = ("timeout", "connect")

RETRY = Obj(
    lambda attempts, on, backoff: Retry(attempts, frozenset(on), backoff),
    {
        "attempts": Field(Int(minimum=1, maximum=20), default=1),
        "on": Field(
            ListOf(
                AnyOf(
                    Int(minimum=400, maximum=599),
                    Str(enum=RETRY_WORDS),
                    message="must be a status from 400 to 599, timeout or connect",
                )
            ),
            default=(429, 500, 502, 503, 504, "timeout", "connect"),
        ),
        "backoff": Field(
            Obj(
                Backoff,
                {
                    "initial": Field(Duration(), default=1.0),
                    "multiplier": Field(Number(minimum=1.0), default=2.0),
                    "max": Field(Duration(), default=60.0),
                    "jitter": Field(Duration(), default=0.5),
                },
            ),
            default=Backoff(),
        ),
    },
)


@dataclass(frozen=True)
class CircuitBreaker:
    failure_ratio: float
    window: float
    min_calls: int
    open_for: float


BREAKER = Obj(
    CircuitBreaker,
    {
        "failure_ratio": Field(Number(above=0, maximum=1), default=0.5),
        "window": Field(Duration(positive=True), default=300.0),
        "min_calls": Field(Int(minimum=1), default=20),
        "open_for": Field(Duration(positive=True), default=30.0),
    },
)


MAX_PROBE_EVERY = 600.0  # the probe interval doubles up to this


@dataclass(frozen=True)
class AuthFailures:
    """When the vendor refusing our credential stops the calls: ``after`` consecutive
    answers with a status in ``statuses``; then one probe every ``probe_every``."""

    statuses: frozenset[int] = frozenset({401})
    after: int = 3
    probe_every: float = 30.0


def _check_auth_failures(a: dict[str, Any], r: Reporter) -> None:
    if 429 in a["statuses"]:
        r.error("statuses", "429 is the vendor's rate limit, not a refused credential")
    if a["probe_every"] > MAX_PROBE_EVERY:
        r.error("probe_every", "must be at most 10m (the probe interval doubles up to 10 minutes)")


AUTH_FAILURES = Obj(
    lambda statuses, after, probe_every: AuthFailures(frozenset(statuses), after, probe_every),
    {
        "statuses": Field(
            ListOf(
                Int(minimum=400, maximum=499),
                description="answers that mean the credential is refused (an empty list: never stop)",
            ),
            default=(401,),
        ),
        "after": Field(Int(minimum=1, maximum=1000, description="consecutive refusals that stop the calls"), default=3),
        "probe_every": Field(
            Duration(positive=True, description="then one request this often goes through as a probe, "
                     "the interval doubling after each refused probe up to 10m"),
            default=30.0,
        ),
    },
    check=_check_auth_failures,
    description="the vendor refusing our credential stops the calls",
)


class _OneOrList(Spec):
    """One value of ``item``, or a list of them: a tuple either way."""

    def __init__(self, item: Spec, description: str = "") -> None:
        self.items = ListOf(item, min_items=1)
        self.item = item
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        if isinstance(value, list):
            return self.items.build(value, ctx, path, line)
        built = self.item.build(value, ctx, path, line)
        return INVALID if built is INVALID else (built,)

    def schema(self) -> dict[str, Any]:
        return self._schema({"anyOf": [self.item.schema(), self.items.schema()]})


@dataclass(frozen=True)
class CacheRule:
    match: Match
    ttl: float
    stale_if_error: float
    max_size: int
    invalidated_by: tuple[Match, ...] = ()  # writes that drop every answer this rule stored

    def applies(self, method: str, path: str) -> bool:
        """GET and HEAD lookups; POST only where ``match.methods`` names it (search endpoints)."""
        if method == "POST" and (self.match.methods is None or "POST" not in self.match.methods):
            return False
        return method in CACHEABLE_METHODS and self.match.fits(method, path)


def _check_cache_rule(c: dict[str, Any], r: Reporter) -> None:
    methods = c["match"].methods
    if methods is not None and not methods <= CACHEABLE_METHODS:
        r.error("match", f"only GET, HEAD and POST lookups are cached, not {', '.join(sorted(methods - CACHEABLE_METHODS))}")
    for match in c["invalidated_by"]:
        if match.methods is not None and not match.methods <= WRITE_METHODS:
            others = ", ".join(sorted(match.methods - WRITE_METHODS))
            r.error("invalidated_by", f"only writes (POST, PUT, PATCH, DELETE) invalidate, not {others}")


CACHE_RULE = Obj(
    CacheRule,
    {
        "match": Field(MATCH, required=True),
        "ttl": Field(Duration(positive=True), required=True),
        "stale_if_error": Field(Duration(), default=0.0),
        "max_size": Field(Size(), default=1024 * 1024),
        "invalidated_by": Field(
            _OneOrList(MATCH, description="writes that, when they succeed, drop every answer this rule stored"),
            default=(),
        ),
    },
    check=_check_cache_rule,
)


@dataclass(frozen=True)
class NoCredentials:
    type: str = "none"


@dataclass(frozen=True)
class ApiKey:
    value: Secret
    header: str | None
    prefix: str
    query: str | None
    type: str = "api_key"


def _check_api_key(c: dict[str, Any], r: Reporter) -> None:
    if (c["header"] is None) == (c["query"] is None):
        r.error(None, "api_key needs exactly one of header or query")
    elif c["query"] is not None and r.has("prefix"):
        r.error("prefix", "prefix applies to a header only")


@dataclass(frozen=True)
class Bearer:
    token: Secret
    type: str = "bearer"


@dataclass(frozen=True)
class Basic:
    username: str
    password: Secret
    type: str = "basic"


@dataclass(frozen=True)
class OAuth2:
    grant: str
    token_url: str
    client_id: str
    client_secret: Secret
    refresh_token: Secret | None
    scope: str | None
    auth_method: str
    refresh_before: float
    type: str = "oauth2"


def _check_oauth2(c: dict[str, Any], r: Reporter) -> None:
    if c["grant"] == "refresh_token" and c["refresh_token"] is None:
        r.error("refresh_token", "required with grant: refresh_token")
    if c["grant"] == "client_credentials" and r.has("refresh_token"):
        r.error("refresh_token", "not used with grant: client_credentials")


@dataclass(frozen=True)
class JwtBearer:
    token_url: str
    issuer: str
    subject: str | None
    audience: str
    private_key: Secret
    algorithm: str
    lifetime: float
    scope: str | None
    refresh_before: float
    type: str = "jwt_bearer"


Credentials = NoCredentials | ApiKey | Bearer | Basic | OAuth2 | JwtBearer

CREDENTIALS = Tagged(
    "type",
    {
        "none": Obj(NoCredentials, {}),
        "api_key": Obj(
            ApiKey,
            {
                "value": Field(SecretRef(), required=True),
                "header": Field(HEADER_NAME),
                "prefix": Field(Str(), default=""),
                "query": Field(Str(pattern=r"[A-Za-z0-9_.~-]+")),
            },
            check=_check_api_key,
        ),
        "bearer": Obj(Bearer, {"token": Field(SecretRef(), required=True)}),
        "basic": Obj(
            Basic,
            {"username": Field(Str(refs=True), required=True), "password": Field(SecretRef(), required=True)},
        ),
        "oauth2": Obj(
            OAuth2,
            {
                "grant": Field(Str(enum=("refresh_token", "client_credentials")), required=True),
                "token_url": Field(URL, required=True),
                "client_id": Field(Str(refs=True), required=True),
                "client_secret": Field(SecretRef(), required=True),
                "refresh_token": Field(SecretRef()),
                "scope": Field(Str()),
                "auth_method": Field(
                    Str(enum=("client_secret_post", "client_secret_basic")), default="client_secret_post"
                ),
                "refresh_before": Field(Duration(), default=300.0),
            },
            check=_check_oauth2,
        ),
        "jwt_bearer": Obj(
            JwtBearer,
            {
                "token_url": Field(URL, required=True),
                "issuer": Field(Str(refs=True), required=True),
                "subject": Field(Str(refs=True)),
                "audience": Field(Str(refs=True), required=True),
                "private_key": Field(SecretRef(), required=True),
                "algorithm": Field(Str(enum=("RS256", "ES256")), default="RS256"),
                "lifetime": Field(Duration(positive=True), default=180.0),
                "scope": Field(Str()),
                "refresh_before": Field(Duration(), default=60.0),
            },
        ),
    },
    default="none",
    description="how the gateway authenticates to the vendor",
)


@dataclass(frozen=True)
class Upstream:
    """The vendor's origin (scheme://host[:port]) and the base path every request is put under."""

    url: str
    origin: str
    base_path: str
    host: str


def _upstream(url: str) -> Upstream:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    return Upstream(url=url, origin=origin, base_path=parts.path.rstrip("/"), host=parts.netloc)


@dataclass(frozen=True)
class Policy:
    vendor: str
    upstream: Upstream
    timeout: float
    credentials: Credentials
    budgets: tuple[Budget, ...]
    when_exhausted: WhenExhausted
    retry: Retry
    circuit_breaker: CircuitBreaker | None
    cache: tuple[CacheRule, ...]
    dead_letter: bool
    auth_failures: AuthFailures = AuthFailures()
    refund_on: frozenset[int] = frozenset()  # the vendor's refusals it does not charge: their charge goes back
    source: str = ""

    @property
    def signals(self) -> frozenset[str]:
        """The vendor signals its budgets follow."""
        return frozenset(b.follow.signal for b in self.budgets if b.follow is not None and b.follow.signal)


def _check_policy(p: dict[str, Any], r: Reporter) -> None:
    seen: set[str] = set()
    for budget in p["budgets"]:
        if budget.name in seen:
            r.error("budgets", f"two budgets are named {budget.name!r}")
        seen.add(budget.name)


POLICY = Obj(
    lambda upstream, refund_on, **rest: Policy(upstream=_upstream(upstream), refund_on=frozenset(refund_on), **rest),
    {
        "vendor": Field(
            Str(pattern=VENDOR_NAME.pattern, check=_check_vendor, description="URL prefix: /{vendor}/..."),
            required=True,
        ),
        "upstream": Field(URL, required=True),
        "timeout": Field(Duration(positive=True), default=30.0),
        "credentials": Field(CREDENTIALS, default=NoCredentials()),
        "budgets": Field(ListOf(BUDGET), default=()),
        "when_exhausted": Field(Obj(WhenExhausted, {"wait": Field(Duration(), default=0.0)}), default=WhenExhausted()),
        "retry": Field(RETRY, default=Retry()),
        "circuit_breaker": Field(BREAKER),
        "cache": Field(ListOf(CACHE_RULE), default=()),
        "dead_letter": Field(Bool(), default=False),
        "auth_failures": Field(AUTH_FAILURES, default=AuthFailures()),
        "refund_on": Field(
            ListOf(
                Int(minimum=400, maximum=599),
                description="statuses the vendor does not charge against its limits (ZoomInfo: [429]): "
                "the budgets get the request's charge back",
            ),
            default=(),
        ),
    },
    check=_check_policy,
    description="one vendor's policy for the gateway",
)


@dataclass(frozen=True)
class Caller:
    name: str
    key: Secret
    vendors: frozenset[str] | None  # None: every vendor
    priority: str

    def may_use(self, vendor: str) -> bool:
        return self.vendors is None or vendor in self.vendors


CALLER = Obj(
    lambda name, key, vendors, priority: Caller(
        name, key, None if "*" in vendors else frozenset(vendors), priority
    ),
    {
        "name": Field(Str(pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*"), required=True),
        "key": Field(SecretRef(), required=True),
        "vendors": Field(ListOf(Str(pattern=r"\*|" + VENDOR_NAME.pattern), min_items=1), default=("*",)),
        "priority": Field(Str(enum=("high", "normal", "low")), default="normal"),
    },
)


@dataclass(frozen=True)
class Config:
    listen: str
    workers: int
    policies: str
    storage: str
    redis_cluster: bool
    on_storage_error: str
    max_body: int
    data_dir: str
    secret_key: Secret | None
    cache_max: int
    admin_key: Secret | None
    allow_anonymous: bool
    callers: tuple[Caller, ...]
    drain: float
    header_timeout: float
    keepalive_timeout: float
    source: str = ""

    @property
    def address(self) -> tuple[str, int]:
        parsed = parse_listen(self.listen)
        assert parsed is not None
        return parsed

    def relative(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder (or the current one)."""
        p = Path(path)
        if p.is_absolute() or not self.source:
            return p
        return Path(self.source).parent / p


def _check_config(c: dict[str, Any], r: Reporter) -> None:
    if c["workers"] > 1 and c["storage"] == "memory":
        r.error(
            "workers",
            "workers > 1 needs shared storage: with storage: memory each process would keep its own "
            "budgets, breaker and tokens (and race to rotate refresh tokens); use storage: redis://...",
        )
    names: set[str] = set()
    keys: set[str] = set()
    raw_callers = r.value.get("callers")
    lines = raw_callers.lines if isinstance(raw_callers, LineList) else []
    for i, caller in enumerate(c["callers"]):
        line = lines[i] if i < len(lines) else r.value.line
        if caller.name in names:
            r.error_at(line, f"callers[{i}].name", f"two callers are named {caller.name!r}")
        if caller.key.reveal() in keys:
            r.error_at(line, f"callers[{i}].key", f"caller {caller.name!r} has the same key as another caller")
        names.add(caller.name)
        keys.add(caller.key.reveal())
        known = r.ctx.vendors
        for vendor in sorted(caller.vendors or ()):
            if known is not None and vendor not in known:
                r.error_at(line, f"callers[{i}].vendors", f"no policy for vendor {vendor!r}")


CONFIG = Obj(
    Config,
    {
        "listen": Field(Str(check=_check_listen), default="127.0.0.1:8080"),
        "workers": Field(Int(minimum=1, maximum=256), default=1),
        "policies": Field(Str(), default="./policies"),
        "storage": Field(Str(check=_check_storage, refs=True), default="memory"),
        "redis_cluster": Field(Bool(), default=False),
        "on_storage_error": Field(Str(enum=("local", "reject", "allow")), default="local"),
        "max_body": Field(Size(), default=10 * 1024**2),
        "data_dir": Field(Str(), default="./data"),
        "secret_key": Field(SecretRef()),
        "cache_max": Field(Size(), default=256 * 1024**2),
        "admin_key": Field(SecretRef()),
        "allow_anonymous": Field(Bool(), default=False),
        "callers": Field(ListOf(CALLER), default=()),
        "drain": Field(Duration(description="how long SIGTERM waits for in-flight requests"), default=30.0),
        "header_timeout": Field(
            Duration(positive=True, description="a caller must send its request head within this, and never "
                     "pause its body longer; else 408 and the connection is closed"),
            default=10.0,
        ),
        "keepalive_timeout": Field(
            Duration(positive=True, description="how long an idle keep-alive connection of a caller is kept"),
            default=75.0,
        ),
    },
    check=_check_config,
    description="the gateway's own configuration (gateway.yaml)",
)
