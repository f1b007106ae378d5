#!/usr/bin/env python3
"""A naive egress proxy on one page: the peer the gateway's full path is measured against.

    NAIVE_TOKEN=... python benchmarks/naive_proxy.py --listen 127.0.0.1:8081 \\
        --redis redis://127.0.0.1:6390/0 --route bench=http://127.0.0.1:8082 [--uvloop]

Written the way one would in an afternoon, deliberately not optimised: it routes
``/{vendor}/{path}`` from a dict, takes one token from a Redis token bucket per request
(one EVALSHA through the redis-py asyncio client), drops hop-by-hop headers both ways,
injects the vendor's bearer token, buffers the request body and the answer, and counts
requests and their duration in prometheus-client (served at ``/metrics``). No access log
is written (aiohttp's access logger stays silent while logging is not configured).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import time
from collections.abc import AsyncIterator

import aiohttp
import redis.asyncio as redis
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from redis.commands.core import AsyncScript
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from yarl import URL

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "proxy-authorization", "proxy-authenticate"}

# A classic token bucket on Redis's clock: admits when a token is left (0), else answers the
# milliseconds until the next one.
TOKEN_BUCKET = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
if tokens < 1 then
  return math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return 0
"""

REQUESTS = Counter("naive_requests_total", "Requests proxied", ["vendor", "method", "status"])
DURATION = Histogram("naive_request_duration_seconds", "Time to answer a proxied request", ["vendor"])

ROUTES: dict[str, dict[str, str]] = {}  # vendor -> upstream, token
BUCKET_SIZE = (100.0, 1.0)  # capacity, seconds to refill it
SESSION = web.AppKey("session", aiohttp.ClientSession)
REDIS = web.AppKey("redis", redis.Redis)
BUCKET = web.AppKey("bucket", AsyncScript)
REDIS_URL = web.AppKey("redis_url", str)


def end_to_end(headers: CIMultiDictProxy[str], drop: set[str]) -> CIMultiDict[str]:
    """The headers meant for the far end: hop-by-hop ones, those named in Connection and ``drop`` removed."""
    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    skip = HOP_BY_HOP | named | drop
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in skip)


async def proxy(request: web.Request) -> web.Response:
    started = time.perf_counter()
    vendor = request.match_info["vendor"]
    route = ROUTES.get(vendor)
    if route is None:
        return web.json_response({"error": f"no route for {vendor}"}, status=404)
    limit, per = BUCKET_SIZE
    wait_ms = await request.app[BUCKET](keys=[f"bucket:{vendor}"], args=[limit, limit / per])
    if wait_ms:
        status = 429
        answer = web.json_response({"error": "rate limited"}, status=429,
                                   headers={"Retry-After": str(math.ceil(wait_ms / 1000))})
    else:
        headers = end_to_end(request.headers, {"host", "authorization", "content-length"})
        headers["Authorization"] = f"Bearer {route['token']}"
        body = await request.read()
        url = URL(route["upstream"] + request.raw_path[len(vendor) + 1:], encoded=True)
        try:
            async with request.app[SESSION].request(request.method, url, headers=headers, data=body or None,
                                                    allow_redirects=False) as upstream:
                payload = await upstream.read()
                status = upstream.status
                answer = web.Response(status=status, body=payload,
                                      headers=end_to_end(upstream.headers, {"content-length"}))
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 502
            answer = web.json_response({"error": "upstream unavailable"}, status=502)
    REQUESTS.labels(vendor, request.method, str(status)).inc()
    DURATION.labels(vendor).observe(time.perf_counter() - started)
    return answer


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def clients(app: web.Application) -> AsyncIterator[None]:
    app[SESSION] = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30))
    app[REDIS] = redis.Redis.from_url(app[REDIS_URL])
    app[BUCKET] = app[REDIS].register_script(TOKEN_BUCKET)
    yield
    await app[SESSION].close()
    await app[REDIS].aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description="a naive one-page egress proxy")
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="the token buckets' Redis")
    parser.add_argument("--route", action="append", default=[], help="VENDOR=UPSTREAM (repeatable)")
    parser.add_argument("--limit", type=float, default=100.0, help="token bucket capacity (default 100)")
    parser.add_argument("--per", type=float, default=1.0, help="seconds to refill it (default 1)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop instead of asyncio's loop")
    args = parser.parse_args()
    global BUCKET_SIZE
    token = os.environ["NAIVE_TOKEN"]
    for vendor, upstream in (entry.split("=", 1) for entry in args.route):
        ROUTES[vendor] = {"upstream": upstream.rstrip("/"), "token": token}
    BUCKET_SIZE = (args.limit, args.per)
    app = web.Application()
    app[REDIS_URL] = args.redis
    app.cleanup_ctx.append(clients)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/{vendor}/{path:.*}", proxy)
    loop = None
    if args.uvloop:
        import uvloop
        loop = uvloop.new_event_loop()
    host, port = args.listen.rsplit(":", 1)
    web.run_app(app, host=host, port=int(port), print=None, loop=loop)


if __name__ == "__main__":
    main()
