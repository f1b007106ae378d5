"""The gateway's log lines on stderr: text, or one JSON object each (``log_format: json``),
written once per turn of the event loop.

Each format makes a line from its parts (``line``), so that the access log (gateway.logs),
one line per request, can write it without a ``logging`` record in between when nothing
but the gateway's own handler would see that record: the line is the same either way.
Imports nothing that opens prometheus_client (the supervisor configures logging before
it sets the metrics' directory).

Text lines: ``time level logger [pid] message``, ending with ``id=`` (the request id)
when the record is about a request. JSON lines have ``time`` (ISO 8601 UTC), ``level``,
``logger``, ``message``, ``pid``, ``request_id`` when the record is about a request, and
the access log's fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import IO, Any

import orjson

# What a request's record carries for the JSON line, under this attribute.
FIELDS = "gateway_fields"

_TEXT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"


class Stamps:
    """A record's time as text, the part down to the second made once per second."""

    def __init__(self) -> None:
        self._local: tuple[int, str] = (-1, "")
        self._utc: tuple[int, str] = (-1, "")

    def local(self, created: float) -> str:
        """As ``logging`` writes ``%(asctime)s``: 2024-05-01 12:00:00,123 (local time)."""
        second = int(created)
        cached, text = self._local
        if cached != second:
            text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            self._local = (second, text)
        return f"{text},{int((created - second) * 1000):03d}"

    def utc(self, created: float) -> str:
        """ISO 8601 in UTC to the millisecond: 2024-05-01T12:00:00.123+00:00."""
        second = int(created)
        micros = round((created - second) * 1e6)  # as datetime.fromtimestamp rounds
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        cached, text = self._utc
        if cached != second:
            text = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            self._utc = (second, text)
        return f"{text}.{micros // 1000:03d}+00:00"


class LineFormatter(logging.Formatter):
    """A format that makes a line from a record's parts as well as from the record."""

    def line(self, created: float, level: str, name: str, pid: int | None, message: str, request_id: str | None,
             fields: dict[str, Any] | None) -> str:
        raise NotImplementedError


class TextFormatter(LineFormatter):
    """One line per record; a record about a request ends with its ``id=`` (the
    ``X-Request-Id``), so every line of a request can be found from the caller's id."""

    def __init__(self) -> None:
        super().__init__(_TEXT)
        self._stamps = Stamps()

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._stamps.local(record.created)

    def format(self, record: logging.LogRecord) -> str:
        return _with_id(super().format(record), getattr(record, "request_id", None))

    def line(self, created: float, level: str, name: str, pid: int | None, message: str, request_id: str | None,
             fields: dict[str, Any] | None) -> str:
        return _with_id(f"{self._stamps.local(created)} {level} {name} [{pid}] {message}", request_id)


def _with_id(line: str, request_id: str | None) -> str:
    return line if request_id is None or " id=" in line else f"{line} id={request_id}"


class JsonFormatter(LineFormatter):
    def __init__(self) -> None:
        super().__init__()
        self._stamps = Stamps()

    def format(self, record: logging.LogRecord) -> str:
        return self.line(record.created, record.levelname, record.name, record.process, record.getMessage(),
                         getattr(record, "request_id", None), getattr(record, FIELDS, None),
                         self.formatException(record.exc_info) if record.exc_info else None)

    def line(self, created: float, level: str, name: str, pid: int | None, message: str, request_id: str | None,
             fields: dict[str, Any] | None, exception: str | None = None) -> str:
        line: dict[str, Any] = {"time": self._stamps.utc(created), "level": level, "logger": name,
                                "message": message, "pid": pid}
        if request_id is not None:
            line["request_id"] = request_id
        if fields:
            line.update(fields)
        if exception is not None:
            line["exception"] = exception
        return orjson.dumps(line, default=str).decode()


class LineHandler(logging.Handler):
    """Writes its format's lines to ``stream``: in a running event loop, those of one turn
    of the loop together at its end (one write, however many requests it answered);
    elsewhere at once."""

    def __init__(self, stream: IO[str], formatter: LineFormatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines = formatter
        self._stream = stream
        self._pending: list[str] = []
        self._due: asyncio.AbstractEventLoop | None = None  # the loop that will write the pending lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write(line)

    def write(self, line: str) -> None:
        with self.lock:  # type: ignore[union-attr]  # made by Handler.__init__
            self._pending.append(line)
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._write_pending()
                return
            if self._due is None:
                self._due = loop
                loop.call_soon(self.flush)
            elif self._due is not loop:  # another thread's loop: that one may never turn again
                self._write_pending()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_pending()

    def _write_pending(self) -> None:
        self._due = None
        if not self._pending:
            return
        text = "\n".join(self._pending) + "\n"
        self._pending.clear()
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a stream that cannot be written (closed, a broken pipe) loses lines, never a request


def sole_line_handler(logger: logging.Logger, level: int) -> LineHandler | None:
    """The LineHandler that alone would write ``logger``'s records at ``level`` (none is
    filtered on the way, no other handler sees them), else None."""
    found: list[logging.Handler] = []
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters:
            return None
        found += node.handlers
        if not node.propagate:
            break
        node = node.parent
    if len(found) != 1 or not isinstance(found[0], LineHandler):
        return None
    handler = found[0]
    return handler if not handler.filters and handler.level <= level else None


def configure_logging(log_format: str, stream: IO[str]) -> None:
    """Lines on ``stream``: text, or one JSON object each with ``log_format: json``."""
    formatter: LineFormatter = JsonFormatter() if log_format == "json" else TextFormatter()
    logging.basicConfig(level=logging.INFO, handlers=[LineHandler(stream, formatter)])
