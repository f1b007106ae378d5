"""Who may read: with callers configured, the status, the metrics and the console need the
admin key or a caller's key; with none anyone may; health and readiness stay open."""

import pytest

CALLERS = {"admin_key": "${ADMIN}", "callers": [{"name": "app", "key": "${APP}"}]}
ENV = {"ADMIN": "admin-key-1", "APP": "app-key-1"}
READ = ["/_gateway/status", "/metrics", "/_gateway/"]


@pytest.fixture
async def guarded(gateway, vendor):
    return await gateway({"vendor": "v", "upstream": vendor.url}, config=CALLERS, env=ENV)


@pytest.mark.parametrize("path", READ)
@pytest.mark.parametrize("headers", [
    {"X-Gateway-Key": "app-key-1"}, {"Authorization": "Bearer app-key-1"},
    {"X-Gateway-Admin-Key": "admin-key-1"}, {"Authorization": "Bearer admin-key-1"},
])
async def test_a_caller_key_or_the_admin_key_reads(guarded, path, headers):
    assert (await guarded.get(path, headers=headers)).status == 200


@pytest.mark.parametrize("path", ["/_gateway/status", "/metrics"])
@pytest.mark.parametrize("headers", [{}, {"X-Gateway-Key": "wrong"}, {"Authorization": "Bearer wrong"}])
async def test_without_a_good_key_nothing_is_read(guarded, path, headers):
    response = await guarded.get(path, headers=headers)
    assert response.status == 401 and (await response.json())["type"] == "unauthenticated"
    assert "upstream" not in await response.text() and "gateway_requests" not in await response.text()


async def test_the_console_without_a_key_is_the_bare_page_that_asks_for_it(guarded):
    response = await guarded.get("/_gateway/")
    assert response.status == 401 and response.content_type == "text/html"
    assert 'id="key-form"' in await response.text()
    assert (await guarded.get("/_gateway/", headers={"X-Gateway-Key": "wrong"})).status == 401


async def test_health_and_readiness_stay_open(guarded):
    assert (await guarded.get("/healthz")).status == 200
    assert (await guarded.get("/readyz")).status == 200


@pytest.mark.parametrize("path", READ)
async def test_with_no_callers_anyone_reads(gateway, vendor, path):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    assert (await client.get(path)).status == 200
