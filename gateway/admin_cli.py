"""``gateway dead-letters ...``: the admin API from a terminal.

It talks to a running gateway (``--url``, default http://127.0.0.1:8080) with the admin
key from the environment variable GATEWAY_ADMIN_KEY (never a command-line argument,
which other users could read in the process list).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

KEY_VARIABLE = "GATEWAY_ADMIN_KEY"


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("dead-letters", help="list, show, replay or delete dead letters of a running gateway")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's address")
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per dead letter, oldest first")
    listing.add_argument("--vendor")
    listing.add_argument("--limit", type=int, default=100)
    for name, text in (("show", "one entry in full (JSON)"), ("replay", "send it again"), ("delete", "drop it")):
        action = actions.add_parser(name, help=text)
        action.add_argument("ids", nargs="+", metavar="ID")


def run(args: argparse.Namespace) -> int:
    key = os.environ.get(KEY_VARIABLE)
    if not key:
        print(f"gateway: set {KEY_VARIABLE} to the gateway's admin key", file=sys.stderr)
        return 2
    base = args.url.rstrip("/") + "/_gateway/dead-letters"
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
    except _Refused as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1


class _Refused(Exception):
    pass


def _call(method: str, url: str, key: str) -> Any:
    request = urllib.request.Request(url, method=method, headers={"X-Gateway-Admin-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail", exc.reason)
        except ValueError:
            detail = exc.reason
        raise _Refused(f"{exc.code}: {detail}") from None
    except urllib.error.URLError as exc:
        raise _Refused(f"cannot reach {url}: {exc.reason}") from None
    return json.loads(raw) if raw else None
