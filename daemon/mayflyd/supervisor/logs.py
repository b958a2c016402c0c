"""Structured log lines: one event per line, logfmt or JSON, with tenant and
request id; and the budget that keeps a flooding tenant's output in check."""
from __future__ import annotations

import json
import logging
import sys
import time

__all__ = ["LogfmtFormatter", "JsonFormatter", "ReadableErrorsFormatter", "OutputBudget", "setup_logging"]

_CONTEXT_FIELDS = ("tenant", "req", "stream", "method", "path", "status", "ms", "client")
EXCEPTION_LOGGER = "mayflyd.tenant.exception"  # a sandbox's traceback, one record (host_handle.py)


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _escape(char: str) -> str:
    return {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(
        char, char if char.isprintable() else f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")


def _quote(value: str) -> str:
    """A logfmt value; control characters escaped, so tenant output cannot forge a line."""
    if value and value.isprintable() and not any(c in value for c in ' "=\\'):
        return value
    return '"' + "".join(_escape(c) for c in value) + '"'


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=mayflyd.tenant tenant=hello req=7 msg="..."``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"ts={_timestamp(record)}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                parts.append(f"{field}={_quote(str(value))}")
        parts.append(f"msg={_quote(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the same fields as the logfmt lines."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, object] = {"ts": _timestamp(record), "level": record.levelname.lower(),
                                    "logger": record.name}
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                event[field] = value
        event["msg"] = record.getMessage()
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, ensure_ascii=False, default=str)


class ReadableErrorsFormatter(LogfmtFormatter):
    """`mayflyd run`'s terminal: logfmt, but a tenant's traceback as the
    lines Python prints, under a header naming the request it broke."""

    def format(self, record: logging.LogRecord) -> str:
        if record.name != EXCEPTION_LOGGER:
            return super().format(record)
        req, method = getattr(record, "req", None), getattr(record, "method", None)
        if req is None:
            what = "loading the program"
        elif method is None:  # the sandbox knew the request's id alone
            what = f"request {req}"
        else:
            what = f"request {req} ({method} {getattr(record, 'path', None)})"
        header = f"{_timestamp(record)} error: tenant {getattr(record, 'tenant', '-')}: {what} raised an exception:"
        return "".join(_readable(c) for c in f"{header}\n{record.getMessage()}")


def _readable(char: str) -> str:
    """A traceback's character for a terminal: lines and tabs as they are,
    other control characters escaped (no escape sequence reaches it)."""
    return char if char in "\n\t" or char.isprintable() else _escape(char)


def setup_logging(level: str, log_format: str = "logfmt", *, readable_errors: bool = False) -> None:
    """The root logger to stderr in `log_format`; readable_errors: tracebacks
    as plain lines (ReadableErrorsFormatter), for `mayflyd run`."""
    handler = logging.StreamHandler(sys.stderr)
    if readable_errors:
        handler.setFormatter(ReadableErrorsFormatter())
    else:
        handler.setFormatter(JsonFormatter() if log_format == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log stays off; mayflyd writes its own (access_log).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class OutputBudget:
    """A token bucket for one tenant's stdout and stderr.

    A tenant may log in bursts, but not faster on average than `lines` lines
    and `bytes_` bytes per second: past that, lines are dropped and counted,
    so that a flooding program can neither fill the disk nor slow the daemon.
    """

    __slots__ = ("_line_rate", "_byte_rate", "_lines", "_bytes", "_last", "_dropped")

    def __init__(self, *, lines: float = 200.0, bytes_: float = 256 * 1024.0) -> None:
        self._line_rate, self._byte_rate = lines, bytes_
        self._lines, self._bytes = lines, bytes_  # a full bucket: one second's worth
        self._last = time.monotonic()
        self._dropped = 0

    def grant(self, lines: int, size: int) -> int:
        """How many of `lines` lines (`size` bytes in all) may be logged now; the rest is dropped."""
        now = time.monotonic()
        elapsed, self._last = now - self._last, now
        self._lines = min(self._line_rate, self._lines + elapsed * self._line_rate)
        self._bytes = min(self._byte_rate, self._bytes + elapsed * self._byte_rate)
        per_line = size / lines if lines else size
        by_bytes = int(self._bytes // per_line) if per_line > 0 else lines
        allowed = max(0, min(lines, int(self._lines), by_bytes))
        self._lines -= allowed
        self._bytes -= allowed * per_line
        self._dropped += lines - allowed
        return allowed

    def collect_dropped(self) -> int:
        """Lines dropped since the last call."""
        dropped, self._dropped = self._dropped, 0
        return dropped
