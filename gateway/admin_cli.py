"""``gateway dead-letters ...`` and ``gateway reload``: the admin API from a terminal.

It talks to a running gateway, found from the ``listen`` of its config file (or named
with ``--url``), with the admin key from the environment variable GATEWAY_ADMIN_KEY
(never a command-line argument, which other users could read in the process list).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from gateway.config.model import CONFIG, parse_listen
from gateway.config.spec import Context
from gateway.config.yamlread import LineDict, YamlProblem, read_yaml

KEY_VARIABLE = "GATEWAY_ADMIN_KEY"
DEFAULT_LISTEN: str = CONFIG.fields["listen"].default
# The admin key goes straight to the gateway, never to a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def add_parser(commands: Any, config_help: str) -> None:
    parser = commands.add_parser("dead-letters", help="list, show, replay or delete dead letters of a running gateway")
    parser.add_argument("--config", metavar="FILE", help=f"{config_help}; its listen says where the gateway is")
    parser.add_argument("--url", help="the gateway's address, instead of the config's listen")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per dead letter, oldest first")
    listing.add_argument("--vendor")
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (("show", "one entry in full (JSON)"), ("replay", "send it again"), ("delete", "drop it")):
        action = actions.add_parser(name, help=text)
        action.add_argument("ids", nargs="+", metavar="ID")


def run(args: argparse.Namespace, config_file: str | None) -> int:
    """Carry out one ``dead-letters`` action; ``config_file`` is the config in force, if any."""
    key = os.environ.get(KEY_VARIABLE)
    if not key:
        print(f"gateway: set {KEY_VARIABLE} to the gateway's admin key", file=sys.stderr)
        return 2
    try:
        url = args.url or gateway_url(config_file)
    except _CommandError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    base = url.rstrip("/") + "/_gateway/dead-letters"
    try:
        if args.action == "list":
            query = urlencode({k: v for k, v in (("vendor", args.vendor), ("limit", args.limit)) if v})
            for entry in _call("GET", f"{base}?{query}", key)["dead_letters"]:
                print(f"{entry['id']}  {entry['vendor']:<12} {entry['method']:<6} {entry['path']}  "
                      f"{entry['status']}  attempts={entry['attempts']}  {entry['error'][:80]}")
            return 0
        failed = 0
        for entry_id in args.ids:
            url = f"{base}/{quote(entry_id, safe='')}"
            if args.action == "show":
                print(json.dumps(_call("GET", url, key), indent=2))
            elif args.action == "delete":
                _call("DELETE", url, key)
                print(f"{entry_id}: deleted")
            else:
                result = _call("POST", url + "/replay", key)
                failed += result["outcome"] != "delivered"
                print(f"{entry_id}: {result['outcome']} ({result['status']}, {result['attempts']} attempt(s))")
        return 1 if failed else 0
    except _CommandError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1


def add_reload_parser(commands: Any, config_help: str) -> None:
    parser = commands.add_parser("reload", help="make a running gateway read its config and policies again")
    parser.add_argument("--config", metavar="FILE", help=f"{config_help}; its listen says where the gateway is")
    parser.add_argument("--url", help="the gateway's address, instead of the config's listen")


def reload(args: argparse.Namespace, config_file: str | None) -> int:
    """``gateway reload``: 0 when the new snapshot is in force, 1 printing its problems."""
    key = os.environ.get(KEY_VARIABLE)
    if not key:
        print(f"gateway: set {KEY_VARIABLE} to the gateway's admin key", file=sys.stderr)
        return 2
    try:
        url = (args.url or gateway_url(config_file)).rstrip("/") + "/_gateway/reload"
    except _CommandError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    request = urllib.request.Request(url, method="POST", headers={"X-Gateway-Admin-Key": key})
    try:
        with _OPENER.open(request, timeout=120) as response:
            vendors = json.loads(response.read())["vendors"]
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        problems = body.get("problems") if isinstance(body, dict) else None
        if exc.code == 422 and isinstance(problems, list):
            for problem in problems:
                print(problem)
            print("gateway: reload refused: the old config and policies stay in force", file=sys.stderr)
        else:
            detail = body.get("detail", exc.reason) if isinstance(body, dict) else exc.reason
            print(f"gateway: {exc.code}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"gateway: cannot reach {url}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, TypeError):
        print(f"gateway: {url} did not answer as a gateway does", file=sys.stderr)
        return 1
    print(f"ok: reloaded: {len(vendors)} vendor(s): {', '.join(vendors)}")
    return 0


class _CommandError(Exception):
    """Why the command could not do what it was asked: printed as one line, no traceback."""


def gateway_url(config_file: str | None) -> str:
    """Where a gateway serving ``config_file`` answers: its ``listen``, with an address that
    means "every interface" (0.0.0.0, ::) reached at the loopback address of its family."""
    listen = DEFAULT_LISTEN if config_file is None else _listen_of(config_file)
    parsed = parse_listen(listen)
    assert parsed is not None  # _listen_of refuses what does not parse
    host, port = parsed
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"http://{host}:{port}"
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"http://[{address}]:{port}" if address.version == 6 else f"http://{address}:{port}"


def _listen_of(config_file: str) -> str:
    """The config file's ``listen`` alone: the rest of the config (and the policies, with
    their vendor secrets) need not be valid, or readable, where the command runs."""
    try:
        text = Path(config_file).read_text(encoding="utf-8")
        raw, _ = read_yaml(text)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise _CommandError(f"{config_file}:1: (file): cannot read: {reason}") from None
    except YamlProblem as exc:
        raise _CommandError(f"{config_file}:{exc.line}: (yaml): {exc.message}") from None
    if raw is None or (isinstance(raw, LineDict) and "listen" not in raw):
        return DEFAULT_LISTEN
    if not isinstance(raw, LineDict):
        raise _CommandError(f"{config_file}:1: (file): expected a mapping of settings")
    ctx = Context(file=config_file, environ={}, base_dir=Path(config_file).parent)
    listen = CONFIG.fields["listen"].spec.build(raw["listen"], ctx, "listen", raw.lines.get("listen", 1))
    if ctx.problems:
        raise _CommandError(str(ctx.problems[0]))
    return str(listen)


def _call(method: str, url: str, key: str) -> Any:
    request = urllib.request.Request(url, method=method, headers={"X-Gateway-Admin-Key": key})
    try:
        with _OPENER.open(request, timeout=120) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        raise _CommandError(f"{exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise _CommandError(f"cannot reach {url}: {exc.reason}") from None
    return json.loads(raw) if raw else None
