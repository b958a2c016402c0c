"""Structured log lines: one event per line, logfmt, with tenant and request id."""
from __future__ import annotations

import logging
import sys
import time

__all__ = ["LogfmtFormatter", "setup_logging"]

_CONTEXT_FIELDS = ("tenant", "req", "stream")


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\\\n\t') and value.isprintable():
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """``ts=... level=info logger=mayflyd.tenant tenant=hello req=7 msg="..."``"""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}"]
        for field in _CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                parts.append(f"{field}={_quote(str(value))}")
        parts.append(f"msg={_quote(record.getMessage())}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is a later, optional feature; its own errors stay.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
