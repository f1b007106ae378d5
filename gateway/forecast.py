"""Each budget's forecast: when it runs out at the last hour's rate, as the gauge
gateway_budget_exhaustion_seconds (absent when it does not run out), in
/_gateway/status (``exhausts_in``) and for the notifications.

The rate is what this process charged, times the number of workers (they share the
callers); the level is the shared one, as storage last told it. A budget kept per caller
forecasts the caller who runs out first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.config.model import Budget
from gateway.core.budget import BUCKET, Charge, Level
from gateway.core.forecast import Consumption, exhausts_in
from gateway.metrics import Metrics

# The gauge is brought up to date at most this often per budget: a request's cost stays flat.
REFRESH = 1.0


@dataclass
class _Spent:
    consumption: Consumption = field(default_factory=Consumption)
    level: Level | None = None
    seen_at: float = 0.0  # when the level was read


@dataclass
class _Forecast:
    budget: Budget
    kind: str
    keys: dict[str, _Spent] = field(default_factory=dict)
    updated: float = -math.inf


class BudgetForecasts:
    def __init__(self, metrics: Metrics, workers: int) -> None:
        self._metrics = metrics
        self._workers = workers
        self._budgets: dict[tuple[str, str], _Forecast] = {}

    def charged(self, vendor: str, budgets: tuple[Budget, ...], charges: tuple[Charge, ...],
                levels: tuple[Level, ...], now: float | None = None) -> None:
        """A request was admitted with these charges and left the budgets at these levels."""
        now = time.time() if now is None else now
        for budget, charge, level in zip(budgets, charges, levels):
            if charge.kind == BUCKET:
                continue
            forecast = self._of(vendor, budget, charge.kind)
            spent = forecast.keys.setdefault(charge.key, _Spent())
            spent.consumption.add(charge.cost, now)
            spent.level, spent.seen_at = level, now
            if now - forecast.updated >= REFRESH:
                self._publish(vendor, forecast, now)

    def exhausts_in(self, vendor: str, budget: Budget, level: Level, key: str, now: float | None = None) -> float | None:
        """Seconds until ``budget`` (at ``level``, the one of ``key``) runs out; None when it does not."""
        now = time.time() if now is None else now
        forecast = self._budgets.get((vendor, budget.name))
        spent = forecast.keys.get(key) if forecast is not None else None
        if forecast is None or spent is None:
            return None
        rate = spent.consumption.rate(now) * self._workers
        return exhausts_in(forecast.kind, budget.limit, budget.per, level.remaining, level.reset, rate)

    def refresh(self, now: float | None = None) -> None:
        """Bring every gauge up to date (the rate falls when traffic stops)."""
        now = time.time() if now is None else now
        for (vendor, _), forecast in self._budgets.items():
            self._publish(vendor, forecast, now)

    def running_out(self, now: float | None = None) -> Iterator[tuple[str, str, float]]:
        """(vendor, budget, seconds) for each budget that runs out."""
        now = time.time() if now is None else now
        for (vendor, name), forecast in self._budgets.items():
            seconds = self._soonest(forecast, now)
            if seconds is not None:
                yield vendor, name, seconds

    def _of(self, vendor: str, budget: Budget, kind: str) -> _Forecast:
        forecast = self._budgets.get((vendor, budget.name))
        if forecast is None or forecast.budget is not budget:  # new, or a reload's other policy
            forecast = self._budgets[(vendor, budget.name)] = _Forecast(budget, kind)
        return forecast

    def _soonest(self, forecast: _Forecast, now: float) -> float | None:
        soonest: float | None = None
        for spent in forecast.keys.values():
            if spent.level is None:
                continue
            # The level was read a while ago: its reset is that much nearer now.
            level = Level(spent.level.remaining, max(0.0, spent.level.reset - (now - spent.seen_at)))
            rate = spent.consumption.rate(now) * self._workers
            budget = forecast.budget
            seconds = exhausts_in(forecast.kind, budget.limit, budget.per, level.remaining, level.reset, rate)
            if seconds is not None and (soonest is None or seconds < soonest):
                soonest = seconds
        return soonest

    def _publish(self, vendor: str, forecast: _Forecast, now: float) -> None:
        forecast.updated = now
        gauge = self._metrics.budget_exhaustion
        seconds = self._soonest(forecast, now)
        if seconds is not None:
            gauge.labels(vendor, forecast.budget.name).set(seconds)
            return
        # With workers the value lives on in this process's file: NaN there compares false
        # in every alert, where the last finite figure would keep one firing.
        gauge.labels(vendor, forecast.budget.name).set(math.nan)
        gauge.remove(vendor, forecast.budget.name)
