"""A tenant's exception as one log record at level error, through the daemon:
under both engines and both log formats, for a program, a WSGI app and
on_init(); tagged with the tenant and the request id the client saw."""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.daemon_harness import Daemon, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root, serving
from tests.integration.programs import RAISES, WSGI_RAISES

pytestmark = needs_root

INIT_FAILS = '''
def on_init():
    raise RuntimeError("init-broke")  # on_init's raising line


def on_client_request(request):
    return "never"
'''

IMPORT_FAILS = '''
import json

settings = json.loads("{not json")  # the import's raising line
'''

VICTIM = '''
def on_client_request(request):
    return "victim"
'''

_LOGFMT_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def _unquote(value: str) -> str:
    if not value.startswith('"'):
        return value

    def one(match: re.Match[str]) -> str:
        text = match.group(1)
        if text[0] in "xu":
            return chr(int(text[1:], 16))
        return _ESCAPES[text]
    return re.sub(r'\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)', one, value[1:-1])


def parse_log(text: str, log_format: str) -> list[dict[str, Any]]:
    """The daemon's log as one dict per record, in either format."""
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        if log_format == "json":
            if line.startswith("{"):
                records.append(json.loads(line))
        elif line.startswith("ts="):
            records.append({key: _unquote(value) for key, value in _LOGFMT_FIELD.findall(line)})
    return records


@pytest.fixture(scope="module", params=("fork-logfmt", "fork-json", "reset-logfmt", "reset-json"))
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    engine, _, log_format = str(request.param).partition("-")
    skip_without_reset_engine(engine)
    tenants = [
        {"name": "boom", "hosts": ["boom.localhost"], "program": "programs/boom.py", "limits": limits()},
        {"name": "wsgiboom", "hosts": ["wsgiboom.localhost"], "app": "programs.wsgi_boom:application",
         "limits": limits()},
        {"name": "initfail", "hosts": ["initfail.localhost"], "program": "programs/init_fails.py",
         "limits": limits()},
        {"name": "importfail", "hosts": ["importfail.localhost"], "program": "programs/import_fails.py",
         "limits": limits()},
        {"name": "victim", "hosts": ["victim.localhost"], "program": "programs/victim.py", "limits": limits()},
    ]
    for tenant in tenants:
        tenant["engine"] = engine
    sources = {"__init__.py": "", "boom.py": RAISES, "wsgi_boom.py": WSGI_RAISES, "init_fails.py": INIT_FAILS,
               "import_fails.py": IMPORT_FAILS,
               "victim.py": VICTIM}
    d = Daemon(tmp_path_factory.mktemp("mayflyd-errors"), tenants, sources, log_format=log_format,
               access_log=True)
    d.log_format = log_format  # type: ignore[attr-defined]
    yield from serving(d, engine)


def records(daemon: Daemon) -> list[dict[str, Any]]:
    return parse_log(daemon.log(), daemon.log_format)  # type: ignore[attr-defined]


def errors_of(daemon: Daemon, tenant: str) -> list[dict[str, Any]]:
    return [r for r in records(daemon) if r.get("logger") == "mayflyd.tenant.exception" and r.get("tenant") == tenant]


def _one_error_for(daemon: Daemon, tenant: str, req: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [r for r in errors_of(daemon, tenant) if str(r.get("req")) == req]
    daemon.wait_for(lambda: found(), what=f"the error record of request {req}")
    (record,) = found()
    return record


def test_a_handler_raising_is_one_error_record_with_the_request_id(daemon: Daemon) -> None:
    reply = daemon.get("boom.localhost", "/boom")
    assert reply.status == 500 and b"Traceback" not in reply.body
    req = reply.headers["X-Request-Id"]
    record = _one_error_for(daemon, "boom", req)
    assert record["level"] == "error" and record["stream"] == "stderr"
    assert (record["method"], record["path"]) == ("GET", "/boom")
    text = record["msg"]
    assert text.startswith("Traceback (most recent call last):")
    assert "return 10 // n  # the raising line" in text and "str(divide(0))" in text
    assert text.endswith("ZeroDivisionError: integer division or modulo by zero")
    # None of the traceback's lines became records of their own; what the
    # program printed before it stays one info record.
    daemon.wait_for(lambda: any(r.get("msg") == "before the error" for r in records(daemon)), what="the print")
    assert not [r for r in records(daemon) if r.get("tenant") == "boom" and r.get("level") == "info"
                and ("Traceback" in r.get("msg", "") or "ZeroDivisionError" in r.get("msg", ""))]
    # The access log's line for the 500 has the same id: the operator's join.
    daemon.wait_for(lambda: any(r.get("logger") == "mayflyd.access" and str(r.get("req")) == req
                                for r in records(daemon)), what="the access log line")
    (access,) = [r for r in records(daemon) if r.get("logger") == "mayflyd.access" and str(r.get("req")) == req]
    assert access["tenant"] == "boom" and access["msg"].endswith(" 500")
    assert access["req"] == record["req"]  # in JSON both numbers


def test_a_wsgi_app_raising_is_one_error_record(daemon: Daemon) -> None:
    reply = daemon.get("wsgiboom.localhost", "/boom?y=1")
    assert reply.status == 500
    record = _one_error_for(daemon, "wsgiboom", reply.headers["X-Request-Id"])
    assert record["level"] == "error" and (record["method"], record["path"]) == ("GET", "/boom")
    assert 'raise KeyError("app-broke")  # the app\'s raising line' in record["msg"]
    assert record["msg"].endswith("KeyError: 'app-broke'")
    assert "mayflyd/host/" not in record["msg"]  # the daemon's adapter frame is left out


@pytest.mark.parametrize(("tenant", "line", "last"), [
    ("initfail", 'raise RuntimeError("init-broke")  # on_init\'s raising line', "RuntimeError: init-broke"),
    ("importfail", 'settings = json.loads("{not json")  # the import\'s raising line',
     "json.decoder.JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
])
def test_a_load_failure_is_one_error_record_per_attempt(daemon: Daemon, tenant: str, line: str, last: str) -> None:
    daemon.wait_for(lambda: errors_of(daemon, tenant), what="the load failure's error record")
    record = errors_of(daemon, tenant)[0]
    assert record["level"] == "error" and "req" not in record and "method" not in record
    assert line in record["msg"] and record["msg"].endswith(last)
    assert "mayflyd/host/" not in record["msg"] and record["msg"].count("Traceback") == 1
    assert not [r for r in records(daemon) if r.get("tenant") == tenant and r.get("level") == "info"
                and r.get("logger", "").startswith("mayflyd.tenant")]


def test_printed_lines_stay_one_info_record_each(daemon: Daemon) -> None:
    assert daemon.get("boom.localhost", "/print").text == "printed"
    daemon.wait_for(lambda: any(r.get("msg") == "line two" for r in records(daemon)), what="the printed lines")
    printed = [r for r in records(daemon) if r.get("msg") in ("line one", "line two")]
    assert [(r["level"], r["tenant"], r["logger"]) for r in printed] == [
        ("info", "boom", "mayflyd.tenant.stdout")] * 2


def test_a_forged_record_stays_in_its_own_tenants_log(daemon: Daemon) -> None:
    assert daemon.get("boom.localhost", "/forge").text == "forged"
    daemon.wait_for(lambda: any("forged-line" in r.get("msg", "") for r in records(daemon)), what="the forgery")
    forged = [r for r in records(daemon) if "forged" in r.get("msg", "")]
    assert {r["tenant"] for r in forged} == {"boom"}
    assert not [r for r in records(daemon) if r.get("tenant") == "victim" and r.get("level") == "error"]
    # The printed imitation of a daemon line is one info record of boom's, escaped.
    (line,) = [r for r in forged if "forged-line" in r["msg"]]
    assert line["level"] == "info" and line["logger"] == "mayflyd.tenant.stdout"
    assert daemon.get("victim.localhost").text == "victim"
