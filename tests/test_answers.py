"""Answers as the caller sees them: the vendor's references to itself point back into the gateway."""

from tests.mock_vendor import answer


async def test_redirects_into_the_upstream_come_back_through_the_gateway(gateway, vendor):
    own = vendor.url + "/api"
    vendor.script(
        answer(302, b"", {"Location": f"{own}/orders/7?view=full"}),
        answer(303, b"", {"Location": "/api/orders/8#top"}),
        answer(302, b"", {"Location": "https://elsewhere.example/api/orders/9"}),
        answer(301, b"", {"Location": "/outside/9"}),
        answer(307, b"", {"Location": "../orders/11"}),
        answer(201, b"{}", {"Location": f"{own}/orders/12", "Content-Location": "/api/orders/12"}),
    )
    client = await gateway({"vendor": "v", "upstream": own})
    seen = []
    for method in ("GET", "POST", "GET", "GET", "GET", "POST"):
        response = await client.request(method, "/v/orders", data=b"{}" if method == "POST" else None,
                                         allow_redirects=False)
        seen.append((response.status, response.headers["Location"], response.headers.get("Content-Location")))
    assert seen == [
        (302, "/v/orders/7?view=full", None),
        (303, "/v/orders/8#top", None),
        (302, "https://elsewhere.example/api/orders/9", None),  # another host: as it was, never followed
        (301, "/outside/9", None),  # outside the base path: as it was
        (307, "../orders/11", None),  # relative: the client resolves it against the gateway's URL
        (201, "/v/orders/12", "/v/orders/12"),
    ]
    assert len(vendor.received) == 6


async def test_a_client_following_a_redirect_stays_in_the_gateway_with_its_key(gateway, vendor):
    vendor.script(answer(302, b"", {"Location": f"{vendor.url}/api/new"}))
    client = await gateway({"vendor": "v", "upstream": vendor.url + "/api",
                            "credentials": {"type": "api_key", "header": "X-Api-Key", "value": "${K}"}},
                           env={"K": "vendor-secret"})
    response = await client.get("/v/old")
    assert response.status == 200 and response.url.path == "/v/new"
    assert [r.raw_path for r in vendor.received] == ["/api/old", "/api/new"]
    assert all(r.header("X-Api-Key") == "vendor-secret" for r in vendor.received)


async def test_a_stored_answer_keeps_the_rewritten_location(gateway, vendor):
    vendor.script(answer(200, b'{"id": 1}', {"Content-Location": f"{vendor.url}/orders/1", "Content-Type": "application/json"}))
    client = await gateway({"vendor": "v", "upstream": vendor.url, "cache": [{"match": {"path": "/orders/*"}, "ttl": "1h"}]})
    miss = await client.get("/v/orders/1")
    hit = await client.get("/v/orders/1")
    assert [r.headers["X-Gateway-Cache"] for r in (miss, hit)] == ["MISS", "HIT"]
    assert miss.headers["Content-Location"] == hit.headers["Content-Location"] == "/v/orders/1"
    assert len(vendor.received) == 1


async def test_a_raw_at_sign_reaches_the_vendor_as_sent(gateway, vendor):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    path = "/services/data/v59.0/sobjects/Contact/Email__c/ann@example.com"
    response = await client.patch("/v" + path, data=b'{"LastName": "Lee"}')
    assert response.status == 200
    assert (vendor.last.method, vendor.last.raw_path) == ("PATCH", path)
