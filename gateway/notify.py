"""Telling operators (``notify.url``, a Slack-compatible incoming webhook) of trouble.

``Notifier.tell(event, vendor, text)`` never waits: at most one message per event and
vendor per 10 min in the process, then storage decides across processes (a key set only
if absent, expiring with the span), and a bounded queue feeds one background sender
(one try, a short timeout; a failure is logged at WARNING, a full queue drops). The URL
is the only host besides the vendors the gateway connects to.

``Watch`` turns what the gateway sees into events: breakers opening and closing,
credentials failing and recovering, a vendor's 1 h success rate, budgets running out
within 4 h, dead letters kept, storage falling back and recovering. Reloads call
``Notifier.reload_failed``; auth stops call ``tell("credentials_rejected", ...)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

import aiohttp

from gateway.config.secrets import Secret
from gateway.core.breaker import CLOSED, OPEN
from gateway.core.notices import SPAN, AnswerCounts, Throttle, success_verdict
from gateway.errors import StorageError
from gateway.forecast import BudgetForecasts
from gateway.storage import NoticeStore
from gateway.tokens import TokenProvider

log = logging.getLogger("gateway.notify")

QUEUE = 100
TIMEOUT = 5.0
LOOK_EVERY = 10.0  # how often Watch looks at credentials, success rates and forecasts
RUNS_OUT_WITHIN = 4 * 3600.0


class Notifier:
    def __init__(self, url: Secret | None, store: NoticeStore, *, clock: Callable[[], float] = time.time) -> None:
        self._url = url
        self._store = store
        self._clock = clock
        self._throttle = Throttle()
        self._queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue(QUEUE)
        self._sender: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def enabled(self) -> bool:
        return self._url is not None

    def tell(self, event: str, vendor: str, text: str) -> None:
        """Send ``text`` about ``vendor`` (empty for the whole gateway) in the background."""
        if self._url is None or not self._throttle.allows(event, vendor, self._clock()):
            return
        try:
            self._queue.put_nowait((event, vendor, text))
        except asyncio.QueueFull:
            log.warning("notification dropped (too many waiting): %s", text)

    def reload_failed(self, problems: str) -> None:
        self.tell("reload_failed", "", f"gateway: a reload failed, the old config stays in force: {problems}")

    def start(self) -> None:
        if self._url is not None:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                                  timeout=aiohttp.ClientTimeout(total=TIMEOUT))
            self._sender = asyncio.create_task(self._send_all(), name="notify")

    async def stop(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _send_all(self) -> None:
        while True:
            event, vendor, text = await self._queue.get()
            try:
                first = await self._store.claim_notice(f"{event}:{vendor}", SPAN)
            except StorageError:
                first = True  # told twice is better than never told
            if first:
                await self._send(text)

    async def _send(self, text: str) -> None:
        assert self._url is not None and self._session is not None
        try:
            async with self._session.post(self._url.reveal(), json={"text": text}, allow_redirects=False) as answer:
                if answer.status >= 300:
                    log.warning("notification not taken: the webhook answered %d", answer.status)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("notification not sent: %s", type(exc).__name__)


class Watch:
    """The gateway's events, as notifications (the module's docstring lists them)."""

    def __init__(self, notifier: Notifier, tokens: Mapping[str, TokenProvider], answers: AnswerCounts,
                 forecasts: BudgetForecasts) -> None:
        self._notifier = notifier
        self._tokens = tokens
        self._answers = answers
        self._forecasts = forecasts
        self._failing: set[str] = set()  # vendors whose credentials fail
        self._low: set[str] = set()  # vendors whose success rate is low
        self._breakers: dict[str, int] = {}
        self._looker: asyncio.Task[None] | None = None

    def breaker_changed(self, vendor: str, state: int) -> None:
        before = self._breakers.get(vendor, CLOSED)
        self._breakers[vendor] = state
        if state == OPEN and before != OPEN:
            self._notifier.tell("breaker_open", vendor, f"{vendor}: circuit breaker opened: calls get 503 circuit-open")
        elif state == CLOSED and before != CLOSED:
            self._notifier.tell("breaker_closed", vendor, f"{vendor}: circuit breaker closed: calls go through again")

    def credentials_rejected(self, vendor: str, rejected: bool) -> None:
        if rejected:
            self._notifier.tell("credentials_rejected", vendor,
                                f"{vendor}: the vendor refuses our credential: calls are stopped (503 "
                                "credentials-rejected), one probe now and then; put a valid credential in place")
        else:
            self._notifier.tell("credentials_accepted", vendor, f"{vendor}: the vendor takes our credential again")

    def dead_letter_kept(self, vendor: str, count: int | None) -> None:
        kept = f" ({count} kept)" if count is not None else ""
        self._notifier.tell("dead_letters", vendor,
                            f"{vendor}: failed writes are kept as dead letters{kept}; replay them once the cause is fixed")

    def storage_changed(self, answering: bool) -> None:
        if answering:
            self._notifier.tell("storage_recovered", "", "gateway: shared storage answers again")
        else:
            self._notifier.tell("storage_fallback", "", "gateway: shared storage fails: budgets follow on_storage_error")

    def start(self) -> None:
        if self._notifier.enabled:
            self._looker = asyncio.create_task(self._look_on(), name="notify-watch")

    async def stop(self) -> None:
        if self._looker is not None:
            self._looker.cancel()
            await asyncio.gather(self._looker, return_exceptions=True)

    async def _look_on(self) -> None:
        while True:
            await asyncio.sleep(LOOK_EVERY)
            try:
                self.look(time.time())
            except Exception:
                log.exception("notification watch failed; looking again shortly")

    def look(self, now: float) -> None:
        """Credentials, success rates and forecasts as they stand at ``now``."""
        for vendor, provider in self._tokens.items():
            failing = provider.status()["state"] == "failing"
            if failing and vendor not in self._failing:
                self._notifier.tell("credentials_failing", vendor, f"{vendor}: credentials failing: no token can be had")
            elif not failing and vendor in self._failing:
                self._notifier.tell("credentials_recovered", vendor, f"{vendor}: credentials recovered")
            self._failing = (self._failing | {vendor}) if failing else (self._failing - {vendor})
        for vendor in self._answers.vendors():
            answers, rate = self._answers.success_rate(vendor, now)
            low = success_verdict(answers, rate, vendor in self._low)
            if low and vendor not in self._low:
                self._low.add(vendor)
                self._notifier.tell("success_low", vendor,
                                    f"{vendor}: success rate {rate:.1%} over the last hour ({answers} answers), under 95%")
            elif not low and vendor in self._low:
                self._low.discard(vendor)
                self._notifier.tell("success_recovered", vendor, f"{vendor}: success rate back to {rate:.1%}")
        self._forecasts.refresh(now)
        for vendor, budget, seconds in self._forecasts.running_out(now):
            if seconds < RUNS_OUT_WITHIN:
                self._notifier.tell(f"budget_running_out:{budget}", vendor,
                                    f"{vendor}: budget {budget!r} runs out in {seconds / 3600:.1f} h at the last hour's rate")
