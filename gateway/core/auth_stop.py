"""The auth stop's state machine, pure: the clock is passed in.

The vendor refusing our credential again and again means it will keep refusing it, and
vendors lock accounts that keep sending bad credentials. So:

    ok ──refusal──> counting ──(``after`` consecutive refusals)──> rejected
    counting ──an answer that is not a refusal──> ok
    rejected: requests are refused at once (with Retry-After), except one probe per
              interval (``probe_every`` at first)
    rejected ──probe refused──> rejected, the next probe after twice the interval (≤ 10 min)
    rejected ──an answer that is not a refusal (the probe's, or one sent before the stop)──> ok
    any ──credentials changed (a reload)──> ok

A refusal is an answer whose status is in ``auth_failures.statuses``; for OAuth2 and JWT
vendors the driver feeds only the refusals left after its refresh-and-retry, and never a
quota refusal (core.signals.is_quota_refusal). Exactly one probe is out at a time; one
whose answer never comes (its process died) frees its place after the interval.
The Redis script ``auth_stop.lua`` implements the same transitions for shared state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.config.vendor_signals import MAX_PROBE_EVERY, AuthFailures

OK, COUNTING, REJECTED = 0, 1, 2  # the values of a credentials-state gauge
STATE_NAMES = {OK: "ok", COUNTING: "counting", REJECTED: "rejected"}
MAX_PROBE_INTERVAL = MAX_PROBE_EVERY


@dataclass(frozen=True)
class Admission:
    allowed: bool
    probe: bool = False
    retry_after: float = 0.0
    state: int = OK


@dataclass(frozen=True)
class Standing:
    """The stop as status shows it: the state, whether a probe is out, and how long until
    a request may go (the next probe; 0 unless stopped)."""

    state: int
    probing: bool = False
    retry_after: float = 0.0


@dataclass
class AuthStopState:
    refusals: int = 0  # consecutive refusals counted (those that stopped the calls, once stopped)
    next_probe: float = 0.0  # 0: the calls are not stopped; else when the next probe may go
    interval: float = 0.0  # while stopped: the wait between probes
    probing_until: float = 0.0  # a probe is out until then

    def state(self) -> int:
        if self.next_probe:
            return REJECTED
        return COUNTING if self.refusals else OK

    def peek(self, now: float) -> Standing:
        if not self.next_probe:
            return Standing(self.state())
        return Standing(REJECTED, now < self.probing_until, max(0.0, self.next_probe - now, self.probing_until - now))

    def admit(self, now: float) -> Admission:
        """Whether a request may go to the vendor now; while stopped, only as the probe."""
        if not self.next_probe:
            return Admission(True, state=self.state())
        if now < self.probing_until:
            return Admission(False, retry_after=self.probing_until - now, state=REJECTED)
        if now < self.next_probe:
            return Admission(False, retry_after=self.next_probe - now, state=REJECTED)
        self.probing_until = now + self.interval
        return Admission(True, probe=True, state=REJECTED)

    def record(self, config: AuthFailures, now: float, refused: bool, probe: bool) -> int:
        """Count one answer of the vendor (``refused``: its status is in the statuses); the
        state after it."""
        if not refused:
            self.credentials_changed()
            return OK
        if self.next_probe:
            if probe:
                self.probing_until = 0.0
                self.interval = min(self.interval * 2, MAX_PROBE_INTERVAL)
                self.next_probe = now + self.interval
            return REJECTED
        self.refusals += 1
        if self.refusals < config.after:
            return COUNTING
        self.interval = config.probe_every
        self.next_probe = now + self.interval
        return REJECTED

    def unanswered(self, now: float, probe: bool) -> int:
        """A probe that got no answer (no connection, a timeout) says nothing of the
        credential: the next probe goes after the same interval."""
        if probe and self.next_probe:
            self.probing_until = 0.0
            self.next_probe = now + self.interval
        return self.state()

    def credentials_changed(self) -> None:
        """Back to ok: the credentials changed (a reload), or the vendor took them (an
        answer that was not a refusal)."""
        self.refusals, self.next_probe, self.interval, self.probing_until = 0, 0.0, 0.0, 0.0

    def to_record(self) -> dict[str, object]:
        """The state as plain JSON values, to be kept across a restart. A probe out is not
        kept: after a restart no answer to it can come, so the next request may probe."""
        return {"refusals": self.refusals, "next_probe": self.next_probe, "interval": self.interval}

    @classmethod
    def from_record(cls, record: object) -> AuthStopState:
        """A state read back from ``to_record``; ValueError for anything else."""
        if not isinstance(record, dict):
            raise ValueError("not an auth stop state")
        refusals = record.get("refusals")
        if type(refusals) is not int or refusals < 0:
            raise ValueError(f"refusals {refusals!r} is not a count")
        next_probe, interval = _time(record.get("next_probe")), _time(record.get("interval"))
        if next_probe and not 0 < interval <= MAX_PROBE_INTERVAL:
            raise ValueError(f"a stop needs a probe interval up to {MAX_PROBE_INTERVAL:g}s, not {interval!r}")
        return cls(refusals=refusals, next_probe=next_probe, interval=interval if next_probe else 0.0)

    def lasts_until(self) -> float:
        """When the state stops mattering: never while counting or stopped (consecutive
        refusals stay consecutive however far apart); at once when ok."""
        return 0.0 if self.state() == OK else math.inf


def _time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} is not a time")
    return float(value)
