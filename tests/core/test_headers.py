from gateway.core.headers import hop_by_hop, parse_retry_after


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
