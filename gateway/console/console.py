"""The console's handlers: the page and its assets (script modules and style sheet), each
read once from the package and served with a policy that lets the page load nothing from
another origin and run no inline script, so a dead letter's body can never become code in it."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from aiohttp import web

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The page holds figures of the moment and, once opened, callers' request bodies.
    "Cache-Control": "no-store",
}
ASSETS = {
    "console.js": "text/javascript",
    "page.js": "text/javascript",
    "vendors.js": "text/javascript",
    "dead-letters.js": "text/javascript",
    "console.css": "text/css",
}
# Only the assets: any other name under it goes on to the proxy route, which answers every
# unknown /_gateway/ path alike (404 unknown-vendor).
ASSET_ROUTE = "/_gateway/console/{name:" + "|".join(name.replace(".", r"\.") for name in ASSETS) + "}"


@cache
def _read(name: str) -> bytes:
    return files("gateway.console").joinpath(name).read_bytes()


def _serve(name: str, content_type: str) -> web.Response:
    return web.Response(body=_read(name), content_type=content_type, charset="utf-8", headers=_HEADERS)


async def console(request: web.Request) -> web.Response:
    return _serve("console.html", "text/html")


async def console_without_key(request: web.Request, err: Exception) -> web.Response:
    """The page, answered 401, for a browser that came without a key (navigation sends no
    header): it holds no figures itself, and asks for the key when the status refuses it."""
    response = _serve("console.html", "text/html")
    response.set_status(401)
    return response


async def console_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return _serve(name, ASSETS[name])


async def to_console(request: web.Request) -> web.Response:
    """``/_gateway`` → ``/_gateway/``: the page's links are relative to the folder."""
    raise web.HTTPPermanentRedirect("/_gateway/")
