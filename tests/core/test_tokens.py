import pytest

from gateway.core.tokens import (
    INTENT_MARGIN,
    INTENT_TTL,
    Adopt,
    Held,
    Rotate,
    Store,
    TokenEndpointError,
    TokenRecord,
    Wait,
    failure_delay,
    parse_token_response,
    plan,
)


def record(issued=1000.0, lifetime=3600.0):
    return TokenRecord("a", issued_at=issued, expires_at=issued + lifetime)


def test_refresh_comes_refresh_before_the_expiry():
    assert record().refresh_at(300) == 1000 + 3600 - 300
    assert not record().due(4299, 300) and record().due(4300, 300)


def test_short_tokens_are_refreshed_at_half_life_not_in_a_loop():
    assert record(lifetime=3).refresh_at(300) == 1001.5


def test_a_token_is_not_sent_in_its_last_second():
    assert record(lifetime=10).usable(1008.9) and not record(lifetime=10).usable(1009.0)


def test_a_token_answer_with_rotation():
    parsed = parse_token_response(200, {"access_token": "t", "expires_in": 60, "refresh_token": "r2"}, 50.0, "r1", "o")
    assert (parsed.access_token, parsed.expires_at, parsed.refresh_token, parsed.origin) == ("t", 110.0, "r2", "o")


def test_without_rotation_the_refresh_token_stays_and_expiry_defaults_to_an_hour():
    parsed = parse_token_response(200, {"access_token": "t"}, 0.0, "r1", "o")
    assert parsed.refresh_token == "r1" and parsed.expires_at == 3600


@pytest.mark.parametrize(
    "status, body, refused",
    [
        (400, {"error": "invalid_grant"}, True),
        (401, {"error": "invalid_client"}, True),
        (400, {"error": "temporarily_unavailable"}, False),
        (500, {"error": "server_error"}, False),
        (503, {}, False),
        (200, {"token_type": "bearer"}, False),
        (200, ["not", "an", "object"], False),
    ],
)
def test_refusals_are_told_from_failures(status, body, refused):
    with pytest.raises(TokenEndpointError) as info:
        parse_token_response(status, body, 0.0, None, "o")
    assert info.value.refused is refused


def test_backoff_after_failures():
    assert [failure_delay(n, refused=True) for n in (1, 2, 3, 6, 9)] == [30, 60, 120, 600, 600]
    assert [failure_delay(n, refused=False) for n in (1, 2, 6, 9)] == [1, 2, 30, 30]


# -- who may refresh: plan (storage answering) and Held.may_rotate_alone (storage down) --

SEED = TokenRecord("", 0.0, 0.0, refresh_token="configured")
NOW = 10_000.0


def link(generation, issued=NOW - 10, lifetime=3600.0, **marks):
    return TokenRecord(f"a{generation}", issued, issued + lifetime, f"r{generation}", generation=generation, **marks)


def decide(stored, held=Held(), now=NOW, **options):
    return plan(stored, held, now, me="me", seed=options.pop("seed", SEED), refresh_before=300.0, **options)


def test_a_fresh_stored_token_is_adopted_and_a_due_one_rotated():
    assert decide(link(3)) == Adopt(link(3))
    due = link(3, issued=NOW - 3400)
    assert decide(due) == Rotate(due)


def test_a_token_the_vendor_rejected_is_rotated_though_fresh():
    assert decide(link(3), stale="a3") == Rotate(link(3))


def test_the_first_token_of_a_chain_comes_from_the_configured_refresh_token():
    assert decide(None) == Rotate(SEED)


def test_a_link_another_process_is_rotating_is_left_to_it_until_its_mark_expires():
    marked = link(3, issued=NOW - 3400, rotating_by="other", rotating_since=NOW - 1)
    step = decide(marked)
    assert isinstance(step, Wait) and step.follow and step.until == NOW - 1 + INTENT_TTL
    assert step.adopt == marked  # its access token still serves meanwhile
    assert decide(marked, now=NOW - 1 + INTENT_TTL) == Rotate(marked)


def test_our_own_mark_does_not_stop_us():
    marked = link(3, issued=NOW - 3400, rotating_by="me", rotating_since=NOW - 1)
    assert decide(marked) == Rotate(marked)


def test_a_store_no_other_process_shares_ignores_marks_of_a_previous_run():
    marked = link(3, issued=NOW - 3400, rotating_by="before-restart", rotating_since=NOW - 1)
    assert decide(marked, shared=False) == Rotate(marked)


def test_a_link_storage_has_not_seen_is_put_back_before_anything_else():
    ours = link(4, issued=NOW - 3400)
    assert decide(link(3, rotating_by="me", rotating_since=NOW - 5), Held(ours, made=True)) == Store(ours)


def test_a_store_that_came_back_empty_gets_our_link_back_and_a_higher_one_wins():
    ours = link(3, issued=NOW - 3400, rotating_by="other", rotating_since=NOW - 50)
    assert decide(None, Held(ours)) == Store(ours.settled())
    assert decide(link(2), Held(ours)) == Store(ours.settled())
    higher = link(5, issued=NOW - 3400)
    assert decide(higher, Held(ours)) == Rotate(higher)


def test_after_an_outage_nobody_rotates_for_the_grace_but_a_fresh_token_is_taken():
    due = link(3, issued=NOW - 3400)
    step = decide(due, recovering_until=NOW + 2)
    assert isinstance(step, Wait) and not step.follow and step.until == NOW + 2
    assert decide(link(3), recovering_until=NOW + 2) == Adopt(link(3))
    assert decide(due, recovering_until=NOW) == Rotate(due)
    assert decide(None, recovering_until=NOW + 2) == Wait(NOW + 2, step.reason)


def test_a_refused_link_is_not_sent_again_by_anyone_before_the_backoff():
    refused = link(3, issued=NOW - 3400).refused_now(NOW - 10, "token endpoint answered 400 (invalid_grant)")
    step = decide(refused, Held(link(3)))
    assert step == Wait(NOW - 10 + 30, "token endpoint answered 400 (invalid_grant)", adopt=refused)
    twice = refused.refused_now(NOW - 10, "again")
    assert decide(twice, now=NOW + 45) == Wait(NOW - 10 + 60, "again", adopt=twice)
    assert decide(refused, now=NOW + 20) == Rotate(refused)


def test_grants_without_a_chain_fetch_and_share_what_they_fetched_alone():
    assert decide(None, seed=None) == Rotate(None)
    assert decide(link(0), seed=None) == Adopt(link(0))
    alone = link(0, issued=NOW - 1)
    assert decide(None, Held(alone, made=True), seed=None) == Store(alone)
    assert decide(link(0, issued=NOW - 3400), Held(alone, made=True), seed=None) == Store(alone)


def test_with_storage_down_only_a_link_nobody_else_can_be_rotating_is_sent():
    assert not Held().may_rotate_alone(NOW, chain=True, shared=True)
    assert not Held(link(3)).may_rotate_alone(NOW, chain=True, shared=True)  # read from storage
    assert Held(link(4), made=True).may_rotate_alone(NOW + 10**6, chain=True, shared=True)
    started = Held(link(3), started_at=NOW)
    assert started.may_rotate_alone(NOW + INTENT_TTL - INTENT_MARGIN - 0.1, chain=True, shared=True)
    assert not started.may_rotate_alone(NOW + INTENT_TTL - INTENT_MARGIN, chain=True, shared=True)


def test_with_storage_down_a_single_process_store_or_a_grant_without_chain_refreshes():
    assert Held(link(3)).may_rotate_alone(NOW, chain=True, shared=False)
    assert not Held().may_rotate_alone(NOW, chain=True, shared=False)  # the stored chain is unknown
    assert Held().may_rotate_alone(NOW, chain=False, shared=True)


def test_a_usable_stored_token_replaces_ours_unless_ours_is_newer_or_unstored():
    assert Held().adoptable(link(3), NOW)
    assert Held(link(2)).adoptable(link(3), NOW)
    assert not Held(link(4)).adoptable(link(3), NOW)
    assert not Held(link(2), made=True).adoptable(link(3), NOW)
    assert not Held().adoptable(link(3, issued=NOW - 3600), NOW)


def test_marks_survive_the_stored_form():
    marked = link(3).rotating("me", NOW).refused_now(NOW, "why")
    assert TokenRecord.from_json(marked.to_json()) == marked
    assert TokenRecord.from_json({"access_token": "a", "issued_at": 1, "expires_at": 2}).generation == 0
