"""Time as people read it."""

from __future__ import annotations

import time


def iso_utc(epoch: float) -> str:
    """``2026-11-23T09:18:26.123Z`` for an epoch time."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1000):03d}Z"
