"""Response cache decisions, with the clock passed in: what is cacheable, the key, the
stored form of an answer, whether a stored answer is fresh, stale-but-usable or gone, and
the states of one cacheable request (``CacheStates``: fresh hit / follow a fetch / fetch /
store-and-serve / serve stale / pass by), which gateway.caching drives.

The key covers vendor, method, raw path, query (byte for byte), ``Accept`` and
``Accept-Encoding`` (the vendor may compress for one caller and not another), and a hash
of the body for POST lookups. It is a SHA-256 digest: nothing of the request, and never a
credential (credentials are added per attempt, after the key is made), appears in storage.
The headers a vendor names in ``Vary`` are recorded with the answer, and a stored answer
is used only for a request that has the same values.

Writes invalidate through generations (RFC 9111 4.4): each stored answer records the
generation of its rule and of its path that its lookup read before the fetch went out. A
successful write bumps its path's generation (every query and ``Accept`` variant of the
path at once, since none of them is named), and the generation of every rule whose
``invalidated_by`` it fits. A stored answer with an older generation than the current one
is gone, for hits and for stale_if_error alike.

A generation is a time in microseconds, and always more than the one before: a generation
kept for a while then forgotten (expired) and bumped again must still come out above every
generation an older answer recorded. A generation is kept at least as long as any answer
recorded before its bump can live: answers live ``ttl + stale_if_error`` from their lookup's
read, a generation that long (plus a margin) from its bump.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar
from urllib.parse import unquote

import orjson
from multidict import MultiMapping

from gateway.config.model import WRITE_METHODS, CacheRule

CACHEABLE_STATUSES = frozenset({200, 203, 204, 301, 404, 410})

# Headers never stored with an answer: they belong to one exchange, or are about the
# vendor's rate limits at that moment (a hit an hour later must not repeat them).
UNSTORED = frozenset({"age", "set-cookie", "retry-after"})
UNSTORED_PREFIXES = ("ratelimit", "x-ratelimit")

# Requests that ask for part of an answer, or for one only if it changed: never served
# from the cache or shared (their answers, 206 or 304, are not the resource).
PARTIAL_OR_CONDITIONAL = ("Range", "If-Range", "If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since")


def header(headers: MultiMapping[str], name: str) -> str:
    """Every value of a request header, as one (a header sent twice counts as both)."""
    return ",".join(headers.getall(name, []))


def cache_key(
    vendor: str, method: str, path: str, query: str | None, headers: MultiMapping[str], body: bytes | None
) -> str:
    parts = [
        vendor,
        method,
        path,
        "" if query is None else "?" + query,
        header(headers, "Accept"),
        header(headers, "Accept-Encoding"),
        hashlib.sha256(body or b"").hexdigest() if method == "POST" else "",
    ]
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def directives(values: Sequence[str]) -> set[str]:
    """The directive names of Cache-Control (or Pragma) header values, lowercased."""
    return {part.split("=", 1)[0].strip().lower() for value in values for part in value.split(",") if part.strip()}


def skips_read(cache_control: Sequence[str], pragma: Sequence[str]) -> bool:
    """Whether the caller asked for a fresh answer (``no-cache``; ``no-store`` too)."""
    return bool(directives(cache_control) & {"no-cache", "no-store"}) or "no-cache" in directives(pragma)


def storable(status: int, cache_control: Sequence[str], vary: Sequence[str]) -> bool:
    if status not in CACHEABLE_STATUSES:
        return False
    if "no-store" in directives(cache_control):
        return False
    return "*" not in varied_names(vary)


def varied_names(vary: Sequence[str]) -> list[str]:
    return sorted({name.strip().lower() for value in vary for name in value.split(",") if name.strip()})


# How much longer than the answers it covers a generation is kept: for clocks that run
# apart a little between the process that stores and the storage that expires.
GENERATION_MARGIN = 60.0


@dataclass(frozen=True)
class Generations:
    """The generations of a rule and a path, as a lookup read them (0: never bumped, or forgotten)."""

    rule: int = 0
    path: int = 0

    def covers(self, current: Generations) -> bool:
        """Whether an answer recorded under these is still valid now that ``current`` holds."""
        return self.rule >= current.rule and self.path >= current.path


def rule_generation(rule: CacheRule) -> str:
    """The name of a rule's generation: from its match, so a reload that keeps the match keeps it."""
    match = rule.match
    methods = ",".join(sorted(match.methods)) if match.methods is not None else "*"
    return "rule:" + hashlib.sha256(f"{methods}\0{match.path or '**'}".encode()).hexdigest()[:32]


def path_generation(path: str) -> str:
    """The name of a path's generation. Percent-decoded, so that ``a%40b.com`` and
    ``a@b.com`` share one: two spellings of one resource are both dropped by a write to
    either (different resources that decode alike only lose a hit)."""
    return "path:" + hashlib.sha256(unquote(path or "/").encode()).hexdigest()[:32]


def generation_names(rule: CacheRule, path: str) -> tuple[str, str]:
    """The generations a lookup of ``path`` under ``rule`` reads, in ``Generations`` order."""
    return rule_generation(rule), path_generation(path)


def next_generation(current: int, now: float) -> int:
    """The generation a bump sets: the time in microseconds, or one more than ``current``
    when the clock is not ahead of it."""
    return max(current + 1, int(now * 1_000_000))


def invalidations(rules: Sequence[CacheRule], method: str, path: str, status: int) -> dict[str, float]:
    """The generations a request's final answer bumps, each with how long to keep it.

    Only a write answered 2xx bumps anything. A POST that a rule caches is a lookup, not a
    write. The path's generation is bumped where some rule may have stored an answer of the
    path; a rule's where the write fits its ``invalidated_by``.
    """
    if method not in WRITE_METHODS or not 200 <= status < 300 or any(r.applies(method, path) for r in rules):
        return {}
    bumps: dict[str, float] = {}
    covering = [r.ttl + r.stale_if_error for r in rules if r.match.pattern is None or r.match.pattern.fits(path or "/")]
    if covering:
        bumps[path_generation(path)] = max(covering) + GENERATION_MARGIN
    for rule in rules:
        if any(match.fits(method, path) for match in rule.invalidated_by):
            name = rule_generation(rule)
            bumps[name] = max(bumps.get(name, 0.0), rule.ttl + rule.stale_if_error + GENERATION_MARGIN)
    return bumps


@dataclass(frozen=True)
class Entry:
    """A stored answer."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    ttl: float
    stale_if_error: float
    vary: tuple[tuple[str, str], ...] = ()  # request header (lowercase) -> value it had
    generations: Generations = Generations()  # as its lookup read them before the fetch

    def fresh(self, now: float) -> bool:
        return now < self.stored_at + self.ttl

    def usable_stale(self, now: float) -> bool:
        return now < self.stored_at + self.ttl + self.stale_if_error

    def age(self, now: float) -> int:
        return max(0, int(now - self.stored_at))

    def matches(self, headers: MultiMapping[str]) -> bool:
        return all(header(headers, name) == value for name, value in self.vary)

    @property
    def keep_for(self) -> float:
        """How long storage should keep it: fresh, then usable when the vendor fails."""
        return self.ttl + self.stale_if_error

    def to_bytes(self) -> bytes:
        head = orjson.dumps(
            {
                "status": self.status,
                "reason": self.reason,
                "headers": self.headers,
                "stored_at": self.stored_at,
                "ttl": self.ttl,
                "stale_if_error": self.stale_if_error,
                "vary": self.vary,
                "generations": (self.generations.rule, self.generations.path),
            }
        )
        return head + b"\n" + self.body

    @classmethod
    def from_bytes(cls, blob: bytes) -> Entry | None:
        """None for anything that is not a stored answer (a damaged or foreign value)."""
        head, sep, body = blob.partition(b"\n")
        if not sep:
            return None
        try:
            meta = orjson.loads(head)
            return cls(
                status=int(meta["status"]),
                reason=str(meta["reason"]),
                headers=tuple((str(k), str(v)) for k, v in meta["headers"]),
                body=body,
                stored_at=float(meta["stored_at"]),
                ttl=float(meta["ttl"]),
                stale_if_error=float(meta["stale_if_error"]),
                vary=tuple((str(k), str(v)) for k, v in meta["vary"]),
                generations=Generations(*(int(g) for g in meta.get("generations", ()))),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None


def entry_for(
    status: int,
    reason: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    request_headers: MultiMapping[str],
    vary: Sequence[str],
    now: float,
    ttl: float,
    stale_if_error: float,
) -> Entry:
    kept = tuple(
        (name, value)
        for name, value in headers
        if name.lower() not in UNSTORED and not name.lower().startswith(UNSTORED_PREFIXES)
    )
    recorded = tuple((name, header(request_headers, name)) for name in varied_names(vary))
    return Entry(status, reason, kept, body, now, ttl, stale_if_error, recorded)


# The statuses of the gateway's own errors after which a stale stored answer is served
# instead (stale_if_error): the vendor failed or could not be reached in time.
STALE_ON = frozenset({502, 503, 504})


class Label(enum.Enum):
    """How a cacheable request was answered (its X-Gateway-Cache header)."""

    HIT = "HIT"  # a fresh stored answer, no budget taken
    MISS = "MISS"  # the vendor's answer, fetched for it or for an identical request
    BYPASS = "BYPASS"  # the caller asked for a fresh answer
    STALE = "STALE"  # the vendor failed; a stored answer past its ttl went out instead


class Failure(Protocol):
    """What a fetch can end with instead of an answer: an error with a status."""

    @property
    def status(self) -> int: ...


FailureT = TypeVar("FailureT", bound=Failure)


@dataclass(frozen=True)
class Shared(Generic[FailureT]):
    """What a fetch gives those waiting for it: an answer (``label`` says how it is marked),
    or the error it failed with; neither: fetch for yourselves."""

    entry: Entry | None = None
    label: Label = Label.MISS
    failure: FailureT | None = None

    @property
    def nothing(self) -> bool:
        return self.entry is None and self.failure is None


class Step(enum.Enum):
    """What the cache step does next for a cacheable request."""

    HIT = "hit"  # serve the fresh stored answer
    COALESCE = "coalesce"  # follow the identical fetch in progress, or lead one
    FETCH = "fetch"  # ask the vendor
    STORE = "store"  # stream the vendor's answer, store it and share it
    PASS = "pass"  # stream the vendor's answer, neither stored nor shared
    STALE = "stale"  # serve the stale stored answer instead of the vendor's failure
    FAIL = "fail"  # the request fails as the fetch did


@dataclass(frozen=True)
class CacheStates:
    """The cache's decisions for one cacheable request, from what its lookup read at ``now``.

    ::

        read -> HIT (fresh)
             -> FETCH (the caller bypasses the cache)
             -> COALESCE -> follow a fetch: its answer -> served as it was shared
                                           its failure -> STALE | FAIL
                                           nothing (or a Vary mismatch) -> FETCH
        FETCH -> a gateway error -> STALE | FAIL
              -> the vendor's answer -> STALE (a 5xx) | PASS | STORE

    STALE only ever happens with a stored answer still within its ``stale_if_error``.
    """

    stored: Entry | None
    now: float
    bypass: bool

    @property
    def start(self) -> Step:
        if self.stored is not None and self.stored.fresh(self.now):
            return Step.HIT
        return Step.FETCH if self.bypass else Step.COALESCE

    @property
    def label(self) -> Label:
        """The label of an answer fetched for this request."""
        return Label.BYPASS if self.bypass else Label.MISS

    @property
    def stale(self) -> Entry | None:
        """The stored answer that may go out when the vendor fails (stale_if_error)."""
        stored = self.stored
        return stored if stored is not None and stored.usable_stale(self.now) else None

    def after_failure(self, status: int) -> Step:
        """A fetch (its own or the one it followed) ended with the gateway error ``status``."""
        return Step.STALE if self.stale is not None and status in STALE_ON else Step.FAIL

    def after_answer(self, status: int, too_large: bool, kept_as_dead_letter: bool) -> Step:
        """The vendor answered ``status``."""
        if self.stale is not None and status >= 500:
            return Step.STALE
        # A failed write is not stored; an answer too large to keep is streamed.
        return Step.PASS if too_large or kept_as_dead_letter else Step.STORE

    def after_following(self, shared: Shared[FailureT], headers: MultiMapping[str]) -> Step:
        """The fetch this request followed shared ``shared``: FETCH (its own), FAIL, STALE,
        or HIT (serve ``shared.entry`` marked ``shared.label``)."""
        if shared.failure is not None:
            return self.after_failure(shared.failure.status)
        if shared.entry is not None and shared.entry.matches(headers):
            return Step.HIT
        return Step.FETCH
