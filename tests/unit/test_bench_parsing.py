"""The bench harness's parsers: wrk's report and mayflyd's sandbox-cost histogram."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench import admin_metrics, measures, report, wrk
from bench.servers import RunningServer
from mayflyd.metrics import Metrics

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   132.61ms    5.12ms 160.00ms   90.00%
    Req/Sec   243.00     20.00   300.00     80.00%
  Latency Distribution
     50%  132.61ms
     75%  137.21ms
     90%  140.56ms
     99%  145.80ms
  4830 requests in 10.00s, 1.07MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 6
Requests/sec:    483.00
Transfer/sec:    109.00KB
"""


def test_wrk_report() -> None:
    result = wrk.parse(WRK_OUTPUT, connections=64, duration_s=10, threads=2)
    assert (result.rps, result.requests, result.non_2xx) == (483.0, 4830, 6)
    assert result.latency == pytest.approx({"50": 0.13261, "75": 0.13721, "90": 0.14056, "99": 0.1458})
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 1}
    assert result.errors == 9


def test_wrk_report_without_numbers_is_an_error() -> None:
    with pytest.raises(ValueError, match="no Requests/sec"):
        wrk.parse("unable to connect to 127.0.0.1:8080 Connection refused", 1, 1, 1)


def test_sandbox_cost_histogram_from_real_metrics() -> None:
    metrics = Metrics()
    for seconds in (0.0003, 0.0004, 0.003):
        metrics.sandbox_cost("hello", seconds)
    metrics.sandbox_cost("other", 0.02)
    text = metrics.render()[0].decode()
    hello = admin_metrics.histogram(text, "mayflyd_sandbox_cost_seconds", tenant="hello")
    assert hello.count == 3 and hello.mean == pytest.approx(0.0037 / 3)
    assert sum(n for _, n in hello.per_bucket()) == 3
    both = admin_metrics.histogram(text, "mayflyd_sandbox_cost_seconds")
    assert both.count == 4
    assert admin_metrics.diff(both, hello).count == 1


def test_a_run_with_errors_reports_what_the_server_logged_during_it(tmp_path: Path) -> None:
    log = tmp_path / "mayflyd.log"
    log.write_text("ts=1 level=warning msg=before\n")
    server = RunningServer("d. mayflyd", 1, "h", None, 0.0, log_path=log)  # type: ignore[arg-type]
    mark = measures._log_size(server)
    with open(log, "a") as f:
        f.write("ts=2 level=info msg=fine\nts=3 level=error msg=\"the sandbox crashed\"\n")
    complaints = measures._complaints_since(server, mark)
    assert complaints == ['ts=3 level=error msg="the sandbox crashed"']
    rows = [{"key": "d:fork", "connections": 64, "wrk": {"errors": 1}, "server_log": complaints},
            {"key": "d:reset", "connections": 64, "wrk": {"errors": 2}},
            {"key": "a", "connections": 64, "wrk": {"errors": 0}}]
    assert report.server_complaints({"rows": rows}) == [
        "- errors in `d:fork -c64`; the server logged:", '  - `ts=3 level=error msg="the sandbox crashed"`',
        "- errors in `d:reset -c64`; the server logged:", "  - `(nothing logged at warning or error level)`"]
