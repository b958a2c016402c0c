"""An exception's traceback as one record, from a sandbox to the tenant's log.

The host side (host/program.py, report_exception) writes a traceback to
its stderr pipe as one line, in one write(): MARKER, then a JSON object
(text, and for a request its id, method and path). The supervisor's
reader of that pipe (supervisor/host_handle.py) turns such a line into one
log record at level error instead of one info record per line.

MARKER starts with control characters that an ordinary output line never
shows unescaped in the log, so an operator cannot mistake the two. The
tenant can write MARKER itself: its forged record lands in its own
tenant's log only (the supervisor tags every line of the pipe with the
tenant it belongs to), at worst as an error record with a request id
it made up.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = ["MARKER", "MAX_RECORD", "ErrorRecord", "encode", "decode"]

MARKER = b"\x1e\x1fmayflyd:exception "
# One record's line at most, marker and newline included: a longer
# traceback keeps its head and its end (where the exception is).
MAX_RECORD = 64 * 1024
_MAX_FIELD = 4096  # method and path: longer values are cut
_SURROGATE = re.compile("[\ud800-\udfff]")  # unencodable: the log writes UTF-8
_LEFT_OUT = "\n[... {} characters left out ...]\n"


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """What a sandbox reported: the traceback, and the request it broke
    (None for a failure while loading the program)."""

    text: str
    req: int | None = None
    method: str | None = None
    path: str | None = None


def _fit(text: str, room: int) -> str:
    """text within `room` characters of JSON: its head and its end."""
    fitted, keep = text, len(text)
    size = len(json.dumps(fitted))
    while size > room and keep > 2:
        # JSON escapes a character into 1 to 12: shrink by what it took.
        keep = max(keep * room // size - len(_LEFT_OUT) - 20, 2)
        head = keep // 3
        fitted = text[:head] + _LEFT_OUT.format(len(text) - keep) + text[len(text) - (keep - head):]
        size = len(json.dumps(fitted))
    return fitted


def encode(record: ErrorRecord) -> bytes:
    """The line a sandbox writes, at most MAX_RECORD bytes."""
    fields: dict[str, object] = {"req": record.req, "method": record.method, "path": record.path}
    for key in ("method", "path"):
        value = fields[key]
        if isinstance(value, str):
            fields[key] = value[:_MAX_FIELD]
    room = MAX_RECORD - len(MARKER) - len(json.dumps(fields)) - 16
    fields["text"] = _fit(record.text.rstrip("\n"), room)
    return MARKER + json.dumps(fields).encode("ascii") + b"\n"


def _clean(value: object) -> str | None:
    """A string as the log may print it (a lone surrogate becomes U+FFFD)."""
    if not isinstance(value, str):
        return None
    return _SURROGATE.sub("\ufffd", value[:MAX_RECORD])


def decode(line: bytes) -> ErrorRecord | None:
    """The record of a line written by encode(); None for any other line
    (it is logged as it is)."""
    if not line.startswith(MARKER):
        return None
    try:
        fields = json.loads(line[len(MARKER):])
    except (ValueError, RecursionError):
        return None
    if not isinstance(fields, dict):
        return None
    text = _clean(fields.get("text"))
    if text is None:
        return None
    req = fields.get("req")
    valid_req = req if isinstance(req, int) and not isinstance(req, bool) and 0 <= req < 2**64 else None
    return ErrorRecord(text=text, req=valid_req, method=_clean(fields.get("method")),
                       path=_clean(fields.get("path")))
