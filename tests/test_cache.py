"""Cached lookups, black box: a real gateway in front of a mock vendor that counts arrivals."""

import asyncio

from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.mock_vendor import answer

# Long enough that no answer expires while a test runs, however loaded the machine: the
# tests of expiry give their own short TTL and only look after it has passed.
COMPANIES = {"match": {"path": "/companies/*"}, "ttl": "1h"}


def policy(vendor, *rules, **rest):
    return {"vendor": "v", "upstream": vendor.url, "cache": list(rules) or [COMPANIES], **rest}


def slow(status=200, body=b'{"name": "Acme"}', delay=0.3, headers=None):
    async def respond(request: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.Response(status=status, body=body, headers=headers or {"Content-Type": "application/json"})

    return respond


async def test_a_lookup_is_fetched_once_then_served_from_the_cache(gateway, vendor):
    client = await gateway(policy(vendor))
    first = await client.get("/v/companies/42")
    assert first.status == 200 and first.headers["X-Gateway-Cache"] == "MISS"
    second = await client.get("/v/companies/42")
    assert second.headers["X-Gateway-Cache"] == "HIT" and second.headers["X-Gateway-Attempts"] == "0"
    assert await second.read() == await first.read()
    assert int(second.headers["Age"]) < 60 and second.headers["Content-Type"] == first.headers["Content-Type"]
    assert second.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert len(vendor.received) == 1


async def test_an_answer_is_fetched_again_once_its_ttl_has_passed(gateway, vendor):
    client = await gateway(policy(vendor, {**COMPANIES, "ttl": "1s"}))
    assert (await client.get("/v/companies/42")).headers["X-Gateway-Cache"] == "MISS"
    await asyncio.sleep(1.05)
    assert (await client.get("/v/companies/42")).headers["X-Gateway-Cache"] == "MISS"
    assert len(vendor.received) == 2


async def test_the_key_holds_the_query_and_accept(gateway, vendor):
    client = await gateway(policy(vendor))
    for target, headers in [
        ("/v/companies/42", {}),
        ("/v/companies/42?fields=name", {}),
        ("/v/companies/42", {"Accept": "text/csv"}),
        ("/v/companies/42?fields=name", {}),
    ]:
        await client.get(target, headers=headers)
    assert len(vendor.received) == 3


async def test_an_answer_the_vendor_marks_no_store_is_never_stored(gateway, vendor):
    vendor.script(answer(200, b"{}", {"Cache-Control": "no-store"}))
    client = await gateway(policy(vendor))
    await client.get("/v/companies/1")
    assert (await client.get("/v/companies/1")).headers["X-Gateway-Cache"] == "MISS"
    assert len(vendor.received) == 2


async def test_no_cache_from_the_caller_skips_the_read_and_refreshes_the_store(gateway, vendor):
    client = await gateway(policy(vendor))
    await client.get("/v/companies/1")
    bypass = await client.get("/v/companies/1", headers={"Cache-Control": "no-cache"})
    assert bypass.headers["X-Gateway-Cache"] == "BYPASS"
    assert (await client.get("/v/companies/1")).headers["X-Gateway-Cache"] == "HIT"
    assert len(vendor.received) == 2


async def test_unmatched_paths_errors_and_writes_are_never_cached(gateway, vendor):
    client = await gateway(policy(vendor))
    for _ in range(2):
        other = await client.get("/v/people/1")
        await client.post("/v/companies/1", data=b"{}")
    assert "X-Gateway-Cache" not in other.headers
    vendor.script(500, 500)
    for _ in range(2):
        assert (await client.get("/v/companies/9")).status == 500
    assert len(vendor.received) == 6


async def test_a_404_is_cached_like_an_answer(gateway, vendor):
    vendor.script(404)
    client = await gateway(policy(vendor))
    await client.get("/v/companies/0")
    hit = await client.get("/v/companies/0")
    assert hit.status == 404 and hit.headers["X-Gateway-Cache"] == "HIT"


async def test_30_concurrent_misses_make_one_upstream_call(gateway, vendor):
    vendor.script(slow())
    client = await gateway(policy(vendor))
    answers = await asyncio.gather(*(client.get("/v/companies/7") for _ in range(30)))
    assert [r.status for r in answers] == [200] * 30
    assert {await r.read() for r in answers} == {b'{"name": "Acme"}'}
    assert len(vendor.received) == 1


async def test_a_stale_answer_is_served_when_every_attempt_fails(gateway, vendor):
    rule = {**COMPANIES, "ttl": "200ms", "stale_if_error": "1h"}
    retry = {"attempts": 2, "on": [503], "backoff": {"initial": 0, "jitter": 0}}
    client = await gateway(policy(vendor, rule, retry=retry))
    await client.get("/v/companies/5")
    await asyncio.sleep(0.25)
    vendor.script(503, 503)
    stale = await client.get("/v/companies/5")
    assert stale.status == 200 and stale.headers["X-Gateway-Cache"] == "STALE"
    assert stale.headers["X-Gateway-Attempts"] == "2"
    assert len(vendor.received) == 3


async def test_without_stale_if_error_the_failure_goes_to_the_caller(gateway, vendor):
    client = await gateway(policy(vendor, {**COMPANIES, "ttl": "200ms"}))
    await client.get("/v/companies/5")
    await asyncio.sleep(0.25)
    vendor.script(503)
    assert (await client.get("/v/companies/5")).status == 503


async def test_a_hit_takes_no_budget(gateway, vendor):
    client = await gateway(policy(vendor, budgets=[{"name": "burst", "limit": 1, "per": "60s"}]))
    assert (await client.get("/v/companies/1")).status == 200
    for _ in range(5):
        assert (await client.get("/v/companies/1")).status == 200
    assert (await client.get("/v/companies/2")).status == 429


async def test_post_search_lookups_are_keyed_by_the_body(gateway, vendor):
    rule = {"match": {"methods": ["POST"], "path": "/search"}, "ttl": "1m"}
    client = await gateway(policy(vendor, rule))
    for body in (b'{"q": "acme"}', b'{"q": "acme"}', b'{"q": "globex"}'):
        await client.post("/v/search", data=body)
    assert len(vendor.received) == 2
    assert (await client.get("/v/search")).headers.get("X-Gateway-Cache") is None  # GET not in the rule


async def test_answers_over_the_size_limit_stream_through_uncached(gateway, vendor):
    big = b"x" * 3000
    vendor.script(answer(200, big), answer(200, big))
    client = await gateway(policy(vendor, {**COMPANIES, "max_size": 1000}))
    first = await client.get("/v/companies/1")
    assert await first.read() == big and first.headers["X-Gateway-Cache"] == "MISS"
    assert await (await client.get("/v/companies/1")).read() == big
    assert len(vendor.received) == 2


async def test_vary_keeps_answers_apart(gateway, vendor):
    vendor.script(answer(200, b"en", {"Vary": "Accept-Language"}), answer(200, b"de", {"Vary": "Accept-Language"}))
    client = await gateway(policy(vendor))
    assert await (await client.get("/v/companies/1", headers={"Accept-Language": "en"})).read() == b"en"
    assert await (await client.get("/v/companies/1", headers={"Accept-Language": "de"})).read() == b"de"
    assert len(vendor.received) == 2


async def test_the_credential_never_reaches_the_cache_key_or_store(gateway, vendor, redis_server):
    import redis

    secret = "sk-live-very-secret-9f8e7d"
    p = policy(vendor, credentials={"type": "api_key", "query": "api_key", "value": "${KEY}"})
    client = await gateway(p, config={"storage": redis_server.url}, env={"KEY": secret})
    await client.get("/v/companies/1")
    assert "api_key=" + secret in vendor.last.raw_path
    r = redis.Redis(port=redis_server.port)
    try:
        stored = {k: r.get(k) for k in r.keys("*cache*")}
    finally:
        r.close()
    # The answer itself is the vendor's (this mock echoes the path); the key and what is
    # stored about the request must not hold the secret.
    assert stored and not any(secret.encode() in k or secret.encode() in (v or b"").partition(b"\n")[0] for k, v in stored.items())


async def test_two_gateways_on_one_redis_share_the_cache_and_its_fetch(gateway, vendor, redis_server):
    vendor.script(slow(delay=0.5))
    a = await gateway(policy(vendor), config={"storage": redis_server.url})
    b = await gateway(policy(vendor), config={"storage": redis_server.url})
    answers = await asyncio.gather(*(c.get("/v/companies/3") for c in (a, b) for _ in range(10)))
    assert [r.status for r in answers] == [200] * 20
    assert len(vendor.received) == 1
    assert (await b.get("/v/companies/3")).headers["X-Gateway-Cache"] == "HIT"


async def test_cache_requests_are_counted_by_result(gateway, vendor):
    client = await gateway(policy(vendor))
    await client.get("/v/companies/1")
    await client.get("/v/companies/1")
    await client.get("/v/companies/1", headers={"Cache-Control": "no-cache"})
    text = await (await client.get("/metrics")).text()
    samples = {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gateway_cache_requests_total"
    }
    assert samples == {"miss": 1, "hit": 1, "bypass": 1}


async def test_a_memory_cache_drops_the_least_recently_used_beyond_cache_max(gateway, vendor):
    body = b"y" * 4000
    vendor.script(*(answer(200, body) for _ in range(4)))
    client = await gateway(policy(vendor), config={"cache_max": "10KB"})
    for n in (1, 2, 1, 3):  # 1 is used again, so 2 is the one to go when 3 comes
        await client.get(f"/v/companies/{n}")
    assert (await client.get("/v/companies/1")).headers["X-Gateway-Cache"] == "HIT"
    assert (await client.get("/v/companies/3")).headers["X-Gateway-Cache"] == "HIT"
    assert (await client.get("/v/companies/2")).headers["X-Gateway-Cache"] == "MISS"


async def test_a_gateway_process_serves_what_another_stored(gateway, gateway_process, vendor, redis_server):
    import aiohttp

    a = await gateway(policy(vendor), config={"storage": redis_server.url})
    assert (await a.get("/v/companies/8")).headers["X-Gateway-Cache"] == "MISS"
    b = gateway_process(policy(vendor), config={"storage": redis_server.url})
    async with aiohttp.ClientSession() as session, session.get(f"{b.url}/v/companies/8") as response:
        assert response.headers["X-Gateway-Cache"] == "HIT"
    assert len(vendor.received) == 1


async def test_conditional_and_range_requests_pass_by_the_cache(gateway, vendor):
    client = await gateway(policy(vendor))
    await client.get("/v/companies/1")
    for headers in ({"If-None-Match": '"abc"'}, {"Range": "bytes=0-1"}):
        response = await client.get("/v/companies/1", headers=headers)
        assert "X-Gateway-Cache" not in response.headers
    assert len(vendor.received) == 3


async def test_a_waiting_request_with_another_vary_value_fetches_its_own(gateway, vendor):
    vendor.script(slow(body=b"en", headers={"Vary": "Accept-Language"}), answer(200, b"fr", {"Vary": "Accept-Language"}))
    client = await gateway(policy(vendor))
    en, fr = await asyncio.gather(
        client.get("/v/companies/1", headers={"Accept-Language": "en"}),
        client.get("/v/companies/1", headers={"Accept-Language": "fr"}),
    )
    assert (await en.read(), await fr.read()) == (b"en", b"fr")


async def test_a_hit_does_not_repeat_the_vendors_rate_limit_headers(gateway, vendor):
    vendor.script(answer(200, b"{}", {"X-RateLimit-Remaining": "0", "Set-Cookie": "s=1"}))
    client = await gateway(policy(vendor))
    first = await client.get("/v/companies/1")
    assert first.headers["X-RateLimit-Remaining"] == "0" and "Set-Cookie" in first.headers  # the fetch's own
    hit = await client.get("/v/companies/1")
    assert "X-RateLimit-Remaining" not in hit.headers and "Set-Cookie" not in hit.headers


async def test_a_head_hit_keeps_the_length(gateway, vendor):
    vendor.script(answer(200, b"", {"Content-Length": "1234"}))
    client = await gateway(policy(vendor))
    await client.head("/v/companies/1")
    hit = await client.head("/v/companies/1")
    assert hit.headers["X-Gateway-Cache"] == "HIT" and hit.headers["Content-Length"] == "1234"


async def test_concurrent_misses_on_a_failing_vendor_share_one_failure(gateway, vendor):
    vendor.script(slow(status=503, delay=0.2), slow(status=503, delay=0.2))
    retry = {"attempts": 2, "on": [503], "backoff": {"initial": 0, "jitter": 0}}
    client = await gateway(policy(vendor, retry=retry))
    answers = await asyncio.gather(*(client.get("/v/companies/4") for _ in range(10)))
    assert {r.status for r in answers} == {503}
    assert len(vendor.received) == 2  # one fetch, its two attempts
    assert all(r.headers["X-Gateway-Cache"] == "MISS" for r in answers)
