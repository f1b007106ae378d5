"""Dead letters reviewed in bulk: listed by vendor, status and time, and every match
replayed in order, one bulk replay at a time, with the admin key."""

import asyncio
from datetime import datetime, timedelta, timezone

from aiohttp import web


ADMIN = {"X-Gateway-Admin-Key": "admin-key-1"}
ENV = {"ADMIN": "admin-key-1"}


async def start(gateway, vendor, *more):
    policies = [{"vendor": "v", "upstream": vendor.url, "dead_letter": True}, *more]
    return await gateway(*policies, config={"admin_key": "${ADMIN}"}, env=ENV)


async def kept(client, vendor, *failures):
    """One dead letter per (status, path), kept in this order."""
    for status, path in failures:
        vendor.script(status)
        assert (await client.post(f"/v{path}", data=path.encode())).status == status


async def listed(client, query=""):
    response = await client.get(f"/_gateway/dead-letters{query}", headers=ADMIN)
    assert response.status == 200
    return [(e["status"], e["path"]) for e in (await response.json())["dead_letters"]]


async def test_a_bulk_replay_delivers_every_dead_letter_in_order_and_empties_the_list(gateway, vendor):
    client = await start(gateway, vendor)
    await kept(client, vendor, (500, "/a"), (422, "/b"), (503, "/c"))
    vendor.received.clear()
    response = await client.post("/_gateway/dead-letters/replay", json={}, headers=ADMIN)
    assert response.status == 200 and await response.json() == {"delivered": 3, "failed": 0}
    assert [r.body for r in vendor.received] == [b"/a", b"/b", b"/c"]
    assert await listed(client) == []
    assert 'gateway_dead_letters{vendor="v"} 0.0' in await (await client.get("/metrics")).text()


async def test_the_filters_select_by_vendor_status_time_and_ids_together(gateway, vendor):
    client = await start(gateway, vendor, {"vendor": "w", "upstream": vendor.url, "dead_letter": True})
    await kept(client, vendor, (422, "/a"), (500, "/b"), (422, "/c"))
    vendor.script(422)
    assert (await client.post("/w/d", data=b"/d")).status == 422
    assert await listed(client, "?status=422") == [(422, "/a"), (422, "/c"), (422, "/d")]
    assert await listed(client, "?vendor=v&status=422") == [(422, "/a"), (422, "/c")]
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    earlier = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert await listed(client, f"?since={later.replace('+', '%2B')}") == []
    assert len(await listed(client, f"?since={earlier}")) == 4
    ids = {e["path"]: e["id"] for e in (await (await client.get("/_gateway/dead-letters", headers=ADMIN)).json())["dead_letters"]}

    vendor.received.clear()
    vendor.script(200, 409)
    body = {"vendor": "v", "status": 422, "since": earlier}
    result = await (await client.post("/_gateway/dead-letters/replay", json=body, headers=ADMIN)).json()
    assert result == {"delivered": 1, "failed": 1}
    assert [r.body for r in vendor.received] == [b"/a", b"/c"]
    [again] = (await (await client.get("/_gateway/dead-letters?vendor=v&status=409", headers=ADMIN)).json())["dead_letters"]
    assert (again["path"], again["replays"]) == ("/c", 1)  # kept, with the vendor's new error

    vendor.received.clear()
    result = await (await client.post("/_gateway/dead-letters/replay", json={"ids": [ids["/d"], ids["/b"]], "status": 500},
                                      headers=ADMIN)).json()
    assert result == {"delivered": 1, "failed": 0} and [r.body for r in vendor.received] == [b"/b"]
    assert await listed(client) == [(409, "/c"), (422, "/d")]


async def test_bad_filters_are_bad_requests(gateway, vendor):
    client = await start(gateway, vendor)
    for query in ("?status=abc", "?status=42", "?since=yesterday"):
        response = await client.get(f"/_gateway/dead-letters{query}", headers=ADMIN)
        assert response.status == 400 and (await response.json())["type"] == "bad-request", query
    for body in (b"[1]", b"not json", b'{"ids": "x"}', b'{"status": "500x"}', b'{"since": 5}'):
        response = await client.post("/_gateway/dead-letters/replay", data=body, headers=ADMIN)
        assert response.status == 400 and (await response.json())["type"] == "bad-request", body


async def test_one_bulk_replay_at_a_time(gateway, vendor):
    client = await start(gateway, vendor)
    await kept(client, vendor, (500, "/a"))
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request):
        arrived.set()
        await release.wait()
        return web.Response(text="ok")

    vendor.script(held)
    first = asyncio.create_task(client.post("/_gateway/dead-letters/replay", json={}, headers=ADMIN))
    await asyncio.wait_for(arrived.wait(), 30)
    second = await client.post("/_gateway/dead-letters/replay", json={}, headers=ADMIN)
    assert second.status == 409 and (await second.json())["type"] == "replay-in-progress"
    release.set()
    assert await (await first).json() == {"delivered": 1, "failed": 0}
    again = await client.post("/_gateway/dead-letters/replay", json={}, headers=ADMIN)
    assert await again.json() == {"delivered": 0, "failed": 0}


async def test_a_bulk_replay_needs_the_admin_key(gateway, vendor):
    client = await start(gateway, vendor)
    await kept(client, vendor, (500, "/a"))
    vendor.received.clear()
    missing = await client.post("/_gateway/dead-letters/replay", json={})
    wrong = await client.post("/_gateway/dead-letters/replay", json={}, headers={"X-Gateway-Admin-Key": "nope"})
    assert (missing.status, wrong.status) == (401, 401) and vendor.received == []
    unset = await gateway({"vendor": "v", "upstream": vendor.url, "dead_letter": True})
    response = await unset.post("/_gateway/dead-letters/replay", json={}, headers=ADMIN)
    assert response.status == 403 and (await response.json())["type"] == "forbidden"


async def test_every_process_on_one_storage_counts_the_dead_letters_another_kept_or_replayed(gateway, vendor,
                                                                                             redis_server):
    def counted(text):
        return next(line for line in text.splitlines() if line.startswith('gateway_dead_letters{vendor="v"}'))

    policy = {"vendor": "v", "upstream": vendor.url, "dead_letter": True}
    config = {"admin_key": "${ADMIN}", "storage": redis_server.url}
    a, b = [await gateway(policy, config=config, env=ENV) for _ in range(2)]
    await kept(a, vendor, (500, "/a"), (500, "/b"))
    assert counted(await (await b.get("/metrics")).text()).endswith(" 2.0")
    vendor.script(200, 200)
    assert await (await b.post("/_gateway/dead-letters/replay", json={}, headers=ADMIN)).json() == {
        "delivered": 2, "failed": 0}
    assert counted(await (await a.get("/metrics")).text()).endswith(" 0.0")
