from gateway.core.headers import caller_only, hop_by_hop, parse_retry_after


def test_connection_named_headers_join_the_standard_hop_by_hop_set():
    names = hop_by_hop(["close, X-Secret-Hop", " keep-alive"])
    assert {"x-secret-hop", "close", "keep-alive", "transfer-encoding", "upgrade", "te", "trailer"} <= names


def test_retry_after_in_seconds_and_as_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", now) == 20
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_forwarding_headers_and_the_gateways_own_stay_with_the_gateway():
    for name in ("Forwarded", "X-Forwarded-For", "x-forwarded-host", "X-FORWARDED-PROTO", "X-Forwarded-Port",
                 "Authorization", "X-Gateway-Key", "Host"):
        assert caller_only(name), name
    for name in ("X-Forwarded", "Accept", "X-Request-Id", "Idempotency-Key"):
        assert not caller_only(name), name
