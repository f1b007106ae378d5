"""The console at /_gateway/, as an HTTP client sees it: one page and its two assets, served
by the gateway itself under a policy that allows nothing from another origin."""

import re

CSP_RULES = ("default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
             "frame-ancestors 'none'", "object-src 'none'", "base-uri 'none'")


def policy(vendor, **extra):
    return {"vendor": "crm", "upstream": vendor.url, **extra}


def assets(page):
    """Every src and href of the page (its script, style sheet and icon)."""
    return re.findall(r'\b(?:src|href)="([^"]*)"', page)


async def test_the_console_is_one_page_under_a_strict_policy(gateway, vendor):
    client = await gateway(policy(vendor))
    response = await client.get("/_gateway/")
    assert response.status == 200
    assert response.content_type == "text/html" and response.charset == "utf-8"
    csp = response.headers["Content-Security-Policy"]
    assert all(rule in csp for rule in CSP_RULES), csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    page = await response.text()
    assert "Gateway console" in page
    assert sorted(assets(page)) == ["console/console.css", "console/console.js", "data:,"]
    assert vendor.received == []  # the gateway's own page, not a vendor's path


async def test_the_console_and_its_assets_name_no_other_host(gateway, vendor):
    client = await gateway(policy(vendor))
    page = await (await client.get("/_gateway/")).text()
    csp = (await client.get("/_gateway/")).headers["Content-Security-Policy"]
    bodies, waiting, seen = [page], ["console/console.js", "console/console.css"], set()
    while waiting:  # the page's assets and every module they import
        name = waiting.pop()
        seen.add(name)
        response = await client.get(f"/_gateway/{name}")
        assert response.status == 200, name
        assert response.content_type == ("text/css" if name.endswith(".css") else "text/javascript")
        assert response.headers["Content-Security-Policy"] == csp
        body = await response.text()
        bodies.append(body)
        imported = {f"console/{module}" for module in re.findall(r'from "\./([\w.-]+)"', body)}
        waiting.extend(imported - seen)
    assert seen == {"console/console.js", "console/page.js", "console/vendors.js", "console/dead-letters.js",
                    "console/console.css"}
    for body in bodies:
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", body, re.IGNORECASE)
        assert "@import" not in body and "import(" not in body


async def test_only_the_console_assets_are_served_from_its_folder(gateway, vendor):
    client = await gateway(policy(vendor))
    for name in ("console.py", "__init__.py", "console.html", "..%2fserver.py", "page.js.map"):
        response = await client.get(f"/_gateway/console/{name}")
        # 404 unknown-vendor as any unknown /_gateway/ path; 400 for an encoded dot-segment
        assert response.status in (400, 404) and response.content_type == "application/problem+json", name
    assert vendor.received == []


async def test_the_page_runs_no_inline_code(gateway, vendor):
    """The policy refuses inline scripts and styles: the page must not need any."""
    client = await gateway(policy(vendor))
    page = await (await client.get("/_gateway/")).text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.DOTALL)
    assert scripts == [(' type="module" src="console/console.js"', "")]
    assert "<style" not in page and not re.search(r"\sstyle=", page)
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers


async def test_the_console_without_the_slash_leads_to_it(gateway, vendor):
    client = await gateway(policy(vendor))
    response = await client.get("/_gateway", allow_redirects=False)
    assert response.status == 308 and response.headers["Location"] == "/_gateway/"
    followed = await client.get("/_gateway")
    assert followed.status == 200 and followed.content_type == "text/html"

