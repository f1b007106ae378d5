"""Specs of quantities written with units: durations (250ms, 5m), sizes (10MB), shares (5%)."""

from __future__ import annotations

import re
from typing import Any

from gateway.config.spec import Context, Spec, _ecma, _short


MAX_SECONDS = 10 * 366 * 86400.0  # ten years: anything longer is a typo
_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float | None:
    """Seconds for ``250ms``, ``10s``, ``5m``, ``1h``, ``1d`` or a plain number; None if malformed."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
            seconds = float(m.group("n")) * _DURATION_UNITS[m.group("unit")]
        else:
            return None
    except OverflowError:
        return None
    return seconds if 0 <= seconds <= MAX_SECONDS else None


class Duration(Spec):
    def __init__(self, *, positive: bool = False, description: str = "") -> None:
        self.positive = positive
        self.description = description

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        seconds = parse_duration(value)
        if seconds is None:
            return ctx.error(
                line, path, f"expected a duration such as 250ms, 10s, 5m, 1h, 1d or seconds, got {_short(value)}"
            )
        if self.positive and seconds <= 0:
            return ctx.error(line, path, "must be longer than zero")
        return seconds

    def schema(self) -> dict[str, Any]:
        return self._schema(
            {
                "oneOf": [
                    {"type": "number", "minimum": 0},
                    {"type": "string", "pattern": _ecma(_DURATION.pattern).join("^$")},
                ]
            }
        )


MAX_SIZE = 1024**4
_SIZE = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>B|KB|MB|GB|TB)", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


class Size(Spec):
    description = "bytes, or a size such as 512KB, 10MB, 1GB (units of 1024)"

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        size: int | None = None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            size = value
        elif isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
            try:
                size = int(float(m.group("n")) * _SIZE_UNITS[m.group("unit").lower()])
            except (OverflowError, ValueError):
                size = None
        if size is None or size > MAX_SIZE:
            return ctx.error(line, path, f"expected a size such as 512KB or 10MB (at most 1TB), got {_short(value)}")
        return size

    def schema(self) -> dict[str, Any]:
        return self._schema(
            {
                "oneOf": [
                    {"type": "integer", "minimum": 0},
                    {"type": "string", "pattern": r"^\d+(?:\.\d+)?\s*(?:[bB]|[kKmMgGtT][bB])$"},
                ]
            }
        )


class Percent(Spec):
    description = "a share such as 20% (or a fraction from 0 to 1)"

    def build(self, value: Any, ctx: Context, path: str, line: int) -> Any:
        share: float | None = None
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                share = float(value.strip()[:-1]) / 100
            except ValueError:
                share = None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            try:
                share = float(value)
            except OverflowError:
                share = None
        if share is None or not 0 <= share < 1:
            return ctx.error(line, path, f"expected a share from 0% to below 100%, got {_short(value)}")
        return share

    def schema(self) -> dict[str, Any]:
        return self._schema(
            {
                "oneOf": [
                    {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
                    {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
                ]
            }
        )
