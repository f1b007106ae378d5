import pytest

from gateway.core.tokens import TokenEndpointError, TokenRecord, failure_delay, parse_token_response


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
