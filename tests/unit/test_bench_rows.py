"""The bench's rows g (granian) and n (nginx) and its all-cores table: which
rows a selection runs, the skip when a server is not installed, the
servers' answers and the report's lines. No timing is asserted."""
from __future__ import annotations

import http.client
import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as cli
from bench import measures, reference_servers, report
from bench.common import SEED, Pinning

NO_PIN = Pinning((), (), "none")
PAGE = SEED.read_text().split('"""')[1].encode()


def _row(key: str, connections: int, rps: float, errors: int = 0) -> dict[str, Any]:
    return {"server": f"{key}. server", "key": key, "connections": connections,
            "wrk": {"rps": rps, "latency": {"50": 0.001, "99": 0.004}, "errors": errors, "non_2xx": errors,
                    "socket_errors": {}}}


def test_row_letters_select_servers_in_the_order_given() -> None:
    keys = list(measures.server_factories(NO_PIN))
    assert measures.keys_of(["a", "d", "g", "n"], keys) == ["a", "d:fork", "d:reset", "g", "n"]
    assert measures.keys_of(["a", "e", "f"], keys) == ["a", "d:reset", "f"]
    assert measures.keys_of(["n", "a", "n"], keys) == ["n", "a"]


def test_unknown_rows_are_refused_before_anything_runs() -> None:
    with pytest.raises(SystemExit):
        cli.main(["--rows", "g,z", "--out", "/nonexistent"])


def test_a_server_that_is_not_installed_is_skipped_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    said: list[str] = []
    result = measures.throughput(NO_PIN, ["n"], [1], 1.0, said.append)
    assert result["rows"] == []
    assert result["notes"] == said == [f"row n skipped: nginx is not installed ({reference_servers.NGINX_INSTALL})"]


def test_the_nginx_config_keeps_every_path_in_its_directory() -> None:
    conf = reference_servers.nginx_config("/tmp/mfb-x", 8123, 2)
    assert "worker_processes 2;" in conf and "daemon off;" in conf and "access_log off;" in conf
    assert "listen 127.0.0.1:8123;" in conf and 'return 200 "hello";' in conf
    paths = re.findall(r"\s(/[^\s;]+)", conf)
    assert len(paths) == 7 and all(p.startswith("/tmp/mfb-x/") for p in paths), paths


def test_all_cores_ratios_are_to_both_baselines_at_the_same_connections() -> None:
    single = {"rows": [_row("a", 1, 5000), _row("a", 64, 20000), _row("g", 64, 30000)]}
    result = {"rows": [_row("a", 64, 36000), _row("n", 64, 90000), _row("g", 8, 1000)], "notes": [],
              "workers": 2, "pinning": "servers and wrk on cores 0,1"}
    measures.add_single_core_ratios(result, single)
    assert [r["rps_ratio_1core"] for r in result["rows"]] == [1.8, 4.5, None]
    result["rows"][0]["rps_ratio"], result["rows"][1]["rps_ratio"] = 1.0, 2.5
    result["rows"][2]["wrk"]["errors"] = 3
    table = [line for line in report.all_cores_section(result) if line.startswith("|")]
    assert table[0] == ("| server | conns | req/s | ratio to a (2 cores) | ratio to a (1 core) | p50 ms | p99 ms "
                        "| errors | run |")
    assert table[2:] == ["| a. server | -c64 | 36000 | 1.000 | 1.800 | 1.00 | 4.00 | 0 | ok |",
                         "| n. server | -c64 | 90000 | 2.500 | 4.500 | 1.00 | 4.00 | 0 | ok |",
                         "| g. server | -c8 | 1000 | - | - | 1.00 | 4.00 | 3 | **ERRORS** |"]
    measures.add_single_core_ratios(result, None)
    assert all(r["rps_ratio_1core"] is None for r in result["rows"])


def test_the_report_places_the_all_cores_table_after_the_pinned_one() -> None:
    data = {"started_utc": "t", "mode": "full", "rows": "a,g,n", "wrk_settings": "w", "elapsed_s": 1.0,
            "machine": {"cores": 2, "platform": "p", "python": "3", "root": True, "pinning": "p"},
            "throughput": {"rows": [_row("a", 64, 20000) | {"rps_ratio": 1.0}], "notes": []},
            "all_cores": {"rows": [_row("a", 64, 36000) | {"rps_ratio": 1.0, "rps_ratio_1core": 1.8}],
                          "notes": ["row n skipped: nginx is not installed"], "workers": 2, "pinning": "p"}}
    text = report.markdown(data, [], None)
    assert text.startswith("# mayflyd benchmark, t (full mode, rows a,g,n only)\n")
    assert text.index("## 1. Throughput") < text.index("## 1b. Throughput on all 2 cores")
    assert "- row n skipped: nginx is not installed" in text


def _answers(server_port: int, count: int = 3) -> list[tuple[int, bytes]]:
    conn = http.client.HTTPConnection("127.0.0.1", server_port, timeout=10)
    answers = []
    for _ in range(count):  # one keep-alive connection
        conn.request("GET", "/any/path?q=1")
        response = conn.getresponse()
        answers.append((response.status, response.read()))
    conn.close()
    return answers


@pytest.mark.skipif(importlib.util.find_spec("granian") is None, reason="granian is not installed (bench extra)")
@pytest.mark.parametrize("workers", [1, 2])
def test_granian_serves_the_seed_program_in_process(workers: int) -> None:
    with reference_servers.granian(NO_PIN, workers) as server:
        assert _answers(server.port) == [(200, PAGE)] * 3


@pytest.mark.skipif(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                    reason="nginx is not installed")
def test_nginx_answers_hello_from_a_config_of_its_own() -> None:
    with reference_servers.nginx(NO_PIN, 2) as server:
        assert _answers(server.port) == [(200, b"hello")] * 3
    assert server.proc.poll() is not None


def test_aiohttp_processes_share_the_port_and_all_stop() -> None:
    with reference_servers.aiohttp_processes(NO_PIN, 2) as server:
        assert _answers(server.port) == [(200, PAGE)] * 3
    assert server.proc.poll() is not None
