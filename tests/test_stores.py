"""One contract table for the stores of gateway.storage.stores: every backend of
tests/backends.py (memory with its local store, fakeredis, a real redis-server, a Redis
Cluster) keeps tokens, breakers, auth stops, budgets, cached answers, dead letters and
notices the same way. The Lua/Python parity tables run on the same backends
(tests/core/test_budget.py, test_breaker.py, test_auth_stop.py)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from gateway.config.model import CircuitBreaker
from gateway.config.vendor_signals import AuthFailures
from gateway.core.auth_stop import OK, REJECTED
from gateway.core.breaker import CLOSED, OPEN
from gateway.core.budget import BUCKET, Adjustment, Charge
from gateway.core.dead_letter import DeadLetter
from gateway.storage import Storage
from tests.backends import Backend

BREAKER = CircuitBreaker(failure_ratio=0.5, window=60.0, min_calls=2, open_for=600.0)


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.open()  # as the gateway opens it: no ping first


async def test_a_token_is_stored_only_over_the_record_it_replaces(storage: Storage) -> None:
    assert await storage.get_token("v") is None
    assert await storage.put_token("v", b"first", None)
    assert not await storage.put_token("v", b"late", None)  # another process stored one meanwhile
    assert await storage.put_token("v", b"second", b"first")
    assert await storage.get_token("v") == b"second"


async def test_one_process_at_a_time_holds_a_vendors_refresh_lock(storage: Storage) -> None:
    fence = await storage.lock_refresh("v", 60.0)
    assert fence is not None
    assert await storage.lock_refresh("v", 60.0) is None
    await storage.unlock_refresh("v", fence)
    later = await storage.lock_refresh("v", 60.0)
    assert later is not None and later > fence


async def test_a_breaker_opens_on_failures_and_then_refuses(storage: Storage) -> None:
    assert await storage.breaker_state("v", BREAKER) == CLOSED
    for _ in range(2):
        assert (await storage.breaker_admit("v", BREAKER)).allowed
        await storage.breaker_record("v", BREAKER, True, False)
    assert await storage.breaker_state("v", BREAKER) == OPEN
    assert not (await storage.breaker_admit("v", BREAKER)).allowed


async def test_refused_credentials_stop_the_calls_until_the_credentials_change(storage: Storage) -> None:
    config = AuthFailures(statuses=frozenset({401}), after=2, probe_every=600.0)
    assert (await storage.auth_stop_peek("v")).state == OK
    assert await storage.auth_stop_record("v", config, True, False) != REJECTED
    assert await storage.auth_stop_record("v", config, True, False) == REJECTED
    refused = await storage.auth_stop_admit("v")
    assert not refused.allowed and refused.retry_after > 500
    assert (await storage.auth_stop_peek("v")).state == REJECTED
    await storage.auth_stop_clear("v")
    assert (await storage.auth_stop_admit("v")).allowed
    assert await storage.auth_stop_record("v", config, False, False) == OK


async def test_a_budget_admits_its_limit_and_gives_a_refund_back(storage: Storage) -> None:
    bucket = [Charge("b", BUCKET, limit=2, per=3600.0, cost=1)]
    first = await storage.charge_budgets("v", bucket, 0.0)
    assert first.admitted
    assert (await storage.charge_budgets("v", bucket, 0.0)).admitted
    assert not (await storage.charge_budgets("v", bucket, 0.0)).admitted
    await storage.refund_budgets("v", bucket, first.at)
    assert (await storage.charge_budgets("v", bucket, 0.0)).admitted


async def test_what_the_vendor_said_pauses_a_budget_and_lowers_what_is_left(storage: Storage) -> None:
    bucket = [Charge("b", BUCKET, limit=10, per=3600.0, cost=1)]
    lowered = await storage.adjust_budgets("v", bucket, [Adjustment(remaining=3.0)])
    assert lowered.levels[0].remaining == 3
    assert (await storage.peek_budgets("v", bucket)).levels[0].remaining == 3
    paused = await storage.adjust_budgets("v", bucket, [Adjustment(pause=600.0)])
    assert paused.levels[0].paused_for > 500
    refused = await storage.charge_budgets("v", bucket, 0.0)
    assert not refused.admitted and refused.wait > 500


async def test_a_stored_answer_is_read_with_the_generations_a_write_bumps(storage: Storage) -> None:
    await storage.cache_put("k", b"answer", 60.0)
    blob, before = await storage.cache_get("k", "v", ["rule", "path"])
    assert blob == b"answer"
    await storage.cache_invalidate("v", {"path": 60.0})
    _, after = await storage.cache_get("k", "v", ["rule", "path"])
    assert after[0] == before[0] and after[1] != before[1]


async def test_one_process_at_a_time_fetches_an_answer(storage: Storage) -> None:
    token = await storage.cache_lock("k", 60.0)
    assert token is not None
    if storage.name == "memory":  # one process: its own coalescing is all there is
        assert await storage.cache_lock("k", 60.0) is not None
        return
    assert await storage.cache_lock("k", 60.0) is None
    await storage.cache_unlock("k", "not-the-token")
    assert await storage.cache_lock("k", 60.0) is None
    await storage.cache_unlock("k", token)
    assert await storage.cache_lock("k", 60.0) is not None


async def test_a_dead_letter_is_kept_listed_claimed_and_deleted(storage: Storage) -> None:
    entry = DeadLetter(
        id=DeadLetter.new_id(1_700_000_000.0), vendor="v", caller="c", method="POST", path="/x", query=None,
        headers=[("Content-Type", "application/json")], body=b"{}", status=503, error="upstream 503",
        attempts=3, first_at=1_700_000_000.0, last_at=1_700_000_001.0,
    )
    await storage.put_dead_letter(entry)
    assert await storage.get_dead_letter(entry.id) == entry
    tried_again = dataclasses.replace(entry, attempts=4, error="upstream 502")
    assert await storage.update_dead_letter(tried_again)
    assert await storage.get_dead_letter(entry.id) == tried_again
    assert [e.id for e in await storage.list_dead_letters("v", "", 10)] == [entry.id]
    assert await storage.count_dead_letters("v") == 1
    assert await storage.claim_dead_letter(entry.id, 60.0)
    assert not await storage.claim_dead_letter(entry.id, 60.0)
    await storage.release_dead_letter(entry.id)
    assert await storage.delete_dead_letter(entry.id)
    assert await storage.get_dead_letter(entry.id) is None
    assert not await storage.update_dead_letter(entry)  # one deleted meanwhile stays deleted
    assert await storage.get_dead_letter(entry.id) is None
    assert await storage.count_dead_letters("v") == 0


async def test_one_process_sends_a_notice_while_it_is_claimed(storage: Storage) -> None:
    await storage.ping()
    assert await storage.claim_notice("storage-failing", 60.0)
    assert not await storage.claim_notice("storage-failing", 60.0)
    assert await storage.claim_notice("another", 60.0)


async def test_stats_of_every_process_add_up_per_vendor_and_window(storage: Storage) -> None:
    now = time.time()
    minute = int(now // 60)
    await storage.add_stats({("v", minute): {"requests": 3, "ok": 2, "vendor_5xx": 1},
                             ("v", minute - 30): {"requests": 1, "ok": 1}}, {"v": now - 5})
    await storage.add_stats({("v", minute): {"requests": 2, "ok": 2}, ("w", minute): {"requests": 1}},
                            {"v": now - 60})  # another process, whose latest success is older
    read = await storage.read_stats(["v", "w", "x"], [(minute - 4, minute), (minute - 59, minute)])
    assert read["v"] == ([{"requests": 5, "ok": 4, "vendor_5xx": 1}, {"requests": 6, "ok": 5, "vendor_5xx": 1}],
                         pytest.approx(now - 5))
    assert read["w"] == ([{"requests": 1}, {"requests": 1}], None)
    assert read["x"] == ([{}, {}], None)


async def test_stats_of_a_day_are_read_across_its_hours(storage: Storage) -> None:
    minute = int(time.time() // 60)
    minutes = {("v", minute - back): {"requests": 1} for back in range(0, 1500, 7)}
    await storage.add_stats(minutes, {})
    (day,), _ = (await storage.read_stats(["v"], [(minute - 1439, minute)]))["v"]
    assert day == {"requests": len(range(0, 1440, 7))}
