"""A mock SaaS vendor for the gateway walkthrough.

Run it, then point the gateway at it with policies/mock.yaml:

    python examples/mock_vendor.py [--host 127.0.0.1] [--port 9000] [--key demo-key-123]

The key defaults to $MOCK_VENDOR_KEY, else demo-key-123 (as in examples/demo.env).
Every endpoint but /echo and /stats wants the key in the X-Api-Key header (else 401).

    GET  /companies/{id}   a made-up company, the same for the same id
    POST /companies        "creates" the JSON body: echoes it back with a new id, 201
    ANY  /echo/{anything}  what the vendor received: method, raw path and query, headers,
                           body (X-Api-Key and Authorization values masked, as "demo…")
    GET  /flaky            503 on every other call (the 1st, 3rd, ...), else 200
    GET  /stats            requests received, and 401s and 429s sent

Like a real vendor it has its own rate limit: past 10 requests in any 1 s it answers
429 with Retry-After: 1. Send traffic through the gateway and /stats shows none.
One line per request goes to stdout. Needs only aiohttp.
"""

from __future__ import annotations

import argparse
import functools
import hmac
import json
import os
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

RATE_LIMIT = 10  # requests in any RATE_WINDOW seconds
RATE_WINDOW = 1.0
OPEN_PATHS = ("/echo/", "/stats")
MASKED_HEADERS = frozenset({"x-api-key", "authorization"})
WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne")
KINDS = ("Robotics", "Analytics", "Logistics", "Foods", "Software", "Capital", "Labs", "Media")
STAT_NAMES = ("requests", "rate_limited_429", "unauthorized_401", "created", "flaky_calls")

KEY = web.AppKey("key", str)
STATS = web.AppKey("stats", Counter[str])
RECENT = web.AppKey("recent", deque[float])  # arrival times of requests in the last second

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_dumps = functools.partial(json.dumps, ensure_ascii=False)


def _json(data: object, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


@web.middleware
async def vendor_rules(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log one line per request around the vendor's own rules."""
    started = time.monotonic()
    try:
        response = await _apply_rules(request, handler, started)
    except web.HTTPException as exc:  # 404, 405: answered in JSON like everything else
        response = _json({"error": exc.reason}, exc.status)
    millis = (time.monotonic() - started) * 1000
    print(f"{time.strftime('%H:%M:%S')} {request.method} {request.path_qs} -> {response.status} ({millis:.1f} ms)",
          flush=True)
    return response


async def _apply_rules(request: web.Request, handler: Handler, now: float) -> web.StreamResponse:
    """The vendor's rate limit, then its API key check (/stats is exempt from both)."""
    app, stats = request.app, request.app[STATS]
    if request.path == "/stats":
        return await handler(request)
    stats["requests"] += 1
    recent = app[RECENT]
    while recent and now - recent[0] >= RATE_WINDOW:
        recent.popleft()
    if len(recent) >= RATE_LIMIT:
        stats["rate_limited_429"] += 1
        return _json({"error": "rate limit: 10 requests per second"}, 429, {"Retry-After": "1"})
    recent.append(now)
    sent = request.headers.get("X-Api-Key", "")
    if not request.path.startswith(OPEN_PATHS) and not hmac.compare_digest(sent.encode(), app[KEY].encode()):
        stats["unauthorized_401"] += 1
        return _json({"error": "missing or invalid X-Api-Key"}, 401)
    return await handler(request)


def _mask(value: str) -> str:
    return value[:4] + "…" if len(value) > 4 else "…"


def _company(company_id: str) -> dict[str, str]:
    h = zlib.crc32(company_id.encode())
    name = f"{WORDS[h % len(WORDS)]} {KINDS[(h >> 8) % len(KINDS)]}"
    return {"id": company_id, "name": name, "domain": f"{name.lower().replace(' ', '-')}-{h % 1000}.example"}


async def get_company(request: web.Request) -> web.Response:
    return _json(_company(request.match_info["id"]))


async def create_company(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:  # not JSON, or not UTF-8
        body = None
    if not isinstance(body, dict):
        return _json({"error": "body must be a JSON object"}, 400)
    request.app[STATS]["created"] += 1
    return _json({**body, "id": str(1000 + request.app[STATS]["created"])}, 201)


async def echo(request: web.Request) -> web.Response:
    text = (await request.read()).decode("utf-8", errors="replace")
    try:
        body: object = json.loads(text) if text else None
    except json.JSONDecodeError:
        body = text
    headers = {name: _mask(value) if name.lower() in MASKED_HEADERS else value
               for name, value in request.headers.items()}
    return _json({"method": request.method, "path": request.rel_url.raw_path,  # as received, %-encoded
                  "query": request.rel_url.raw_query_string, "headers": headers, "body": body})


async def flaky(request: web.Request) -> web.Response:
    request.app[STATS]["flaky_calls"] += 1
    if (call := request.app[STATS]["flaky_calls"]) % 2 == 1:
        return _json({"error": "temporarily unavailable, try again"}, 503)
    return _json({"ok": True, "call": call})


async def stats(request: web.Request) -> web.Response:
    return _json({name: request.app[STATS][name] for name in STAT_NAMES})


def make_app(key: str) -> web.Application:
    app = web.Application(middlewares=[vendor_rules])
    app[KEY], app[STATS], app[RECENT] = key, Counter(), deque()
    app.router.add_get("/companies/{id}", get_company)
    app.router.add_post("/companies", create_company)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Mock SaaS vendor for the gateway walkthrough.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--key", default=os.environ.get("MOCK_VENDOR_KEY", "demo-key-123"),
                        help="API key expected in X-Api-Key (default: $MOCK_VENDOR_KEY or demo-key-123)")
    args = parser.parse_args()
    print(f"mock vendor on http://{args.host}:{args.port} (key {_mask(args.key)})", flush=True)
    web.run_app(make_app(args.key), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
