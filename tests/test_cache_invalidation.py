"""Writes drop the stored answers they change, black box: a real gateway in front of a mock
vendor whose records the writes change, with memory storage and with real Redis shared by
several gateways."""

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web

from gateway.config.loader import Overrides, load_settings
from gateway.errors import ConfigError
from gateway.storage.memory import MemoryCache

OBJECTS = {
    "match": {"methods": ["GET"], "path": "/objects/*"},
    "ttl": "1h",
    "invalidated_by": {"methods": ["POST"], "path": "/objects/batch/**"},
}
LISTS = {"match": {"methods": ["GET"], "path": "/lists/*"}, "ttl": "1h"}


class Records:
    """A vendor with versioned records: a write makes the next version, a GET answers the
    version it found on arrival (after ``hold`` is set, when there is one)."""

    def __init__(self) -> None:
        self.versions: dict[str, int] = {}
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.failures: list[int] = []  # statuses the next writes get, changing nothing
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/objects/{id}", self.read)
        app.router.add_get("/lists/{id}", self.read)
        app.router.add_route("*", "/objects/batch/upsert", self.upsert)
        app.router.add_route("*", "/objects/{id}", self.write)
        return app

    async def read(self, request: web.Request) -> web.Response:
        self.reads += 1
        found = self.versions.get(request.match_info["id"], 1)
        if self.hold is not None:
            await self.hold.wait()
        return web.json_response({"id": request.match_info["id"], "v": found, "query": request.query_string})

    async def write(self, request: web.Request) -> web.Response:
        if self.failures:
            return web.json_response({"error": "refused"}, status=self.failures.pop(0))
        key = request.match_info["id"]
        self.versions[key] = self.versions.get(key, 1) + 1
        return web.json_response({"id": key, "v": self.versions[key]})

    async def upsert(self, request: web.Request) -> web.Response:
        if self.failures:
            return web.json_response({"error": "refused"}, status=self.failures.pop(0))
        for key in (await request.json())["ids"]:
            self.versions[key] = self.versions.get(key, 1) + 1
        return web.json_response({"status": "COMPLETE"})


@pytest.fixture
async def records(aiohttp_server) -> Records:
    vendor = Records()
    server = await aiohttp_server(vendor.app())
    vendor.url = f"http://127.0.0.1:{server.port}"
    return vendor


def policy(records: Records, **extra) -> dict:
    return {"vendor": "v", "upstream": records.url, "cache": [OBJECTS, LISTS], **extra}


async def get(client, target: str, **kwargs) -> tuple[str, int]:
    """The cache result and the record version of a lookup (client: a test client or (session, base URL))."""
    if isinstance(client, tuple):
        session, base = client
        async with session.get(base + target, **kwargs) as response:
            return response.headers["X-Gateway-Cache"], (await response.json())["v"]
    response = await client.get(target, **kwargs)
    return response.headers["X-Gateway-Cache"], (await response.json())["v"]


async def until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_successful_write_makes_every_variant_of_its_path_miss(gateway, records):
    client = await gateway(policy(records))
    variants = [("/v/objects/1", {}), ("/v/objects/1?properties=name", {}), ("/v/objects/1", {"Accept": "text/csv"})]
    for target, headers in variants + [("/v/objects/2", {})]:
        assert await get(client, target, headers=headers) == ("MISS", 1)
        assert await get(client, target, headers=headers) == ("HIT", 1)
    for method, version in (("PATCH", 2), ("PUT", 3), ("DELETE", 4), ("POST", 5)):
        assert (await client.request(method, "/v/objects/1", data=b"{}")).status == 200
        for target, headers in variants:
            assert await get(client, target, headers=headers) == ("MISS", version)
            assert await get(client, target, headers=headers) == ("HIT", version)
    assert await get(client, "/v/objects/2") == ("HIT", 1)  # another path of the same rule


async def test_a_failed_write_drops_nothing(gateway, records):
    client = await gateway(policy(records))
    await get(client, "/v/objects/1")
    await get(client, "/v/objects/2")
    records.failures = [409, 500, 503, 422]
    for method, target in (("PATCH", "/v/objects/1"), ("DELETE", "/v/objects/1"), ("PUT", "/v/objects/1")):
        assert (await client.request(method, target, data=b"{}")).status in (409, 500, 503)
    assert (await client.post("/v/objects/batch/upsert", json={"ids": ["2"]})).status == 422
    assert await get(client, "/v/objects/1") == ("HIT", 1)
    assert await get(client, "/v/objects/2") == ("HIT", 1)


async def test_a_write_fitting_invalidated_by_drops_the_rules_other_paths_not_another_rules(gateway, records):
    client = await gateway(policy(records))
    for target in ("/v/objects/1", "/v/objects/2", "/v/lists/1"):
        await get(client, target)
    assert (await client.post("/v/objects/batch/upsert", json={"ids": ["1"]})).status == 200
    assert await get(client, "/v/objects/1") == ("MISS", 2)
    assert await get(client, "/v/objects/2") == ("MISS", 1)  # not written, but the rule's: dropped too
    assert await get(client, "/v/lists/1") == ("HIT", 1)
    assert await get(client, "/v/objects/2") == ("HIT", 1)


async def test_an_answer_fetched_while_a_write_succeeded_is_not_served_after_it(gateway, records):
    client = await gateway(policy(records))
    records.hold = asyncio.Event()
    early = asyncio.create_task(get(client, "/v/objects/1"))
    await until(lambda: records.reads == 1)  # the vendor has read version 1 for it
    assert (await client.patch("/v/objects/1", data=b"{}")).status == 200
    records.hold.set()
    assert await early == ("MISS", 1)  # its caller asked before the write was answered
    records.hold = None
    assert await get(client, "/v/objects/1") == ("MISS", 2)


async def test_a_request_after_a_write_does_not_share_a_fetch_begun_before_it(gateway, records):
    client = await gateway(policy(records))
    records.hold = asyncio.Event()
    leader = asyncio.create_task(get(client, "/v/objects/1"))
    await until(lambda: records.reads == 1)
    assert (await client.patch("/v/objects/1", data=b"{}")).status == 200
    follower = asyncio.create_task(get(client, "/v/objects/1"))
    await until(lambda: records.reads == 2)  # its own fetch, not the leader's
    records.hold.set()
    assert (await leader, await follower) == (("MISS", 1), ("MISS", 2))
    records.hold = None
    assert await get(client, "/v/objects/1") == ("HIT", 2)


async def test_a_bypass_after_a_write_stores_the_new_answer_for_the_next(gateway, records):
    client = await gateway(policy(records))
    await get(client, "/v/objects/1")
    await client.patch("/v/objects/1", data=b"{}")
    assert await get(client, "/v/objects/1", headers={"Cache-Control": "no-cache"}) == ("BYPASS", 2)
    assert await get(client, "/v/objects/1") == ("HIT", 2)


async def test_a_replayed_write_that_succeeds_drops_what_it_changed(gateway, records):
    admin = {"X-Gateway-Admin-Key": "admin-key-1"}
    client = await gateway(policy(records, dead_letter=True), config={"admin_key": "${ADMIN}"}, env={"ADMIN": "admin-key-1"})
    await get(client, "/v/objects/1")
    records.failures = [503]
    assert (await client.patch("/v/objects/1", data=b"{}")).status == 503
    assert await get(client, "/v/objects/1") == ("HIT", 1)
    [letter] = (await (await client.get("/_gateway/dead-letters", headers=admin)).json())["dead_letters"]
    replayed = await (await client.post(f"/_gateway/dead-letters/{letter['id']}/replay", headers=admin)).json()
    assert replayed["status"] == 200
    assert await get(client, "/v/objects/1") == ("MISS", 2)


async def test_on_redis_a_write_through_any_gateway_drops_what_every_gateway_serves(
    gateway, gateway_process, records, redis_server
):
    import redis

    config = {"storage": redis_server.url}
    a = await gateway(policy(records), config=config)
    b = await gateway(policy(records), config=config)
    c = gateway_process(policy(records), config=config)
    for target in ("/v/objects/1", "/v/objects/2", "/v/lists/1"):
        assert (await get(a, target))[0] == "MISS"
        assert (await get(b, target))[0] == "HIT"
    assert (await a.patch("/v/objects/1", data=b"{}")).status == 200
    assert await get(b, "/v/objects/1") == ("MISS", 2)
    assert (await b.post("/v/objects/batch/upsert", json={"ids": ["2"]})).status == 200
    assert await get(a, "/v/objects/2") == ("MISS", 2)
    assert await get(a, "/v/lists/1") == ("HIT", 1)
    async with aiohttp.ClientSession() as session:
        async with session.delete(f"{c.url}/v/objects/1") as response:
            assert response.status == 200
        assert await get(b, "/v/objects/1") == ("MISS", 3)
        assert await get((session, c.url), "/v/objects/1") == ("HIT", 3)
    # Generations are kept only as long as the answers they outdate can be.
    r = redis.Redis(port=redis_server.port)
    try:
        ttls = [r.pttl(k) for k in r.keys("gateway:{v}:cache-generation:*")]
    finally:
        r.close()
    assert len(ttls) == 2 and all(3600_000 < ttl <= 3660_000 for ttl in ttls)  # objects/1 and the rule


async def test_on_redis_a_waiting_gateway_does_not_take_an_answer_fetched_before_a_write(gateway, records, redis_server):
    config = {"storage": redis_server.url}
    a = await gateway(policy(records), config=config)
    b = await gateway(policy(records), config=config)
    records.hold = asyncio.Event()
    leader = asyncio.create_task(get(a, "/v/objects/1"))
    await until(lambda: records.reads == 1)
    assert (await a.patch("/v/objects/1", data=b"{}")).status == 200
    follower = asyncio.create_task(get(b, "/v/objects/1"))  # waits for a's fetch lock
    records.hold.set()
    assert (await leader, await follower) == (("MISS", 1), ("MISS", 2))
    assert records.reads == 2


async def test_invalidation_works_on_a_redis_cluster(gateway, records, redis_cluster):
    config = {"storage": redis_cluster.url, "redis_cluster": True}
    a = await gateway(policy(records), config=config)
    b = await gateway(policy(records), config=config)
    for target in ("/v/objects/1", "/v/objects/2", "/v/objects/3", "/v/lists/1"):
        await get(a, target)
        assert (await get(b, target))[0] == "HIT"
    await a.patch("/v/objects/1", data=b"{}")
    assert await get(b, "/v/objects/1") == ("MISS", 2)
    assert await get(b, "/v/objects/2") == ("HIT", 1)
    await b.post("/v/objects/batch/upsert", json={"ids": ["3"]})
    assert await get(a, "/v/objects/2") == ("MISS", 1)
    assert await get(a, "/v/objects/3") == ("MISS", 2)
    assert await get(a, "/v/lists/1") == ("HIT", 1)


async def test_a_write_whose_invalidation_cannot_be_stored_still_gets_its_answer(gateway, records, redis_server, caplog):
    client = await gateway(policy(records), config={"storage": redis_server.url})
    await get(client, "/v/objects/1")
    redis_server.stop()
    caplog.set_level(logging.WARNING, "gateway.cache")
    response = await client.patch("/v/objects/1", data=b"{}")
    assert response.status == 200 and (await response.json())["v"] == 2
    assert any("could not drop the stored answers" in r.getMessage() for r in caplog.records)
    assert await get(client, "/v/objects/1") == ("MISS", 2)  # a failed read is a miss, never an error


async def test_memory_generations_are_forgotten_once_no_answer_they_outdate_can_live():
    now = [1000.0]
    cache = MemoryCache(1024, clock=lambda: now[0])
    await cache.cache_invalidate("v", {"path:a": 100.0})
    [bumped, never] = (await cache.cache_get("k", "v", ["path:a", "path:b"]))[1]
    assert bumped > 0 and never == 0
    now[0] += 100.5
    assert (await cache.cache_get("k", "v", ["path:a"]))[1] == [0]
    await cache.cache_invalidate("v", {"path:a": 100.0})
    assert (await cache.cache_get("k", "v", ["path:a"]))[1][0] > bumped  # above what older answers recorded
    for n in range(20_000):  # a write every 10 ms, each kept 100 s: 10,000 alive at a time
        now[0] += 0.01
        await cache.cache_invalidate("v", {f"path:{n}": 100.0})
    assert len(cache._generations) <= 2 * 10_001


def test_invalidated_by_takes_one_match_or_a_list_of_writes(tmp_path):
    folder = tmp_path / "policies"
    folder.mkdir()
    good = folder / "good.yaml"
    good.write_text(
        "vendor: good\nupstream: https://a.example\ncache:\n"
        "  - match: {path: /a/*}\n    ttl: 1m\n    invalidated_by: {methods: [POST], path: /a/batch/**}\n"
        "  - match: {path: /b/*}\n    ttl: 1m\n    invalidated_by:\n      - {path: /b/**}\n      - {methods: [DELETE]}\n"
    )
    [one, listed] = load_settings(None, {}, Overrides(policies=str(folder))).policies["good"].cache
    assert [m.path for m in one.invalidated_by] == ["/a/batch/**"]
    assert [(m.path, m.methods) for m in listed.invalidated_by] == [("/b/**", None), (None, frozenset({"DELETE"}))]
    bad = folder / "bad.yaml"
    bad.write_text(
        "vendor: bad\nupstream: https://a.example\ncache:\n"
        "  - match: {path: /a/*}\n    ttl: 1m\n    invalidated_by: {methods: [GET, POST]}\n"
        "  - match: {path: /b/*}\n    ttl: 1m\n    invalidated_by:\n      - {path: /b/**}\n      - {path: b}\n"
        "  - match: {path: /c/*}\n    ttl: 1m\n    invalidated_by: []\n"
    )
    good.unlink()
    with pytest.raises(ConfigError) as info:
        load_settings(None, {}, Overrides(policies=str(folder)))
    assert [str(p) for p in info.value.problems] == [
        f"{bad}:6: cache[0].invalidated_by: only writes (POST, PUT, PATCH, DELETE) invalidate, not GET",
        f"{bad}:11: cache[1].invalidated_by[1].path: a path glob starts with '/'",
        f"{bad}:14: cache[2].invalidated_by: needs at least 1 item(s)",
    ]
