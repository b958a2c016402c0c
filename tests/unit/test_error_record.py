"""error_record.py's line, and the supervisor's reader that turns it into one
log record (the daemon-level tests are tests/integration/test_error_records.py)."""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from mayflyd.error_record import MARKER, MAX_RECORD, ErrorRecord, decode, encode
from mayflyd.supervisor.host_handle import SandboxHost
from mayflyd.supervisor.logs import JsonFormatter, LogfmtFormatter, OutputBudget, ReadableErrorsFormatter

TRACEBACK = 'Traceback (most recent call last):\n  File "/p.py", line 2, in f\n    1 / 0\nZeroDivisionError: x\n'


def test_a_record_is_one_line_and_comes_back() -> None:
    record = ErrorRecord(text=TRACEBACK, req=7, method="GET", path="/a b\n")
    line = encode(record)
    assert line.startswith(MARKER) and line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line[:-1]) == ErrorRecord(text=TRACEBACK.rstrip("\n"), req=7, method="GET", path="/a b\n")
    assert decode(encode(ErrorRecord(text="x"))) == ErrorRecord(text="x")


def test_a_long_traceback_keeps_its_head_and_its_end() -> None:
    text = "Traceback (most recent call last):\n" + "".join(f"  frame {i}\n" for i in range(20000)) + "E: end"
    line = encode(ErrorRecord(text=text, req=1, method="GET", path="/" + "p" * 10000))
    assert len(line) <= MAX_RECORD
    record = decode(line)
    assert record is not None and record.text.startswith("Traceback") and record.text.endswith("E: end")
    assert "characters left out" in record.text
    # Escaped characters take more room: still within the limit.
    for char in ("\x01", "\U0001f600", "é"):
        line = encode(ErrorRecord(text="start" + char * 100000 + "end"))
        assert len(line) <= MAX_RECORD and len(line) > MAX_RECORD * 0.9
        record = decode(line)
        assert record is not None and record.text.startswith("start") and record.text.endswith("end")


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"req": 1}', b'{"text": 3}', b"{" * 100000])
def test_what_is_not_a_record_is_an_ordinary_line(payload: bytes) -> None:
    assert decode(MARKER + payload) is None
    assert decode(b"x" + MARKER + b'{"text": "t"}') is None


@pytest.mark.parametrize("req", [-1, True, "7", 2**64, 1.5])
def test_a_bad_request_id_is_left_out(req: object) -> None:
    record = decode(MARKER + json.dumps({"req": req, "text": "t", "method": 3}).encode())
    assert record == ErrorRecord(text="t")


def test_a_lone_surrogate_cannot_break_the_log() -> None:
    record = decode(MARKER + b'{"text": "a\\udc80b", "path": "\\ud800"}')
    assert record is not None and record.text == "a\ufffdb" and record.path == "\ufffd"


def _relay(data: list[bytes], name: str, caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    host = object.__new__(SandboxHost)
    host.tenant = "t1"
    host._output_budget = OutputBudget(lines=10000, bytes_=10 * MAX_RECORD)

    async def run() -> None:
        stream = asyncio.StreamReader()
        for chunk in data:
            stream.feed_data(chunk)
        stream.feed_eof()
        await host._relay_output(stream, name)
    with caplog.at_level(logging.INFO, logger="mayflyd.tenant"):
        asyncio.run(run())
    return [r for r in caplog.records if r.name.startswith("mayflyd.tenant")]


def test_the_reader_makes_one_error_record_of_a_record_line(caplog: pytest.LogCaptureFixture) -> None:
    line = encode(ErrorRecord(text=TRACEBACK + "x" * 20000, req=9, method="POST", path="/p"))
    assert len(line) > 8192  # longer than an ordinary line may be, and split across chunks
    logged = _relay([b"before\n" + line[:100], line[100:5000], line[5000:] + b"after\n"], "stderr", caplog)
    assert [(r.name, r.levelname) for r in logged] == [
        ("mayflyd.tenant.stderr", "INFO"), ("mayflyd.tenant.exception", "ERROR"), ("mayflyd.tenant.stderr", "INFO")]
    error = logged[1]
    assert error.getMessage().startswith(TRACEBACK) and error.getMessage().endswith("x" * 100)
    assert (error.tenant, error.req, error.method, error.path, error.stream) == (  # type: ignore[attr-defined]
        "t1", 9, "POST", "/p", "stderr")


def test_the_tenant_is_the_pipes_whatever_the_record_says(caplog: pytest.LogCaptureFixture) -> None:
    forged = MARKER + json.dumps({"text": "forged", "tenant": "other", "req": 3}).encode() + b"\n"
    (record,) = _relay([forged], "stderr", caplog)
    assert record.levelname == "ERROR" and record.tenant == "t1"  # type: ignore[attr-defined]
    # On stdout the marker means nothing: one info line, escaped when formatted.
    caplog.clear()
    (line,) = _relay([forged], "stdout", caplog)
    assert line.levelname == "INFO" and '\\x1e\\x1fmayflyd:exception' in LogfmtFormatter().format(line)


def _exception_record(req: int | None) -> logging.LogRecord:
    record = logging.LogRecord("mayflyd.tenant.exception", logging.ERROR, __file__, 1, "%s",
                               (TRACEBACK.rstrip() + "\x1b[31m",), None)
    record.tenant, record.stream = "t1", "stderr"
    if req is not None:
        record.req, record.method, record.path = req, "GET", "/boom"
    return record


def test_both_formats_keep_the_traceback_in_one_line() -> None:
    record = _exception_record(5)
    logfmt = LogfmtFormatter().format(record)
    assert "\n" not in logfmt and "level=error" in logfmt and "tenant=t1 req=5" in logfmt
    assert 'msg="Traceback (most recent call last):\\n  File \\"/p.py\\"' in logfmt
    event = json.loads(JsonFormatter().format(record))
    assert (event["level"], event["tenant"], event["req"], event["msg"]) == (
        "error", "t1", 5, TRACEBACK.rstrip() + "\x1b[31m")


def test_mayflyd_runs_terminal_shows_the_traceback_as_python_prints_it() -> None:
    text = ReadableErrorsFormatter().format(_exception_record(5))
    header, *lines = text.split("\n")
    assert header.endswith(" error: tenant t1: request 5 (GET /boom) raised an exception:")
    assert lines == TRACEBACK.rstrip().split("\n")[:-1] + ["ZeroDivisionError: x\\x1b[31m"]
    assert "loading the program raised an exception:" in ReadableErrorsFormatter().format(_exception_record(None))
    id_only = _exception_record(6)
    id_only.method = id_only.path = None
    assert ": request 6 raised an exception:" in ReadableErrorsFormatter().format(id_only)
    other = logging.LogRecord("mayflyd.tenant.stdout", logging.INFO, __file__, 1, "a\nb", None, None)
    assert ReadableErrorsFormatter().format(other) == LogfmtFormatter().format(other)

