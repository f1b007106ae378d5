"""``log_format: json``: every line the gateway writes is one JSON object.

Each line has ``time`` (ISO 8601 UTC), ``level``, ``logger``, ``message``, and
``request_id`` when the record is about a request. The access log adds what the request
came to: vendor, caller, method, path (never the query: callers' queries carry personal
data), status, attempts, durations, cache result, budget wait and the problem type of a
gateway error. The dict is built only when the access logger is enabled.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.answers import GATEWAY_ERROR
from gateway.request import REQUEST_CONTEXT

# What a request's record carries for the JSON line, under this attribute.
FIELDS = "gateway_fields"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            line["request_id"] = request_id
        fields = getattr(record, FIELDS, None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class JsonAccessLog(AbstractAccessLogger):
    """The access log's JSON line: one per request, with what it came to."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        path = request.raw_path.partition("?")[0]
        fields: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "status": response.status,
            "bytes": response.body_length,
            "duration_ms": round(time * 1000, 3),
            "remote": request.remote,
        }
        ctx = request.get(REQUEST_CONTEXT)
        if ctx is not None:
            fields.update(
                vendor=ctx.vendor,
                caller=ctx.caller,
                attempts=ctx.attempts,
                upstream_ms=round(ctx.upstream_seconds * 1000, 3),
                budget_wait_ms=round(ctx.budget_seconds * 1000, 3),
                cache=ctx.cache.lower() if ctx.cache else None,
            )
            if ctx.left:
                fields["status"] = 499
        made = response.get(GATEWAY_ERROR)
        if made is not None:
            fields["error"] = made.type
        request_id = response.headers.get("X-Request-Id") or (ctx.request_id if ctx is not None else None)
        self.logger.info("%s %s %d", request.method, path, fields["status"],
                         extra={"request_id": request_id, FIELDS: fields})
