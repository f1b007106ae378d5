"""The budget script's side of gateway.storage.redis: a call's charges as the script reads
them (packed once for the wire), and what this process keeps of each budget from the
replies, to put back in a Redis that lost them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.core.budget import EPSILON, Adjustment, BudgetState, Charge, prune
from gateway.storage.redis_wire import bulk

NOTHING_SAID = ["", "", "", "", ""]  # a budget call's adjustment and restore fields, for no adjustment
CHARGE_FIELDS = 10  # per budget in a budget call, before its adjustment and restore fields
NOTHING_PACKED = "".join(map(bulk, NOTHING_SAID))
LEVEL_FIELDS = 8  # per key in a budget reply: remaining, reset, paused_for, exceeded, tat, paused, used, counts


@dataclass
class BudgetView:
    """What this process last saw of one budget in Redis: each slot's count as of its last
    charge there, and the whole count as of its last call (``used`` at ``seen``)."""

    charge: Charge
    state: BudgetState
    seen: float = 0.0
    used: float = 0.0

    def field(self) -> str:
        """As the script's restore reads it: "tat,paused,seen,used,slot:units,..."."""
        counts = "".join(f",{slot}:{units!r}" for slot, units in self.state.counts.items())
        return f"{self.state.tat!r},{self.state.paused!r},{self.seen!r},{self.used!r}{counts}"

    def see(self, tat: float, paused: float, used: float, changed: str, now: float, every: bool) -> None:
        """Take in a reply: ``changed`` has the counts the call changed, or ``every`` one."""
        self.state.tat, self.state.paused, self.used, self.seen = tat, paused, used, now
        if every:
            self.state.counts.clear()
        if not changed:  # a bucket's, or a call that changed no count
            return
        counts, started = self.state.counts, False
        for item in changed.split(","):
            slot, units = item.split(":")
            if float(units) > EPSILON:
                started = started or int(slot) not in counts
                counts[int(slot)] = float(units)
            else:
                counts.pop(int(slot), None)
        if started:  # a slot (or window) began: those that stopped counting go
            prune(self.charge, self.state, now)


class PackedCharges(NamedTuple):
    """What the wire sends of a budget call's charges: the keys (with their count), each
    charge's arguments, and those followed by no adjustment, as a charge sends them."""

    charges: tuple[Charge, ...]  # held, so that no other charge takes their ids meanwhile
    keys: bytes
    args: tuple[str, ...]
    nothing_said: bytes

    @classmethod
    def of(cls, keys: Sequence[str], charges: Sequence[Charge]) -> PackedCharges:
        """``keys``: the script's, each charge's then the vendor's epoch."""
        args = tuple("".join(map(bulk, charge_args(c))) for c in charges)
        return cls(
            tuple(charges),
            f"{bulk(str(len(keys)))}{''.join(map(bulk, keys))}".encode(),
            args,
            "".join(a + NOTHING_PACKED for a in args).encode(),
        )


def charge_args(c: Charge) -> list[str]:
    """A charge as the budget script reads it (its CHARGE_FIELDS, before the call's own)."""
    return [c.kind, repr(c.limit), repr(c.per), str(c.cost), repr(c.held), "1" if c.shadow else "0",
            *map(repr, c.window), repr(c.margin)]


def adjustment_fields(said: Adjustment) -> list[str]:
    """What the vendor said, as the script's pause, remaining, reset and spent fields."""
    fields = ["" if v is None else repr(v) for v in (said.pause, said.remaining, said.reset)]
    return [*fields, ",".join(f"{at!r}:{units!r}" for at, units in said.spent)]
