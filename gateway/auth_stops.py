"""Each vendor's auth stop (gateway.core.auth_stop), kept in storage so that with Redis
every process stops calling a vendor that refuses our credential, and resumes, together.

``admit`` runs beside the breaker for every attempt; ``record`` takes each request's
final answer (for OAuth2/JWT the one after the refresh-and-retry), ``unanswered`` an
attempt with no answer. While storage fails (its ``health`` decides, as for budgets and
breakers) each process decides with a stop of its own, started from what storage last
showed, and dropped once storage answers again.

While storage shows a vendor's credential taken with nothing counted (the common case),
``admit`` answers from what it last showed for up to ``HELD`` seconds without a round
trip (``held`` gives that answer without an await): a stop that another process starts
reaches this one within that time, and any refusal or stop this process sees itself
ends the holding at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from gateway.config.model import Policy
from gateway.core.auth_stop import OK, REJECTED, Admission, AuthStopState, Standing
from gateway.errors import CredentialsRejected, StorageError
from gateway.metrics import Metrics
from gateway.storage import AuthStopStore

log = logging.getLogger("gateway.auth")

# gateway_credential_state's values (examples/prometheus/alerts.yaml reads them).
OK_GAUGE, FAILING_GAUGE, REJECTED_GAUGE = 0, 1, 2
# How long storage's "taken, nothing counted" is held before it is asked again.
HELD = 1.0
ADMITTED = Admission(True)


class AuthStops:
    def __init__(
        self, storage: AuthStopStore, metrics: Metrics, failing: Mapping[str, Callable[[], bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``failing``: per vendor, whether its token endpoint fails (always False for a
        static credential), for gateway_credential_state, created here for each."""
        self._storage = storage
        self._clock = clock
        self._clear_until: dict[str, float] = {}  # per vendor: admitted without asking until then
        self._not_clear: dict[str, int] = {}  # per vendor: how often a state other than OK was seen
        self._metrics = metrics
        self._failing = failing
        self._local: dict[str, AuthStopState] = {}
        self._seen: dict[str, int] = {}  # per vendor: the state last seen
        self._rejected_until: dict[str, float] = {}  # per vendor: no request before then, as last seen
        self._listeners: list[Callable[[str, bool], None]] = []
        storage.health.watch(self._storage_changed)
        self.refresh_gauges()

    def held(self, policy: Policy) -> Admission | None:
        """``admit``'s answer when it needs no storage call (no refusal stops the vendor's
        calls, or storage's "taken, nothing counted" is still held), else None: the
        driver awaits ``admit`` only then."""
        if not policy.auth_failures.statuses:
            return ADMITTED
        until = self._clear_until.get(policy.vendor)
        return ADMITTED if until is not None and self._clock() < until else None

    async def admit(self, policy: Policy) -> Admission:
        """Whether this attempt may go (and whether it is the probe); CredentialsRejected
        while the vendor's calls are stopped."""
        held = self.held(policy)
        if held is not None:
            return held
        vendor = policy.vendor
        now = self._clock()
        if vendor in self._clear_until:  # held, and the time is up
            self._clear_until[vendor] = now + HELD  # the admits while this one asks hold on too
        seen = self._not_clear.get(vendor, 0)
        try:
            admission = await self._storage.auth_stop_admit(vendor)
        except StorageError:
            self._clear_until.pop(vendor, None)
            admission = self._fallback(policy).admit(time.time())
        else:
            if admission.state == OK and self._not_clear.get(vendor, 0) == seen:  # no refusal came meanwhile
                self._clear_until[vendor] = now + HELD
        if admission.state == REJECTED and not admission.allowed:
            self._rejected_until[vendor] = time.time() + admission.retry_after
        self._changed(vendor, admission.state)
        if not admission.allowed:
            raise CredentialsRejected(
                f"{vendor} keeps refusing our credential: its calls are stopped; "
                f"the next probe is in {admission.retry_after:.0f}s",
                vendor=vendor,
                retry_after=admission.retry_after,
            )
        return admission

    @staticmethod
    def counts(policy: Policy, admission: Admission, status: int) -> bool:
        """Whether ``record`` has anything to do with this answer: one that is no refusal,
        sent while nothing was counted, changes nothing (the driver skips the await)."""
        statuses = policy.auth_failures.statuses
        return bool(statuses) and (status in statuses or admission.state != OK)

    async def record(self, policy: Policy, admission: Admission, status: int) -> None:
        """A request's final answer. One that ``counts`` does not count changes nothing
        and costs no storage call."""
        if not self.counts(policy, admission, status):
            return
        config = policy.auth_failures
        refused = status in config.statuses
        vendor = policy.vendor
        try:
            state = await self._storage.auth_stop_record(vendor, config, refused, admission.probe)
        except StorageError:
            state = self._fallback(policy).record(config, time.time(), refused, admission.probe)
        self._changed(vendor, state, status)

    async def unanswered(self, policy: Policy, admission: Admission) -> None:
        """An attempt that got no answer (no connection, a timeout): it says nothing of the
        credential; a probe's place is freed for the next one after the same interval."""
        if not admission.probe:
            return
        try:
            state = await self._storage.auth_stop_unanswered(policy.vendor, True)
        except StorageError:
            state = self._fallback(policy).unanswered(time.time(), True)
        self._changed(policy.vendor, state)

    async def credentials_changed(self, vendor: str) -> None:
        """The vendor's credentials changed (a reload): its stop ends."""
        self._local.pop(vendor, None)
        self._rejected_until.pop(vendor, None)
        try:
            await self._storage.auth_stop_clear(vendor)
        except StorageError:
            log.warning("%s: the end of its auth stop could not be stored; storage failing", vendor)
        if self._seen.get(vendor, OK) == REJECTED:
            log.warning("%s: credentials changed, its calls go again", vendor)
        self._changed(vendor, OK)

    async def standing(self, policy: Policy) -> Standing:
        """The stop as /_gateway/status shows it."""
        try:
            return await self._storage.auth_stop_peek(policy.vendor)
        except StorageError:
            return self._fallback(policy).peek(time.time())

    def refresh_gauges(self) -> None:
        """Set gateway_credential_state for every vendor (before /metrics is read: a token
        endpoint's failing state changes without a word to us)."""
        for vendor in self._failing:
            self._set_gauge(vendor)

    def _set_gauge(self, vendor: str) -> None:
        failing = self._failing.get(vendor)
        if self._seen.get(vendor, OK) == REJECTED:
            value = REJECTED_GAUGE
        else:
            value = FAILING_GAUGE if failing is not None and failing() else OK_GAUGE
        self._metrics.credential_state.labels(vendor).set(value)

    def watch(self, listener: Callable[[str, bool], None]) -> None:
        """Call ``listener(vendor, rejected)`` when a vendor's stop starts or ends here."""
        self._listeners.append(listener)

    def _changed(self, vendor: str, state: int, status: int | None = None) -> None:
        before = self._seen.get(vendor, OK)
        self._seen[vendor] = state
        if state != OK:
            self._clear_until.pop(vendor, None)
            self._not_clear[vendor] = self._not_clear.get(vendor, 0) + 1
        if state == REJECTED and before != REJECTED and status is not None:
            log.error("%s refused our credential (%d) too many times in a row: its calls are stopped, "
                      "one probe goes now and then; put a valid credential in place and reload", vendor, status)
            for listener in self._listeners:
                listener(vendor, True)
        elif state != REJECTED and before == REJECTED:
            self._rejected_until.pop(vendor, None)
            log.warning("%s takes our credential again: its calls go again", vendor)
            for listener in self._listeners:
                listener(vendor, False)
        if state != before:
            self._set_gauge(vendor)

    def _fallback(self, policy: Policy) -> AuthStopState:
        vendor = policy.vendor
        local = self._local.get(vendor)
        if local is None:
            local = self._local[vendor] = AuthStopState()
            until = self._rejected_until.get(vendor)
            if self._seen.get(vendor) == REJECTED and until is not None:
                interval = policy.auth_failures.probe_every
                local.refusals, local.interval, local.next_probe = policy.auth_failures.after, interval, until
        return local

    def _storage_changed(self, answering: bool) -> None:
        if answering:
            self._local.clear()
