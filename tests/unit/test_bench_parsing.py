"""The bench harness: wrk's report, mayflyd's sandbox-cost histogram, the report's
lines and the hop floor's answers."""
from __future__ import annotations

import http.client
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from bench import admin_metrics, measures, report, servers, wrk
from bench.common import SEED, Pinning
from bench.servers import RunningServer

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


def test_sandbox_cost_histogram_from_prometheus_text() -> None:
    registry = CollectorRegistry()
    cost = Histogram("mayflyd_sandbox_cost_seconds", "cost", ["tenant"], registry=registry,
                     buckets=(0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.025))
    for seconds in (0.0003, 0.0004, 0.003):
        cost.labels("hello").observe(seconds)
    cost.labels("other").observe(0.02)
    text = generate_latest(registry).decode()
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


def test_the_hop_floor_serves_the_seed_program_as_the_baseline_does() -> None:
    pin = Pinning((), (), "none")
    answers = []
    for start in (servers.baseline, servers.hop_floor):
        with start(pin) as server:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            for _ in range(3):  # one connection, several requests: the hop keeps its order
                conn.request("GET", "/any/path?q=1")
                response = conn.getresponse()
                answers.append((start.__name__, response.status, response.getheader("Content-Type"),
                                response.read()))
            conn.close()
    page = SEED.read_text().split('"""')[1].encode()
    assert {a[1:] for a in answers} == {(200, "text/plain", page)}, answers


def test_the_report_states_the_ceiling_next_to_the_headline() -> None:
    def row(key: str, rps: float) -> dict[str, object]:
        return {"server": key, "key": key, "connections": 64, "rps_ratio": rps / 40000,
                "wrk": {"rps": rps, "latency": {}, "socket_errors": {}, "non_2xx": 0, "errors": 0}}
    data = {"started_utc": "t", "mode": "full", "wrk_settings": "w", "elapsed_s": 1.0,
            "machine": {"cores": 2, "platform": "p", "python": "3", "root": True, "pinning": "p"},
            "throughput": {"rows": [row("a", 40000), row("d:reset", 5000), row("f", 20000)], "notes": []},
            "headline": 0.125, "headline_text": "0.12"}
    text = report.markdown(data, [], None)
    assert "- ceiling of this shape (f, no sandbox) at -c64 = 0.50 of a; the best engine reaches 0.12 of a, " \
           "0.25 of f" in text


def test_the_cpu_table_has_a_column_per_server_and_kernel_threads_last() -> None:
    kernel = "kernel threads (machine-wide: wrk's core too)"
    cpu = {"connections": 64, "duration_s": 10.0, "servers": [
        {"key": "a", "server": "a. base", "rps": 40000, "server_us_per_request": 25.0,
         "rows": [{"role": "main process", "us_per_request": 25.0}, {"role": kernel, "us_per_request": 0.1}]},
        {"key": "e", "server": "e. reset", "rps": 5000, "server_us_per_request": 200.0,
         "rows": [{"role": kernel, "us_per_request": 5.0},
                  {"role": "supervisor (front end, routing, the hop)", "us_per_request": 110.0},
                  {"role": "reset workers (handler and rewind)", "us_per_request": 90.0}]}]}
    table = [line for line in report.cpu_section(cpu) if line.startswith("|")]
    assert table[0] == "| process | a. base | e. reset |"
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| main process", "| supervisor (front end, routing, the hop)", "| reset workers (handler and rewind)",
        f"| {kernel}", "| **all of the server's processes**", "| ratio to a", "| req/s during the run"]
    assert table[2] == "| main process | 25.0 | - |"
    assert table[-3:] == ["| **all of the server's processes** | **25.0** | **200.0** |",
                          "| ratio to a | 1.00x | 8.00x |", "| req/s during the run | 40000 | 5000 |"]


@pytest.mark.parametrize(("filename", "function", "area"), [
    ("/usr/lib/python3.11/asyncio/runners.py", "run", "waiting (event loop select/epoll)"),
    ("~", "<method 'poll' of 'select.epoll' objects>", "waiting (event loop select/epoll)"),
    ("/x/site-packages/mayflyd/supervisor/front_process.py", "host_ready", "other mayflyd"),
    ("/usr/lib/python3.11/asyncio/tasks.py", "run", "asyncio machinery"),
])
def test_profile_areas(filename: str, function: str, area: str) -> None:
    assert next(name for name, test in measures._AREAS if test(filename, function)) == area
