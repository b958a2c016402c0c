"""The C front end as the daemon runs it: its walls, its restart, its queue."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import Daemon, is_root
from tests.load import Load

HELLO = '''
def on_client_request(request):
    return "hello"
'''

SLEEPY = '''
import time


def on_client_request(request):
    time.sleep(0.3)
    return "slept"
'''


def tenant(name: str, program: str, **limits: Any) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{program}",
            "limits": {"init_timeout_ms": 5000, **limits}}


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@pytest.mark.skipif(not is_root(), reason="the front end changes uid only when the daemon runs as root")
def test_the_front_end_reads_clients_as_an_unprivileged_uid_with_its_walls(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("a", "a.py")], {"a.py": HELLO}) as d:
        assert d.get("a.localhost").text == "hello"
        pid = d.status()["front"]["pid"]
        status = proc_status(pid)
        assert status["Uid"].split() == ["65534"] * 4
        assert status["Gid"].split() == ["65534"] * 4
        assert status["Groups"] == ""
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"
        assert d.status()["front"]["threads"] == len(os.sched_getaffinity(0))


def test_a_killed_front_end_is_restarted_at_once_and_refuses_no_connection(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("a", "a.py", concurrency=64)], {"a.py": HELLO}).start()
    try:
        first = d.status()["front"]["pid"]
        with Load(d, ["a.localhost"], connections=8) as load:
            time.sleep(0.5)
            os.kill(first, signal.SIGKILL)
            d.wait_for(lambda: d.status()["front"]["pid"] not in (0, first), what="a new front end")
            time.sleep(1.0)
            # New connections after the restart are served.
            assert d.get("a.localhost").text == "hello"
        # Connections open at the kill broke; no connection was refused:
        # the listening socket is the supervisor's and outlived the front end.
        assert not [e for e in load.errors if "Refused" in e], load.errors
        assert len(load.errors) <= 8, load.errors
        assert set(load.statuses) == {200}, load.statuses
        assert d.status()["front"]["restarts"] == 1
        assert "restarting it (the listening socket stays open)" in d.log()
    finally:
        assert d.stop() == 0, d.log()[-3000:]


def test_requests_over_the_concurrency_wait_in_the_queue(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("s", "s.py", concurrency=4)], {"s.py": SLEEPY}) as d:
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(lambda _: d.get("s.localhost"), range(10)))
        assert [r.status for r in replies] == [200] * 10


def test_beyond_the_queue_a_request_gets_503_with_retry_after(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("s", "s.py", concurrency=1, queue=1)], {"s.py": SLEEPY}) as d:
        with ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda _: d.get("s.localhost"), range(3)))
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 200, 503], [(r.status, r.text) for r in replies]
        refused = next(r for r in replies if r.status == 503)
        assert refused.headers["Retry-After"] == "1"
        assert "queue is full" in refused.text
        assert refused.headers["X-Request-Id"]
        assert d.status()["tenants"]["s"]["limit_hits"] == {"concurrency": 1}
