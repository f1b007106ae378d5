"""Reloading a running gateway through its API: the whole snapshot or nothing, its state kept."""

import asyncio
import logging

import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

ADMIN = {"X-Gateway-Admin-Key": "admin-key-123"}
CONFIG = {"admin_key": "${ADMIN}", "watch": False}
ENV = {"ADMIN": "admin-key-123"}


def write_policy(tmp_path, policy):
    (tmp_path / "policies" / f"{policy['vendor']}.yaml").write_text(yaml.safe_dump(policy))


def reloads(text):
    return {
        s.labels["result"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gateway_config_reloads_total"
    }


async def test_the_reload_api_needs_the_admin_key_and_keeps_the_old_snapshot_on_error(gateway, vendor, tmp_path):
    client = await gateway({"vendor": "v", "upstream": vendor.url}, config=CONFIG, env=ENV)
    assert reloads(await (await client.get("/metrics")).text()) == {"ok": 0, "error": 0}

    assert (await client.post("/_gateway/reload")).status == 401
    assert (await client.post("/_gateway/reload", headers={"X-Gateway-Admin-Key": "wrong"})).status == 401

    write_policy(tmp_path, {"vendor": "w", "upstream": vendor.url})
    answer = await client.post("/_gateway/reload", headers={"Authorization": "Bearer admin-key-123"})
    assert answer.status == 200 and await answer.json() == {"vendors": ["v", "w"]}
    assert (await client.get("/w/x")).status == 200
    status = await (await client.get("/_gateway/status")).json()
    assert status["config"]["last_error"] is None and status["config"]["loaded_at"].endswith("Z")

    (tmp_path / "policies" / "w.yaml").write_text(f"vendor: w\nupstrem: {vendor.url}\n")
    refused = await client.post("/_gateway/reload", headers=ADMIN)
    assert refused.status == 422 and refused.content_type == "application/problem+json"
    problems = (await refused.json())["problems"]
    assert any("w.yaml:2: upstrem:" in p for p in problems), problems
    assert (await client.get("/v/x")).status == 200 and (await client.get("/w/x")).status == 200
    status = await (await client.get("/_gateway/status")).json()
    assert status["config"]["last_error"] == problems
    assert reloads(await (await client.get("/metrics")).text()) == {"ok": 1, "error": 1}


@pytest.mark.parametrize("window", ["rolling", "fixed"])
async def test_a_spent_quota_stays_spent_and_a_raised_limit_admits_exactly_the_difference(
    gateway, vendor, tmp_path, window
):
    def limited(limit):
        budget = {"name": "daily", "limit": limit, "per": "1d", "window": window}
        return {"vendor": "v", "upstream": vendor.url, "budgets": [budget]}

    client = await gateway(limited(3), config=CONFIG, env=ENV)
    assert [(await client.get("/v/x")).status for _ in range(4)] == [200, 200, 200, 429]

    write_policy(tmp_path, {**limited(3), "timeout": "20s"})  # another change, the same budget
    assert (await client.post("/_gateway/reload", headers=ADMIN)).status == 200
    assert (await client.get("/v/x")).status == 429

    write_policy(tmp_path, limited(5))
    assert (await client.post("/_gateway/reload", headers=ADMIN)).status == 200
    assert [(await client.get("/v/x")).status for _ in range(3)] == [200, 200, 429]
    status = await (await client.get("/_gateway/status")).json()
    budget = status["vendors"]["v"]["budgets"][0]
    assert budget["limit"] == 5 and budget["remaining"] == 0


async def test_a_request_in_flight_finishes_through_a_reload_that_removes_its_vendor(gateway, vendor, tmp_path):
    arrived, release = asyncio.Event(), asyncio.Event()

    async def held(request):
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    vendor.script(held)
    client = await gateway({"vendor": "v", "upstream": vendor.url}, {"vendor": "keep", "upstream": vendor.url},
                           config=CONFIG, env=ENV)
    in_flight = asyncio.create_task(client.get("/v/slow"))
    await asyncio.wait_for(arrived.wait(), 30)
    (tmp_path / "policies" / "v.yaml").unlink()
    answer = await client.post("/_gateway/reload", headers=ADMIN)
    assert await answer.json() == {"vendors": ["keep"]}
    assert (await client.get("/v/x")).status == 404
    release.set()
    response = await asyncio.wait_for(in_flight, 30)
    assert response.status == 200 and await response.text() == "finished"
    assert (await client.get("/keep/x")).status == 200


async def test_what_needs_a_restart_is_kept_with_a_warning_and_the_rest_applies(gateway, vendor, tmp_path, caplog):
    client = await gateway({"vendor": "v", "upstream": vendor.url}, config=CONFIG, env=ENV)
    config_file = tmp_path / "gateway.yaml"
    config = yaml.safe_load(config_file.read_text())
    config_file.write_text(yaml.safe_dump({**config, "listen": "127.0.0.1:1", "header_timeout": "3s",
                                           "max_body": "10B"}))
    with caplog.at_level(logging.INFO, logger="gateway.reload"):
        assert (await client.post("/_gateway/reload", headers=ADMIN)).status == 200
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "listen, header_timeout changed but need a restart: not applied" in warning.getMessage()
    assert any(r.levelno == logging.INFO and "gateway config changed" in r.getMessage() for r in caplog.records)
    assert (await client.post("/v/x", data=b"more than ten bytes")).status == 413


async def test_a_vendor_whose_upstream_and_timeout_are_unchanged_keeps_its_connections(gateway, vendor, tmp_path):
    ports = []

    async def record(request):
        ports.append(request.transport.get_extra_info("peername")[1])
        return web.Response(text="ok")

    vendor.script(*[record] * 4)
    client = await gateway({"vendor": "v", "upstream": vendor.url}, {"vendor": "w", "upstream": vendor.url},
                           config=CONFIG, env=ENV)
    assert (await client.get("/v/x")).status == 200 and (await client.get("/w/x")).status == 200
    write_policy(tmp_path, {"vendor": "w", "upstream": vendor.url, "timeout": "7s"})
    assert (await client.post("/_gateway/reload", headers=ADMIN)).status == 200
    assert (await client.get("/v/x")).status == 200 and (await client.get("/w/x")).status == 200
    assert ports[2] == ports[0]  # v's pooled connection served again
    assert ports[3] != ports[1]  # w's timeout changed: a new session, a new connection


def test_watching_reports_a_change_once_the_files_settle_and_sees_a_renamed_file(tmp_path):
    from gateway.reload import Watcher

    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "v.yaml").write_text("vendor: v\n")
    (folder / "notes.txt").write_text("not a policy")
    watcher = Watcher(None, str(folder))
    assert not watcher.changed()
    (folder / "notes.txt").write_text("still not a policy, longer")
    assert not watcher.changed()
    (folder / ".v.yaml.tmp").write_text("vendor: v\n")  # an editor's temporary file, the same size
    (folder / ".v.yaml.tmp").rename(folder / "v.yaml")
    assert not watcher.changed()  # seen, but not yet settled
    assert watcher.changed()
    assert not watcher.changed()
    (folder / "w.yml").write_text("vendor: w\n")
    assert not watcher.changed()
    (folder / "w.yml").write_text("vendor: w\nupstream: x\n")  # still being written
    assert not watcher.changed()
    assert watcher.changed()
    (folder / "w.yml").unlink()
    assert not watcher.changed() and watcher.changed()


async def test_a_token_is_kept_while_the_credentials_are_unchanged_and_fetched_afresh_when_they_change(
    gateway, aiohttp_server, tmp_path
):
    from tests.mock_oauth import TokenServer

    auth = TokenServer()
    auth.url = f"http://127.0.0.1:{(await aiohttp_server(auth.app())).port}"

    def crm(host="127.0.0.1"):
        token_url = auth.url.replace("127.0.0.1", host) + "/token"
        credentials = {"type": "oauth2", "grant": "client_credentials", "token_url": token_url,
                       "client_id": "client-1", "client_secret": "${CLIENT_SECRET}"}
        return {"vendor": "crm", "upstream": auth.url + "/api", "credentials": credentials}

    env = {**ENV, "CLIENT_SECRET": "client-secret-1"}
    client = await gateway(crm(), config=CONFIG, env=env)
    assert (await client.get("/crm/contacts")).status == 200 and len(auth.requests) == 1
    write_policy(tmp_path, {**crm(), "timeout": "9s"})
    assert (await client.post("/_gateway/reload", headers=ADMIN)).status == 200
    assert (await client.get("/crm/contacts")).status == 200 and len(auth.requests) == 1
    write_policy(tmp_path, crm("localhost"))
    assert (await client.post("/_gateway/reload", headers=ADMIN)).status == 200
    assert (await client.get("/crm/contacts")).status == 200 and len(auth.requests) == 2
