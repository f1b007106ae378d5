import pytest

from gateway.core.headers import caller_only, hop_by_hop, into_gateway, parse_retry_after


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
                 "X-Real-IP", "True-Client-IP", "X-Client-IP", "Authorization", "X-Gateway-Key", "Host"):
        assert caller_only(name), name
    for name in ("X-Forwarded", "Accept", "X-Request-Id", "Idempotency-Key"):
        assert not caller_only(name), name


ORIGIN, BASE = "https://api.vendor.com", "/base"


@pytest.mark.parametrize(
    "reference, seen",
    [
        # Into the upstream: under the gateway's prefix, query and fragment kept.
        ("https://api.vendor.com/base/x", "/v/x"),
        ("https://api.vendor.com/base/x/y?a=1&b=%20#top", "/v/x/y?a=1&b=%20#top"),
        ("HTTPS://API.Vendor.COM:443/base/x", "/v/x"),
        ("//api.vendor.com/base/x?q", "/v/x?q"),
        ("/base/x", "/v/x"),
        ("/base/ann@example.com?", "/v/ann@example.com?"),
        ("/base", "/v"),
        ("/base/", "/v/"),
        ("/base?page=2", "/v?page=2"),
        ("https://api.vendor.com/base#f", "/v#f"),
        # Left as they are: another origin, another scheme or port, outside the base path.
        ("https://evil.example/base/x", "https://evil.example/base/x"),
        ("http://api.vendor.com/base/x", "http://api.vendor.com/base/x"),
        ("https://api.vendor.com:8443/base/x", "https://api.vendor.com:8443/base/x"),
        ("https://user@api.vendor.com/base/x", "https://user@api.vendor.com/base/x"),
        ("https://api.vendor.com.evil.example/base/x", "https://api.vendor.com.evil.example/base/x"),
        ("//evil.example/base/x", "//evil.example/base/x"),
        ("https://api.vendor.com/other", "https://api.vendor.com/other"),
        ("https://api.vendor.com", "https://api.vendor.com"),
        ("/basement/x", "/basement/x"),
        ("/other/x", "/other/x"),
        ("/base/../admin", "/base/../admin"),
        ("/base/%2e%2E/admin", "/base/%2e%2E/admin"),
        # Relative references resolve against the gateway's URL of the request: kept.
        ("x/y", "x/y"),
        ("../y", "../y"),
        ("?page=2", "?page=2"),
        ("#f", "#f"),
        ("", ""),
        ("mailto:ann@example.com", "mailto:ann@example.com"),
        ("urn:isbn:0451450523", "urn:isbn:0451450523"),
    ],
)
def test_references_into_the_upstream_move_under_the_vendor_prefix(reference, seen):
    assert into_gateway(reference, ORIGIN, BASE, "/v") == seen


@pytest.mark.parametrize(
    "origin, reference, seen",
    [
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081/cookies", "/v/cookies"),
        ("http://127.0.0.1:8081", "/cookies", "/v/cookies"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081", "/v/"),
        ("http://127.0.0.1:8081", "http://127.0.0.1:8081?x=1", "/v/?x=1"),
        ("http://127.0.0.1:8081", "http://127.0.0.1/cookies", "http://127.0.0.1/cookies"),
        ("http://api.vendor.com:80", "http://api.vendor.com/x", "/v/x"),
        ("http://[::1]:8081", "http://[::1]:8081/x", "/v/x"),
        ("http://[::1]:8081", "http://[::2]:8081/x", "http://[::2]:8081/x"),
    ],
)
def test_without_a_base_path_every_path_of_the_origin_moves(origin, reference, seen):
    assert into_gateway(reference, origin, "", "/v") == seen
