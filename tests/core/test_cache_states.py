"""The states of one cacheable request (gateway.core.cache.CacheStates), with the clock
passed in. The stale rule (stale_if_error) is tested here and only here."""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.core.cache import CacheStates, Entry, Label, Shared, Step, entry_for

# Stored at 1000: fresh until 1060, usable when the vendor fails until 1090.
STORED = entry_for(200, "OK", [], b"{}", CIMultiDict({"Accept-Language": "de"}), ["Accept-Language"],
                   now=1000.0, ttl=60, stale_if_error=30)


@dataclass
class Failed:
    status: int


def states(now: float, stored: Entry | None = STORED, bypass: bool = False) -> CacheStates:
    return CacheStates(stored, now, bypass)


def test_a_fresh_stored_answer_is_a_hit_and_a_miss_coalesces_or_bypasses():
    assert states(1059.9).start is Step.HIT
    assert states(1060.0).start is Step.COALESCE and states(1060.0).label is Label.MISS
    assert states(1000.0, stored=None).start is Step.COALESCE
    bypass = states(1000.0, stored=None, bypass=True)
    assert bypass.start is Step.FETCH and bypass.label is Label.BYPASS


def test_a_stale_answer_goes_out_only_within_stale_if_error_and_only_for_the_vendors_failures():
    assert states(1089.9).stale is STORED and states(1090.0).stale is None
    for status in (502, 503, 504):
        assert states(1089.9).after_failure(status) is Step.STALE
        assert states(1090.0).after_failure(status) is Step.FAIL
        assert states(1000.0, stored=None).after_failure(status) is Step.FAIL
    for status in (400, 429, 500):  # the caller's fault, a budget, our own bug: no stale
        assert states(1089.9).after_failure(status) is Step.FAIL
    assert states(1089.9).after_answer(500, too_large=False, kept_as_dead_letter=False) is Step.STALE
    assert states(1090.0).after_answer(500, too_large=False, kept_as_dead_letter=False) is Step.STORE
    assert states(1089.9).after_answer(404, too_large=False, kept_as_dead_letter=False) is Step.STORE


def test_an_answer_too_large_or_kept_as_a_dead_letter_passes_by():
    fresh_miss = states(1000.0, stored=None)
    assert fresh_miss.after_answer(200, too_large=True, kept_as_dead_letter=False) is Step.PASS
    assert fresh_miss.after_answer(500, too_large=False, kept_as_dead_letter=True) is Step.PASS
    assert fresh_miss.after_answer(200, too_large=False, kept_as_dead_letter=False) is Step.STORE


def test_a_follower_serves_what_the_fetch_shared_fails_as_it_did_or_fetches_for_itself():
    follower = states(1000.0, stored=None)
    german, english = CIMultiDict({"Accept-Language": "de"}), CIMultiDict({"Accept-Language": "en"})
    assert follower.after_following(Shared[Failed](STORED), german) is Step.HIT
    assert follower.after_following(Shared[Failed](STORED), english) is Step.FETCH  # Vary differs
    assert follower.after_following(Shared[Failed](), german) is Step.FETCH
    assert follower.after_following(Shared(failure=Failed(503)), german) is Step.FAIL
    assert states(1089.9).after_following(Shared(failure=Failed(503)), german) is Step.STALE
    assert Shared[Failed]().nothing and not Shared[Failed](STORED, Label.STALE).nothing
