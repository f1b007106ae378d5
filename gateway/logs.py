"""The access log: one line per request, with what it came to (gateway.log_lines writes it).

Text: peer, request line, status, bytes, seconds, request id. JSON (``log_format: json``)
adds what the request came to: vendor, caller, method, path (never the query: callers'
queries carry personal data), status, attempts, durations, cache result, budget wait and
the problem type of a gateway error.

When the gateway's own handler alone would see the line (as ``gateway serve`` configures
logging), the line is made and written without a ``logging`` record: the same line, for a
fraction of the cost. Otherwise (a test capturing logs, another handler) it goes through
``logging`` as any record does.
"""

from __future__ import annotations

import logging
import os
import time as clock
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from gateway.answers import marked
from gateway.log_lines import FIELDS, sole_line_handler
from gateway.request import REQUEST_CONTEXT


class AccessLog(AbstractAccessLogger):
    """One text line per request: peer, request line, status, bytes, seconds, request id.

    Built by hand: aiohttp's format-string logger costs a fifth of a proxied request.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return
        request_id = response.headers.get("X-Request-Id", "-")
        version = request.version
        direct = sole_line_handler(logger, logging.INFO)
        if direct is None:
            logger.info(
                '%s "%s %s HTTP/%d.%d" %d %d %.4fs id=%s',
                request.remote, request.method, request.raw_path, version.major, version.minor,
                response.status, response.body_length, time, request_id,
            )
            return
        message = (f'{request.remote} "{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}" '
                   f"{response.status} {response.body_length} {time:.4f}s id={request_id}")
        direct.write(direct.lines.line(clock.time(), "INFO", logger.name, os.getpid(), message, None, None))


class JsonAccessLog(AbstractAccessLogger):
    """The access log's JSON line: one per request, with what it came to."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
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
        made = marked(response)
        if made is not None:
            fields["error"] = made.type
        request_id = response.headers.get("X-Request-Id") or (ctx.request_id if ctx is not None else None)
        direct = sole_line_handler(logger, logging.INFO)
        if direct is None:
            logger.info("%s %s %d", request.method, path, fields["status"],
                        extra={"request_id": request_id, FIELDS: fields})
            return
        message = f"{request.method} {path} {fields['status']}"
        direct.write(direct.lines.line(clock.time(), "INFO", logger.name, os.getpid(), message, request_id, fields))
