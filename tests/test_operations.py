"""Health, readiness and metrics: what an operator's probes and dashboards read."""

from prometheus_client.parser import text_string_to_metric_families


async def test_healthz_answers_while_the_process_runs(gateway, vendor):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    response = await client.get("/healthz")
    assert response.status == 200 and (await response.json())["status"] == "ok"


async def test_readyz_reports_policies_and_storage(gateway, vendor):
    client = await gateway({"vendor": "v", "upstream": vendor.url})
    response = await client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"policies": 1, "storage": "memory", "status": "ready"}


async def test_readyz_follows_a_redis_that_stops_and_comes_back(gateway, vendor, redis_server):
    config = {"storage": redis_server.url, "on_storage_error": "reject"}
    client = await gateway({"vendor": "v", "upstream": vendor.url}, config=config)
    assert (await client.get("/readyz")).status == 200
    redis_server.stop()
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["status"] == "unready" and body["storage"] == "redis"
    redis_server.start()
    assert (await client.get("/readyz")).status == 200


async def test_readyz_says_when_the_local_fallback_serves(gateway, vendor, redis_server):
    client = await gateway({"vendor": "v", "upstream": vendor.url}, config={"storage": redis_server.url})
    redis_server.stop()
    response = await client.get("/readyz")
    assert response.status == 200
    body = await response.json()
    assert body["status"] == "ready" and body["fallback"] == "local" and "redis" in body["detail"]


async def test_metrics_expose_requests_and_upstream_attempts(gateway, vendor):
    vendor.script(503, 200)
    client = await gateway(
        {"vendor": "v", "upstream": vendor.url, "retry": {"attempts": 2, "on": [503], "backoff": {"initial": 0, "jitter": 0}}}
    )
    await client.get("/v/x")
    await client.post("/v/y", data=b"{}")
    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await response.text())
        for s in family.samples
    }
    assert samples[("gateway_requests_total", (("caller", "anonymous"), ("method", "GET"), ("status", "200"), ("vendor", "v")))] == 1
    assert samples[("gateway_requests_total", (("caller", "anonymous"), ("method", "POST"), ("status", "200"), ("vendor", "v")))] == 1
    assert samples[("gateway_upstream_requests_total", (("method", "GET"), ("outcome", "503"), ("vendor", "v")))] == 1
    assert samples[("gateway_upstream_requests_total", (("method", "GET"), ("outcome", "200"), ("vendor", "v")))] == 1
    assert samples[("gateway_retries_total", (("reason", "503"), ("vendor", "v")))] == 1
    assert samples[("gateway_request_duration_seconds_count", (("vendor", "v"),))] == 2
    assert samples[("gateway_upstream_duration_seconds_count", (("vendor", "v"),))] == 3
