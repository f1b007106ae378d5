"""The stats store's commands for Redis (gateway.storage.redis runs them, in one pipeline).

Per vendor, each minute's counters are a hash (``gateway:{vendor}:stats:m:MINUTE``), and so
is each hour's sum of them (``stats:h:HOUR``), so a day reads as about 24 hours and the
minutes at its edges (gateway.core.stats.cover); every field only ever grows by HINCRBY,
so the processes' additions never overwrite one another. Each hash expires KEEP after its
own end, whoever writes it. The latest success is the score of the one member of a sorted
set, raised with ZADD GT (Redis 6.2 and later). All keys are tagged by vendor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.core.stats import KEEP, MINUTE, cover
from gateway.errors import StorageError
from gateway.storage.stores import StatsRead

HOUR = 3600


def _key(vendor: str, part: str) -> str:
    return f"gateway:{{{vendor}}}:stats:{part}"


def queue_add(pipe: Any, minutes: Mapping[tuple[str, int], Mapping[str, int]], successes: Mapping[str, float]) -> None:
    for (vendor, minute), fields in minutes.items():
        hour = minute * MINUTE // HOUR
        for name, until in ((f"m:{minute}", (minute + 1) * MINUTE + KEEP), (f"h:{hour}", (hour + 1) * HOUR + KEEP)):
            where = _key(vendor, name)
            for field, value in fields.items():
                pipe.hincrby(where, field, value)
            pipe.expireat(where, until)
    for vendor, at in successes.items():
        where = _key(vendor, "last")
        pipe.zadd(where, {"last": at}, gt=True)
        pipe.expireat(where, int(at) + KEEP)


def queue_read(pipe: Any, vendors: Sequence[str], spans: Sequence[tuple[int, int]]) -> Callable[[list[Any]], StatsRead]:
    """Queue the reads; the function that makes the pipeline's replies the answer."""
    covers = [cover(first, last) for first, last in spans]
    names = sorted({f"h:{h}" for hours, _ in covers for h in hours} | {f"m:{m}" for _, ms in covers for m in ms})
    for vendor in vendors:
        for name in names:
            pipe.hgetall(_key(vendor, name))
        pipe.zscore(_key(vendor, "last"), "last")

    def parse(replies: list[Any]) -> StatsRead:
        found: StatsRead = {}
        step = len(names) + 1
        for i, vendor in enumerate(vendors):
            part = replies[i * step : (i + 1) * step]
            try:
                read = {name: {bytes(f).decode(): int(v) for f, v in reply.items()} for name, reply in zip(names, part)}
                last = float(part[-1]) if part[-1] is not None else None
            except (ValueError, UnicodeDecodeError):
                raise StorageError(f"redis stats read failed: a counter of {vendor} is not a number") from None
            sums = []
            for hours, ms in covers:
                total: dict[str, int] = {}
                for name in [*(f"h:{h}" for h in hours), *(f"m:{m}" for m in ms)]:
                    for field, value in read[name].items():
                        total[field] = total.get(field, 0) + value
                sums.append(total)
            found[vendor] = (sums, last)
        return found

    return parse
