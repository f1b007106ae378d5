"""The stats store's commands for Redis (gateway.storage.redis runs them, in one pipeline).

Per vendor, each minute's counters are a hash (``gateway:{vendor}:stats:m:MINUTE``), and so
is each hour's sum of them (``stats:h:HOUR``), so a day reads as about 24 hours and the
minutes at its edges (gateway.core.stats.cover); every field only ever grows by HINCRBY,
so the processes' additions never overwrite one another. Each hash expires KEEP after its
own end, whoever writes it. All keys of a vendor share its hash tag, so one script call
per vendor and minute adds (stats_add.lua), and one per vendor reads and sums where the
counters are (stats_read.lua): a flush and a read are each one pipeline, sent at once.
The scripts go as EVAL, which needs no NOSCRIPT round trip in a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from typing import Any

from gateway.core.stats import KEEP, MINUTE, cover
from gateway.errors import StorageError
from gateway.storage.stores import StatsRead

HOUR = 3600
_ADD = files("gateway.storage").joinpath("lua", "stats_add.lua").read_text(encoding="utf-8")
_READ = files("gateway.storage").joinpath("lua", "stats_read.lua").read_text(encoding="utf-8")


def _key(vendor: str, part: str) -> str:
    return f"gateway:{{{vendor}}}:stats:{part}"


def queue_add(pipe: Any, minutes: Mapping[tuple[str, int], Mapping[str, int]], successes: Mapping[str, float]) -> None:
    told: set[str] = set()
    for (vendor, minute), fields in minutes.items():
        hour = minute * MINUTE // HOUR
        success = successes.get(vendor)
        last = "" if success is None or vendor in told else repr(success)
        told.add(vendor)
        keys = [_key(vendor, f"m:{minute}"), _key(vendor, f"h:{hour}"), _key(vendor, "last")]
        args: list[object] = [(minute + 1) * MINUTE + KEEP, (hour + 1) * HOUR + KEEP, last,
                              int(success or 0) + KEEP]
        for field, value in fields.items():
            args += [field, value]
        pipe.eval(_ADD, len(keys), *keys, *args)


def queue_read(pipe: Any, vendors: Sequence[str], spans: Sequence[tuple[int, int]]) -> Callable[[list[Any]], StatsRead]:
    """Queue the reads; the function that makes the pipeline's replies the answer."""
    names: list[list[str]] = []
    for first, last in spans:
        hours, ms = cover(first, last)
        names.append([*(f"h:{h}" for h in hours), *(f"m:{m}" for m in ms)])
    for vendor in vendors:
        keys = [_key(vendor, "last"), *(_key(vendor, name) for span in names for name in span)]
        pipe.eval(_READ, len(keys), *keys, *(len(span) for span in names))

    def parse(replies: list[Any]) -> StatsRead:
        found: StatsRead = {}
        for vendor, reply in zip(vendors, replies):
            try:
                last = float(reply[0]) if reply[0] else None
                sums = [{bytes(flat[i]).decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)} for flat in reply[1:]]
            except (ValueError, UnicodeDecodeError, TypeError, IndexError):
                raise StorageError(f"redis stats read failed: the stats of {vendor} are not counters") from None
            found[vendor] = (sums, last)
        return found

    return parse
