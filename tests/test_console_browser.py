"""The console in a real browser: Debian's chromium (/usr/bin/chromium, never a browser
Playwright downloads) driven by Playwright for Python, against a real in-process gateway
on a real loopback port and a mock vendor.

Set CONSOLE_SCREENSHOT=docs/console.png to keep the screenshot the run takes for the README.
"""

import asyncio
import os
import re
import shutil

import pytest

from tests.mock_vendor import answer

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no {CHROMIUM}: apt-get install chromium", allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.async_api", reason="no playwright: pip install playwright (it drives /usr/bin/chromium; no browser download)"
)
expect = playwright_api.expect
# A loaded 2-core box may take seconds for what takes milliseconds idle.
expect.set_options(timeout=30_000)

ADMIN_KEY = "admin-key-1"
ENV = {"ADMIN": ADMIN_KEY}
CONFIG = {"admin_key": "${ADMIN}"}
BREAKER = {"failure_ratio": 0.5, "window": "10s", "min_calls": 4, "open_for": "60s"}
# Refills one unit every 864 s: what the page shows is what the status said moments before.
DAILY = [{"name": "api", "limit": 100, "per": "1d"}]


@pytest.fixture
async def browser():
    async with playwright_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        await launched.close()


class Console:
    """A browser tab on the console, with what it asked for and the errors it threw."""

    def __init__(self, page, origin):
        self.page = page
        self.origin = origin
        self.requested = []
        self.errors = []
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @property
    def key_field(self):
        return self.page.get_by_label("Admin key")

    @property
    def rows(self):
        return self.page.locator("#dl-rows tr")

    def card(self, vendor):
        return self.page.locator(f'article.card[data-vendor="{vendor}"]')

    async def give_key(self, key):
        await expect(self.key_field).to_be_visible()
        await self.key_field.fill(key)
        await self.key_field.press("Enter")


async def open_console(browser, client, **context):
    page = await (await browser.new_context(**context)).new_page()
    page.set_default_timeout(30_000)
    console = Console(page, str(client.make_url("/")).rstrip("/"))
    await page.goto(str(client.make_url("/_gateway/")))
    return console


async def keep_dead_letters(client, vendor, *writes):
    """Each (path, body) written while the vendor answers 503: a dead letter each."""
    vendor.script(*([answer(503, b'{"error": "busy"}')] * len(writes)))
    for path, body in writes:
        response = await client.post(f"/crm{path}", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 503


async def test_the_console_shows_every_vendor_from_real_traffic(gateway, vendor, browser):
    client = await gateway(
        {"vendor": "crm", "upstream": vendor.url, "dead_letter": True, "budgets": DAILY,
         "cache": [{"match": {"path": "/companies/*"}, "ttl": "1h"}]},
        {"vendor": "billing", "upstream": vendor.url, "circuit_breaker": BREAKER},
        config=CONFIG, env=ENV,
    )
    for _ in range(2):
        assert (await client.get("/crm/contacts")).status == 200
    for _ in range(4):  # one miss, then three hits
        assert (await client.get("/crm/companies/1")).status == 200
    assert len(vendor.received) == 3
    await keep_dead_letters(client, vendor, ("/contacts", b'{"n": 1}'), ("/contacts", b'{"n": 2}'))  # the vendor's 503s
    assert (await client.get("/billing/invoices")).status == 200
    status = (await (await client.get("/_gateway/status")).json())["vendors"]

    console = await open_console(browser, client)
    crm, billing = console.card("crm"), console.card("billing")
    await expect(crm.locator("h3")).to_have_text("crm")
    await expect(billing.locator("h3")).to_have_text("billing")
    remaining = status["crm"]["budgets"][0]["remaining"]
    assert remaining == 95  # 5 upstream attempts (cache hits take no budget)
    await expect(crm.locator(".budgets")).to_contain_text("95 / 100 left")
    await expect(crm.locator(".facts")).to_contain_text("75% of 4 (this process)")
    await expect(crm.locator(".dead-letter-count")).to_have_text("2")
    await expect(crm.locator(".facts")).to_contain_text("static (none)")
    await expect(billing.locator(".facts")).to_contain_text("closed")
    assert status["crm"]["stats"]["1h"]["success_rate"] == 0.75  # 6 of 8 answers below 400
    def row(label):
        return crm.locator("table.windows tr", has_text=label).locator("td")

    await expect(row("success rate")).to_have_text(["75%", "75%", "75%"])
    await expect(row("requests")).to_have_text(["8", "8", "8"])
    await expect(row("vendor 5xx")).to_have_text(["2", "2", "2"])
    await expect(row("p50")).not_to_have_text(["—", "—", "—"])
    await expect(crm).to_have_attribute("data-health", "red")  # under 95%
    await expect(crm.locator(".reasons")).to_have_text("1 h success rate 75% is under 95%")
    await expect(crm.locator(".facts")).to_contain_text("last success")
    await expect(crm.locator(".facts dd").first).not_to_have_text("—")
    await expect(billing.locator("table.windows tr", has_text="success rate").locator("td")).to_have_text(["100%"] * 3)
    await expect(console.page.locator("#overview")).to_contain_text("2 vendors")
    assert all(url.startswith(console.origin + "/") or url.startswith("data:") for url in console.requested), console.requested
    assert console.errors == []


async def test_a_replay_from_the_page_reaches_the_vendor_and_needs_the_admin_key(gateway, vendor, browser):
    client = await gateway({"vendor": "crm", "upstream": vendor.url, "dead_letter": True}, config=CONFIG, env=ENV)
    await keep_dead_letters(client, vendor, ("/contacts?src=form", b'{"email": "a@b.example"}'), ("/deals", b'{"amount": 7}'))
    sent = len(vendor.received)
    console = await open_console(browser, client)
    page, rows = console.page, console.rows

    # Without the key nothing is listed: the page asks for it, and a wrong one is refused.
    await expect(console.key_field).to_be_visible()
    await expect(console.key_field).to_have_attribute("type", "password")
    await console.give_key("not-the-key")
    await expect(page.locator("#key-reason")).to_contain_text("401")
    await expect(rows).to_have_count(0)
    await console.give_key(ADMIN_KEY)
    await expect(rows).to_have_count(2)
    await expect(console.key_field).to_be_hidden()

    # Asked once per browser session: a reload lists them without asking again.
    await page.reload()
    await expect(rows).to_have_count(2)
    await expect(console.key_field).to_be_hidden()

    # An action without the key asks for it; with a wrong key the gateway's 401 is shown
    # and nothing reaches the vendor.
    await page.get_by_role("button", name="Forget the admin key").click()
    await rows.filter(has_text="/deals").get_by_role("button", name="Replay", exact=True).click()
    await console.give_key("still-not-the-key")
    await expect(page.locator("#key-reason")).to_contain_text("401 unauthenticated")
    assert len(vendor.received) == sent
    await console.give_key(ADMIN_KEY)
    await expect(page.locator("#dl-message")).to_contain_text("delivered")
    assert len(vendor.received) == sent + 1
    replayed = vendor.last
    assert (replayed.method, replayed.raw_path, replayed.body) == ("POST", "/deals", b'{"amount": 7}')
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("/contacts?src=form")

    # The key lives in the tab's session storage: never a cookie, never in a URL.
    assert await page.evaluate("sessionStorage.getItem('gateway-admin-key')") == ADMIN_KEY
    assert await page.context.cookies() == []
    assert not any(ADMIN_KEY in url for url in console.requested)
    assert console.errors == []


async def test_a_dead_letter_opens_as_text_and_is_deleted(gateway, vendor, browser):
    client = await gateway({"vendor": "crm", "upstream": vendor.url, "dead_letter": True}, config=CONFIG, env=ENV)
    body = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    vendor.script(answer(503, b'{"error": "<b>db</b> down"}'))
    response = await client.post("/crm/notes", data=body.encode(), headers={"Content-Type": "text/html", "X-Trace": "<i>t</i>"})
    assert response.status == 503
    console = await open_console(browser, client)
    page = console.page
    await console.give_key(ADMIN_KEY)
    await expect(console.rows).to_have_count(1)
    await console.rows.get_by_role("button", name="Open").click()

    detail = page.locator("#dl-detail")
    await expect(detail).to_be_visible()
    await expect(page.locator("#dl-detail-body")).to_have_text(body)
    await expect(page.locator("#dl-detail-headers")).to_contain_text("<i>t</i>")
    await expect(page.locator("#dl-detail-error")).to_have_text('upstream 503: {"error": "<b>db</b> down"}')
    await expect(page.locator("#dl-detail-facts")).to_contain_text("POST /notes")
    assert await detail.locator("img, script, b, i").count() == 0
    assert await page.evaluate("window.pwned") is None

    delete = detail.get_by_role("button", name="Delete")
    await delete.click()
    await expect(delete).to_have_text("Really delete?")  # a first press only arms it
    await expect(console.rows).to_have_count(1)
    await delete.click()
    await expect(console.rows).to_have_count(0)
    await expect(detail).to_be_hidden()
    [entry_id] = re.findall(r"\S+(?= deleted\.)", await page.locator("#dl-message").inner_text())
    admin = {"X-Gateway-Admin-Key": ADMIN_KEY}
    assert (await client.get(f"/_gateway/dead-letters/{entry_id}", headers=admin)).status == 404
    assert console.errors == []


def with_forecasts(real):
    """The gateway's status with what traffic in a test cannot make: a budget forecast to
    run out, an open breaker, rejected credentials and unreadable stats (the page must
    still draw). The rest, the stats of crm, billing and mail, is the real traffic's."""
    vendors = real["vendors"]
    vendors["billing"]["budgets"][0]["exhausts_in"] = 3 * 3600
    vendors["mail"]["budgets"][0]["exhausts_in"] = None
    vendors["payments"]["circuit_breaker"] = "open"
    vendors["legacy"]["stats"] = {"5m": None, "1h": {"success_rate": "n/a", "errors": []}}
    vendors["legacy"]["credentials"] = {"type": "oauth2", "state": "rejected", "expires_at": "soon", "last_error": "invalid_grant"}
    return real


async def test_the_colours_follow_the_contract_on_a_laptop_and_a_phone(gateway, vendor, browser, tmp_path):
    client = await gateway(
        {"vendor": "crm", "upstream": vendor.url, "dead_letter": True, "budgets": DAILY},
        {"vendor": "billing", "upstream": vendor.url, "budgets": DAILY},
        {"vendor": "mail", "upstream": vendor.url, "budgets": DAILY, "cache": [{"match": {"path": "/lists/*"}, "ttl": "1h"}]},
        {"vendor": "payments", "upstream": vendor.url, "circuit_breaker": BREAKER},
        {"vendor": "legacy", "upstream": vendor.url},
        config=CONFIG, env=ENV,
    )
    await keep_dead_letters(client, vendor, ("/contacts", b'{"email": "a@b.example"}'), ("/deals/7", b'{"stage": "won"}'))
    for _ in range(3):
        assert (await client.get("/mail/lists/1")).status == 200
    vendor.script(200, 200, 200, answer(500, b'{"error": "boom"}'))
    for _ in range(4):  # crm: 3 of 4 good, and the 2 dead letters' 503s: 3 of 6
        await client.get("/crm/contacts")
    for _ in range(20):
        assert (await client.get("/billing/invoices")).status == 200
    context = await browser.new_context(viewport={"width": 1280, "height": 900})

    async def forecasts_added(route):
        response = await route.fetch()
        await route.fulfill(response=response, json=with_forecasts(await response.json()))

    await context.route("**/_gateway/status", forecasts_added)
    page = await context.new_page()
    console = Console(page, "")
    await page.goto(str(client.make_url("/_gateway/")))

    expected = {"crm": "red", "billing": "amber", "mail": "green", "payments": "red", "legacy": "red"}
    for name, colour in expected.items():
        await expect(console.card(name)).to_have_attribute("data-health", colour)
        await expect(console.card(name).locator(".badge")).to_have_text(colour)
    crm = console.card("crm")
    await expect(crm.locator(".reasons")).to_have_text("1 h success rate 50% is under 95%")
    await expect(crm.locator("table.windows tr", has_text="success rate").locator("td")).to_have_text(["50%"] * 3)
    await expect(crm.locator("table.windows tr", has_text="p95").locator("td")).not_to_have_text(["—"] * 3)
    await expect(crm.locator("table.windows tr", has_text="vendor 5xx").locator("td")).to_have_text(["3"] * 3)
    await expect(crm.locator(".facts")).to_contain_text(" ago)")
    await expect(console.card("billing").locator(".reasons")).to_have_text("budget api runs out in 3 h")
    await expect(console.card("billing").locator(".budgets")).to_contain_text("runs out at")
    await expect(console.card("billing").locator("table.windows")).to_contain_text("100%")
    await expect(console.card("mail").locator(".reasons")).to_have_count(0)
    await expect(console.card("mail").locator(".budgets")).to_contain_text("does not run out at this rate")
    await expect(console.card("mail").locator(".facts")).to_contain_text("66.6% of 3 (this process)")
    await expect(console.card("payments").locator(".reasons")).to_have_text("the breaker is open")
    legacy = console.card("legacy")
    await expect(legacy.locator(".reasons")).to_have_text("credentials are rejected")
    await expect(legacy.locator("table.windows tr", has_text="success rate").locator("td")).to_have_text(["—", "—", "—"])
    await expect(legacy.locator(".facts")).to_contain_text("invalid_grant")
    await expect(page.locator("#overview")).to_contain_text("5 vendors: 3 red, 1 amber, 1 green")

    await console.give_key(ADMIN_KEY)
    await expect(console.rows).to_have_count(2)
    await console.rows.filter(has_text="/deals/7").get_by_role("button", name="Open").click()
    await expect(page.locator("#dl-detail-body")).to_have_text('{"stage": "won"}')
    shot = tmp_path / "console.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("CONSOLE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["CONSOLE_SCREENSHOT"])

    # A phone: one column, nothing wider than the screen.
    await page.set_viewport_size({"width": 390, "height": 844})
    await expect(crm).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    card_box, page_width = await crm.bounding_box(), 390
    assert card_box["width"] > page_width * 0.8
    assert console.errors == []


async def test_a_storage_fallback_turns_the_cards_amber(gateway, vendor, browser, redis_server):
    client = await gateway({"vendor": "crm", "upstream": vendor.url, "budgets": DAILY},
                           config={**CONFIG, "storage": redis_server.url}, env=ENV)
    assert (await client.get("/crm/contacts")).status == 200
    console = await open_console(browser, client)
    await expect(console.card("crm")).to_have_attribute("data-health", "green")
    redis_server.stop()
    assert (await client.get("/crm/contacts")).status == 200  # served by the local fallback
    crm = console.card("crm")
    await expect(crm).to_have_attribute("data-health", "amber")  # within a refresh or two
    await expect(crm.locator(".reasons")).to_contain_text("shared storage has failed")
    await expect(console.page.locator("#overview")).to_contain_text("storage: fallen back")
    assert console.errors == []


async def test_replay_selected_and_all_matching_from_the_page(gateway, vendor, browser):
    client = await gateway({"vendor": "crm", "upstream": vendor.url, "dead_letter": True},
                           {"vendor": "billing", "upstream": vendor.url, "dead_letter": True}, config=CONFIG, env=ENV)
    probe = await client.post("/_gateway/dead-letters/replay", json={})
    if probe.status in (404, 405):
        pytest.skip(f"POST /_gateway/dead-letters/replay is not served here yet ({probe.status})")
    await keep_dead_letters(client, vendor, *((f"/contacts/{n}", b'{"n": %d}' % n) for n in range(1, 5)))
    vendor.script(answer(503, b"down"))
    assert (await client.post("/billing/invoices", data=b"{}")).status == 503
    sent = len(vendor.received)
    console = await open_console(browser, client)
    page = console.page
    await console.give_key(ADMIN_KEY)
    await expect(console.rows).to_have_count(5)

    await console.rows.filter(has_text="/contacts/3").get_by_role("checkbox").check()
    await page.get_by_role("button", name="Replay selected").click()
    await expect(page.locator("#dl-message")).to_contain_text("1 delivered, 0 failed")
    assert [r.raw_path for r in vendor.received[sent:]] == ["/contacts/3"]
    await expect(console.rows).to_have_count(4)

    await page.get_by_label("Vendor", exact=True).select_option("crm")
    await page.get_by_role("button", name="List").click()
    await expect(console.rows).to_have_count(3)
    await page.get_by_role("button", name="Replay all matching").click()
    await expect(page.locator("#dl-message")).to_contain_text("3 delivered, 0 failed")
    assert [r.raw_path for r in vendor.received[sent:]] == ["/contacts/3", "/contacts/1", "/contacts/2", "/contacts/4"]
    await expect(console.rows).to_have_count(0)
    await page.get_by_label("Vendor", exact=True).select_option("")
    await page.get_by_role("button", name="List").click()
    await expect(console.rows).to_have_count(1)
    await expect(console.rows).to_contain_text("billing")
    assert console.errors == []


async def test_the_page_is_whole_when_it_loads(gateway, vendor, tmp_path):
    """`chromium --dump-dom` prints the page at its load event, with no time for later requests."""
    client = await gateway({"vendor": "crm", "upstream": vendor.url}, {"vendor": "billing", "upstream": vendor.url})
    vendor.script(200, 200, 200, 500)
    for _ in range(4):
        await client.get("/crm/contacts")
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom", str(client.make_url("/_gateway/")),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    dom, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0
    page = dom.decode()
    assert 'data-vendor="crm"' in page and 'data-vendor="billing"' in page
    assert "2 vendors: 1 red, 0 amber, 1 green" in page
    assert "1 h success rate 75% is under 95%" in page  # real traffic: 3 of 4 answers good
    assert set(re.findall(r'\b(?:src|href)="([^"]*)"', page)) == {"console/console.js", "console/console.css", "data:,"}


async def test_bulk_replays_ask_the_gateway_as_the_contract_says(gateway, vendor, browser):
    """What the page sends to POST /_gateway/dead-letters/replay and its list, whichever
    gateway answers: the bulk endpoint is answered here by the test."""
    client = await gateway({"vendor": "crm", "upstream": vendor.url, "dead_letter": True}, config=CONFIG, env=ENV)
    await keep_dead_letters(client, vendor, ("/contacts/1", b"{}"), ("/contacts/2", b"{}"))
    context = await browser.new_context(timezone_id="UTC")
    asked = []

    async def bulk(route):
        request = route.request
        asked.append((request.method, request.headers.get("x-gateway-admin-key"), request.post_data_json))
        await route.fulfill(json={"delivered": 2, "failed": 1})

    await context.route("**/_gateway/dead-letters/replay", bulk)
    console = Console(await context.new_page(), "")
    page = console.page
    await page.goto(str(client.make_url("/_gateway/")))
    await console.give_key(ADMIN_KEY)
    await expect(console.rows).to_have_count(2)
    ids = await console.rows.evaluate_all("rows => rows.map(r => r.dataset.id)")

    await page.get_by_role("button", name="Replay selected").click()
    await expect(page.locator("#dl-message")).to_contain_text("Select dead letters first")
    await page.get_by_label("Select all listed").check()
    await page.get_by_role("button", name="Replay selected").click()
    await expect(page.locator("#dl-message")).to_contain_text("2 delivered, 1 failed")

    await page.get_by_label("Vendor", exact=True).select_option("crm")
    await page.get_by_label("Status", exact=True).fill("503")
    await page.get_by_label("Since", exact=True).fill("2026-01-02T08:30")
    await page.get_by_role("button", name="List", exact=True).click()
    await page.get_by_role("button", name="Replay all matching").click()
    await expect(page.locator("#dl-message")).to_contain_text("Replayed all matching vendor crm, status 503")
    since = "2026-01-02T08:30:00.000Z"
    assert asked == [
        ("POST", ADMIN_KEY, {"ids": ids}),
        ("POST", ADMIN_KEY, {"vendor": "crm", "status": 503, "since": since}),
    ]
    listed = [url for url in console.requested if "/_gateway/dead-letters?" in url]
    assert any("vendor=crm" in url and "status=503" in url and "since=2026-01-02T08%3A30%3A00.000Z" in url for url in listed)
    assert console.errors == []
