#!/usr/bin/env python3
"""SDK fidelity: what real vendor SDKs make the vendor receive, direct and through the gateway.

    pip install -e '.[bench]'      # hubspot-api-client 12, simple-salesforce 1.12, slack_sdk 3
    python benchmarks/sdk_fidelity.py [--keep-logs]

Each step below is an ordinary SDK call. A recording mock vendor (an aiohttp app on
127.0.0.1) keeps the method, raw path, raw query, headers and body of every request it
receives and answers with plausible JSON for the endpoint. The steps run twice: once with
each SDK pointed at the mock, holding the vendor credential; once pointed at a
``gateway serve`` whose policies (the shipped ``hubspot.yaml`` and ``salesforce.yaml``, and
a minimal Slack one, each with its upstream moved to the mock and a static bearer
credential) inject that credential, the SDKs holding only a caller key.

Printed per step: what each SDK call returned (or raised) in both runs, then every
difference in what the vendor received: a request only one run made, and per request the
method, path, query, body and each header. Not compared, because the gateway sets them
by design:

- ``Authorization``: the credential (checked apart: the vendor must receive the same one);
- ``X-Request-Id``: the gateway adds one to every request;
- hop-by-hop headers (RFC 9110 7.6.1): ``Connection`` and the headers it names,
  ``Keep-Alive``, ``Proxy-Connection``, ``TE``, ``Transfer-Encoding``, ``Upgrade``, ``Trailer``,
  ``Proxy-Authorization``, ``Proxy-Authenticate``.

Header names are compared without case (HTTP's rule); values and their order exactly.
Exit status: 0 when the vendor received the same in both runs, 1 otherwise.

Pointing each SDK at the gateway (the token is the caller's gateway key):

- HubSpot: ``HubSpot(access_token=KEY, host="http://gateway:8080/hubspot")``.
- Slack: ``WebClient(token=KEY, base_url="http://gateway:8080/slack/")`` for a policy whose
  upstream is ``https://slack.com/api``.
- simple-salesforce: ``Salesforce(instance="gateway:8080/salesforce", session_id=KEY)``.
  It always builds ``https://`` URLs, so the gateway must be reached over TLS there; on plain
  HTTP give it a ``requests`` session that sends them as ``http://`` (``PlainHttp`` below).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import HOST, Processes, free_port, leave, start_gateway

REPO = Path(__file__).resolve().parent.parent
VENDOR_TOKEN = "vendor-token-7f3a"
CALLER_KEY = "caller-key-5d1e"
SALESFORCE_VERSION = "59.0"
IGNORED = {"authorization", "x-request-id", "connection", "keep-alive", "proxy-connection", "te",
           "transfer-encoding", "upgrade", "trailer", "proxy-authorization", "proxy-authenticate"}
NOW = "2026-01-05T10:00:00.000Z"


@dataclass
class Received:
    method: str
    path: str
    query: str | None
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self) -> dict[str, list[str]]:
        values: dict[str, list[str]] = {}
        for name, value in self.headers:
            values.setdefault(name.lower(), []).append(value)
        return values


@dataclass
class Recorder:
    """What the mock received, by run and step; and the one thing it keeps between calls, a
    company's name, so that a stale read after a write shows in what the SDK returns."""

    run: str = ""
    step: str = ""
    received: dict[tuple[str, str], list[Received]] = field(default_factory=dict)  # (run, step) -> requests
    company_name: str = "Acme"

    def start(self, run: str) -> None:
        self.run = run
        self.company_name = "Acme"

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        if path.startswith("/crm/v3/objects/companies/batch/upsert"):
            self.company_name = json.loads(body)["inputs"][0]["properties"]["name"]
        return answer_for(method, path, self.company_name)


def answer_for(method: str, path: str, company_name: str) -> tuple[int, Any]:
    """A plausible answer of the real vendor for this endpoint."""
    company = {"id": "5001", "properties": {"name": company_name, "domain": "acme.example"}, "createdAt": NOW,
               "updatedAt": NOW, "archived": False}
    if path.startswith("/crm/v3/objects/companies/batch/upsert"):
        return 200, {"status": "COMPLETE", "results": [{**company, "new": False}], "startedAt": NOW, "completedAt": NOW}
    if path.startswith("/crm/v3/objects/companies/"):
        return 200, company
    sobjects = f"/services/data/v{SALESFORCE_VERSION}/sobjects/Contact/"
    if method == "PATCH" and path.startswith(sobjects) and "/" in path.removeprefix(sobjects):  # by external id
        return 201, {"id": "003000000000001AAA", "success": True, "errors": [], "created": True}
    if method == "PATCH" and path.startswith(sobjects):
        return 204, None
    if path.startswith(sobjects):
        return 200, {"attributes": {"type": "Contact", "url": sobjects + "003000000000001AAA"},
                     "Id": "003000000000001AAA", "LastName": "Lovelace", "Email": "a@b.com"}
    if path.startswith(f"/services/data/v{SALESFORCE_VERSION}/query"):
        return 200, {"totalSize": 1, "done": True, "records": [
            {"attributes": {"type": "Contact", "url": sobjects + "003000000000001AAA"}, "Id": "003000000000001AAA",
             "Name": "Ada Lovelace"}]}
    if path == "/api/chat.postMessage":
        return 200, {"ok": True, "channel": "C0123", "ts": "1767607200.000100",
                     "message": {"type": "message", "text": "hello", "ts": "1767607200.000100"}}
    if path == "/api/conversations.list":
        return 200, {"ok": True, "channels": [{"id": "C0123", "name": "general", "is_channel": True}],
                     "response_metadata": {"next_cursor": ""}}
    return 404, {"error": "not_found"}


def start_mock(recorder: Recorder) -> str:
    """The recording vendor, served from its own thread (the SDKs block the caller's)."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path, _, query = request.raw_path.partition("?")
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers]
        recorder.received.setdefault((recorder.run, recorder.step), []).append(
            Received(request.method, path, query if "?" in request.raw_path else None, headers, body))
        status, document = recorder.answer(request.method, path, body)
        return web.json_response(document, status=status) if document is not None else web.Response(status=status)

    port = free_port()
    started = threading.Event()

    def serve() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)  # bodies as they were sent
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, HOST, port).start())
        started.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    started.wait(10)
    return f"http://{HOST}:{port}"


def plain_http_session() -> Any:
    import requests

    class PlainHttp(requests.Session):
        """Sends simple-salesforce's https:// URLs as http:// (the mock and this gateway have no TLS)."""

        def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            return super().request(method, "http://" + url.removeprefix("https://"), *args, **kwargs)

    return PlainHttp()


@dataclass
class Target:
    """Where each SDK is pointed in one run, and with which token."""

    hubspot: str
    salesforce: str  # host[:port][/prefix], as simple-salesforce's ``instance``
    slack: str
    token: str


def steps(target: Target) -> list[tuple[str, Callable[[], Any]]]:
    from hubspot import HubSpot
    from hubspot.crm.companies import BatchInputSimplePublicObjectBatchInputUpsert, SimplePublicObjectBatchInputUpsert
    from simple_salesforce import Salesforce
    from slack_sdk import WebClient

    hubspot = HubSpot(access_token=target.token, host=target.hubspot)
    salesforce = Salesforce(instance=target.salesforce, session_id=target.token, version=SALESFORCE_VERSION,
                            session=plain_http_session())
    slack = WebClient(token=target.token, base_url=target.slack)
    upsert = BatchInputSimplePublicObjectBatchInputUpsert(inputs=[SimplePublicObjectBatchInputUpsert(
        id_property="domain", id="acme.example", properties={"name": "Acme Corp", "notes": "Zürich office; 50% off"})])
    return [
        ("hubspot: get company by id", lambda: hubspot.crm.companies.basic_api.get_by_id(
            "5001", properties=["name", "domain"], archived=False).properties),
        ("hubspot: batch upsert companies", lambda: hubspot.crm.companies.batch_api.upsert(upsert).status),
        ("hubspot: the same get, after the upsert", lambda: hubspot.crm.companies.basic_api.get_by_id(
            "5001", properties=["name", "domain"], archived=False).properties),
        ("salesforce: Contact.upsert by e-mail", lambda: salesforce.Contact.upsert(
            "Email__c/a@b.com", {"LastName": "Lovelace", "Title": "Analyst & Engineer"})),
        ("salesforce: query", lambda: salesforce.query(
            "SELECT Id, Name FROM Contact WHERE Email = 'a+b@example.com' AND Name LIKE 'Ada%'")["totalSize"]),
        ("salesforce: Contact.get", lambda: salesforce.Contact.get("003000000000001AAA")["LastName"]),
        ("salesforce: Contact.update (204, no body)", lambda: salesforce.Contact.update(
            "003000000000001AAA", {"Title": "Lead Analyst"})),
        ("slack: chat_postMessage", lambda: slack.chat_postMessage(
            channel="C0123", text="hello", blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}])["ts"]),
        ("slack: conversations_list", lambda: [c["name"] for c in slack.conversations_list(
            limit=100, types="public_channel,private_channel")["channels"]]),
    ]


def outcome(call: Callable[[], Any]) -> str:
    try:
        return f"ok: {call()!r}"[:160]
    except Exception as exc:  # every SDK raises its own types; the point is to show them
        return f"raised {type(exc).__name__}: {' '.join(str(exc).split())}"[:160]


def run_steps(recorder: Recorder, run: str, target: Target) -> dict[str, str]:
    recorder.start(run)
    results = {}
    for name, call in steps(target):
        recorder.step = name
        results[name] = outcome(call)
    return results


def policies(mock: str) -> list[str]:
    """The shipped HubSpot and Salesforce policies moved to the mock, and a Slack one.

    Edited as text: a YAML round trip would turn keys such as ``on`` into booleans."""
    credential = "credentials: {type: bearer, token: '${BENCH_VENDOR_TOKEN}'}\n"
    texts = []
    for name in ("hubspot", "salesforce"):
        text = (REPO / "policies" / f"{name}.yaml").read_text()
        text = re.sub(r"(?m)^upstream: .*$", f"upstream: {mock}", text)
        text = re.sub(r"(?m)^credentials:\n(?:[ #].*\n|\n)*", credential, text)
        texts.append(text)
    texts.append(f"vendor: slack\nupstream: {mock}/api\n{credential}")
    return texts


def differences(direct: list[Received], gateway: list[Received]) -> list[str]:
    found = []
    if len(direct) != len(gateway):
        found.append(f"requests: {len(direct)} direct, {len(gateway)} through the gateway")
    for i, (d, g) in enumerate(zip(direct, gateway)):
        where = f"request {i + 1}: " if max(len(direct), len(gateway)) > 1 else ""
        for what, a, b in (("method", d.method, g.method), ("path", d.path, g.path), ("query", d.query, g.query)):
            if a != b:
                found.append(f"{where}{what}: direct {a!r}, gateway {b!r}")
        if d.body != g.body:
            found.append(f"{where}body: direct {d.body[:120]!r}, gateway {g.body[:120]!r}")
        dh, gh = d.header_values(), g.header_values()
        named = {n.strip().lower() for v in dh.get("connection", []) + gh.get("connection", []) for n in v.split(",")}
        for name in sorted((dh.keys() | gh.keys()) - IGNORED - named):
            if dh.get(name) != gh.get(name):
                found.append(f"{where}header {name}: direct {dh.get(name)}, gateway {gh.get(name)}")
        if dh.get("authorization") != gh.get("authorization"):
            found.append(f"{where}credential: direct {dh.get('authorization')}, gateway {gh.get('authorization')}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep-logs", action="store_true", help="keep the gateway's config, policies and log")
    parser.add_argument("--verbose", action="store_true", help="print every request the vendor received")
    args = parser.parse_args(argv)
    recorder = Recorder()
    mock = start_mock(recorder)
    workdir = Path(tempfile.mkdtemp(prefix="gateway-sdk-fidelity-"))
    procs = Processes(workdir)
    os.environ["BENCH_VENDOR_TOKEN"] = VENDOR_TOKEN
    os.environ["BENCH_CALLER_KEY"] = CALLER_KEY
    os.environ["SALESFORCE_INSTANCE_URL"] = mock
    try:
        config = "callers:\n  - {name: bench, key: '${BENCH_CALLER_KEY}'}\n"
        gateway, _ = start_gateway(procs, policies(mock), config)
        bare = mock.removeprefix("http://")
        direct = run_steps(recorder, "direct", Target(mock, bare, f"{mock}/api/", VENDOR_TOKEN))
        through = run_steps(recorder, "gateway", Target(f"{gateway}/hubspot", f"{gateway.removeprefix('http://')}/salesforce",
                                                        f"{gateway}/slack/", CALLER_KEY))
    finally:
        procs.stop_all()
        leave(workdir, args.keep_logs)
    total = 0
    print(f"SDK fidelity: what the vendor received, direct and through the gateway (mock vendor {mock})")
    print(f"not compared: {', '.join(sorted(IGNORED - {'authorization'}))}; Authorization checked to be the same\n")
    for name in direct:
        found = differences(recorder.received.get(("direct", name), []), recorder.received.get(("gateway", name), []))
        total += len(found)
        print(f"{'same' if not found else 'DIFFERENT':<9} {name}")
        print(f"          direct:  {direct[name]}")
        print(f"          gateway: {through[name]}")
        for line in found:
            print(f"          - {line}")
        if args.verbose:
            for run in ("direct", "gateway"):
                for r in recorder.received.get((run, name), []):
                    print(f"          {run} sent: {r.method} {r.path}{'?' + r.query if r.query is not None else ''}"
                          f" {r.headers} {r.body[:200]!r}")
    print(f"\n{total} difference(s) in what the vendor received")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
