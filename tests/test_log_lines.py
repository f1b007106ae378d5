"""The log lines: the access log written without a logging record is the line logging
would write; lines made during a turn of the event loop are written together at its end,
in order; the formats' times are logging's and datetime's."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import pytest
from aiohttp.abc import AbstractAccessLogger
from aiohttp.test_utils import TestClient

from gateway.app import build_app, server_options
from gateway.config.loader import Overrides, Source
from gateway.log_lines import FIELDS, JsonFormatter, LineHandler, TextFormatter
from gateway.logs import AccessLog, JsonAccessLog
from tests.conftest import GatewayTestServer, write_setup

ACCESS_TEXT = re.compile(
    r'(?P<time>\S+ \S+) INFO (?P<logger>\S+) \[\d+\] 127\.0\.0\.1 "GET /shop/items\?page=2 HTTP/1\.1" 200 '
    r"(?P<bytes>\d+) [\d.]+s id=req-42"
)


class Captured(logging.Handler):
    """Another handler: its presence sends the access log through logging."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
async def logged(
    tmp_path: Any, vendor: Any, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> AsyncIterator[Callable[..., Awaitable[tuple[TestClient, logging.Logger]]]]:
    """A gateway whose access log goes to a logger of its own, with the given class."""
    loggers: list[logging.Logger] = []

    async def start(access_log_class: type[AbstractAccessLogger]) -> tuple[TestClient, logging.Logger]:
        config_file, _ = write_setup(tmp_path, [{"vendor": "shop", "upstream": vendor.url}], {})
        source = Source(str(config_file), {}, Overrides())
        settings = source.load()
        logger = logging.getLogger(f"test-access-{uuid.uuid4().hex}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        loggers.append(logger)
        server = GatewayTestServer(build_app(settings, source))
        await server.start_server(access_log_class=access_log_class, access_log=logger, **server_options(settings))
        return await aiohttp_client(server), logger

    yield start
    for logger in loggers:
        logger.handlers.clear()


async def lines_of(stream: io.StringIO, count: int) -> list[str]:
    """The first ``count`` lines written to ``stream`` (the access line follows the answer)."""
    for _ in range(500):
        lines = stream.getvalue().splitlines()
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.01)
    raise AssertionError(f"{count} lines expected, got {stream.getvalue()!r}")


async def direct_then_through_logging(logged: Any, access_log_class: type[AbstractAccessLogger],
                                      formatter: Callable[[], logging.Formatter]) -> tuple[str, str, list[str]]:
    """The access line of one request while a LineHandler alone sees the logger's records,
    that of one more once another handler does, and what that other handler got."""
    client, logger = await logged(access_log_class)
    stream = io.StringIO()
    logger.addHandler(LineHandler(stream, formatter()))
    headers = {"X-Request-Id": "req-42"}
    assert (await client.get("/shop/items?page=2", headers=headers)).status == 200
    direct = (await lines_of(stream, 1))[0]
    captured = Captured(formatter())
    logger.addHandler(captured)
    assert (await client.get("/shop/items?page=2", headers=headers)).status == 200
    return direct, (await lines_of(stream, 2))[1], captured.lines


async def test_the_text_access_line_is_the_same_without_a_logging_record(logged: Any) -> None:
    first, second, captured = await direct_then_through_logging(logged, AccessLog, TextFormatter)
    direct, through_logging = ACCESS_TEXT.fullmatch(first), ACCESS_TEXT.fullmatch(second)
    assert direct and through_logging and captured == [second]
    assert direct["logger"] == through_logging["logger"] and direct["logger"].startswith("test-access-")
    assert direct["bytes"] == through_logging["bytes"]


async def test_the_json_access_line_is_the_same_without_a_logging_record(logged: Any) -> None:
    first, second, captured = await direct_then_through_logging(logged, JsonAccessLog, JsonFormatter)
    direct, through_logging = json.loads(first), json.loads(second)
    assert [json.loads(line) for line in captured] == [through_logging]
    varying = {"time", "duration_ms", "upstream_ms", "budget_wait_ms"}
    assert direct.keys() == through_logging.keys()
    assert {k: v for k, v in direct.items() if k not in varying} == {
        k: v for k, v in through_logging.items() if k not in varying
    }
    assert direct["path"] == "/shop/items" and direct["vendor"] == "shop" and direct["request_id"] == "req-42"
    assert direct["message"] == "GET /shop/items 200" and direct["status"] == 200


def test_lines_made_outside_an_event_loop_are_written_at_once() -> None:
    stream = io.StringIO()
    LineHandler(stream, TextFormatter()).write("first")
    assert stream.getvalue() == "first\n"


async def test_lines_of_one_turn_of_the_loop_are_written_together_at_its_end_in_order() -> None:
    stream = io.StringIO()
    handler = LineHandler(stream, TextFormatter())
    logger = logging.getLogger(f"test-lines-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    handler.write("second")
    logger.info("third")
    handler.write("fourth")
    assert stream.getvalue() == ""
    await asyncio.sleep(0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "second" and "third" in lines[1] and lines[2] == "fourth" and len(lines) == 3
    handler.write("fifth")
    handler.flush()  # logging.shutdown flushes every handler at exit
    assert stream.getvalue().splitlines()[-1] == "fifth"


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.9995, 1_700_000_000.0004999, 1_700_000_059.999])
def test_the_times_are_those_of_logging_and_datetime(created: float) -> None:
    record = logging.LogRecord("gateway", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    setattr(record, "request_id", "r-1")
    classic = logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s").format(record)
    assert TextFormatter().format(record) == f"{classic} id=r-1"
    setattr(record, FIELDS, {"vendor": "shop"})
    line = json.loads(JsonFormatter().format(record))
    assert line["time"] == datetime.fromtimestamp(created, timezone.utc).isoformat(timespec="milliseconds")
    assert line["message"] == "hello there" and line["request_id"] == "r-1" and line["vendor"] == "shop"
