"""A dead host's restart through the daemon: at once after serving, backed off in a crash loop."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.daemon_harness import Daemon
from tests.integration.conftest import limits

ANSWER = "def on_client_request(request):\n    return 'up'\n"


def tenant(name: str) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{name}.py", "limits": limits()}


def next_host(d: Daemon, name: str, old: int, timeout: float = 10.0) -> tuple[int, float]:
    """The pid of `name`'s next ready host after `old`, and the seconds until it was."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        status = d.status()["tenants"][name]
        pids = [h["pid"] for h in status["hosts"]]
        if status["state"] == "ready" and len(pids) == 1 and pids[0] != old:
            return pids[0], time.monotonic() - started
        time.sleep(0.005)
    raise AssertionError(f"no new host for {name} within {timeout}s\n{d.log()[-4000:]}")


def answered_up(d: Daemon) -> None:
    """Tenant a answers, once the front end has the host the status already shows (a moment after)."""
    d.wait_for(lambda: d.get("a.localhost").text == "up", timeout=5, what="an answer of the new host")


@contextmanager
def other_tenant_served(d: Daemon) -> Iterator[Counter[int]]:
    """Requests to tenant b, one after another while the block runs; their statuses."""
    statuses: Counter[int] = Counter()
    done = threading.Event()

    def ask() -> None:
        while not done.is_set():
            statuses[d.get("b.localhost").status] += 1

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        yield statuses
    finally:
        done.set()
        thread.join(30)


def test_a_host_killed_after_serving_is_restarted_at_once_every_time(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("a"), tenant("b")], {"a.py": ANSWER, "b.py": ANSWER}) as d:
        host = d.host_pid("a")
        waits = []
        # Six kills: the former backoff (0.1 s doubling, reset after 10 s up)
        # would have waited 1.6 s and 3.2 s before the last two.
        for _ in range(6):
            assert [d.get("a.localhost").status for _ in range(3)] == [200] * 3
            os.kill(host, signal.SIGKILL)
            host, waited = next_host(d, "a", host)
            waits.append(waited)
            time.sleep(0.3)
        assert max(waits) < 1.0, waits
        log = d.log()
        assert log.count("host died; restarting at once: it had served 3 requests") == 6, log[-3000:]
        assert "restarting in" not in log
        assert d.status()["tenants"]["a"]["restarts"] == 6


def test_a_host_that_dies_before_serving_again_and_again_backs_off(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("a"), tenant("b")], {"a.py": ANSWER, "b.py": ANSWER}) as d, \
            other_tenant_served(d) as b_statuses:
        host = d.host_pid("a")
        waits = []
        # Killed as soon as it is ready, before any request: five deaths are
        # restarted at once, then each waits twice as long as the one before.
        for _ in range(9):
            os.kill(host, signal.SIGKILL)
            host, waited = next_host(d, "a", host)
            waits.append(waited)
        assert max(waits[:5]) < 1.0, waits
        assert waits[8] > 0.7 and waits[8] > waits[6], waits  # backoffs of 0.1, 0.2, 0.4, 0.8 s
        log = d.log()
        assert log.count("host died; restarting at once: death ") == 5, log[-3000:]
        assert log.count('msg="host died in a crash loop: more than 5 deaths before serving in 10s') == 4

        # In the backoff the tenant says why, and its requests get 503 at once.
        os.kill(host, signal.SIGKILL)
        d.wait_for(lambda: d.status()["tenants"]["a"]["state"] == "backoff", what="the backoff")
        assert "crash loop" in d.status()["tenants"]["a"]["error"]
        started = time.monotonic()
        reply = d.get("a.localhost")
        assert reply.status == 503 and time.monotonic() - started < 0.5, reply
        # A host that serves ends the crash loop: its death is restarted at once.
        host, _ = next_host(d, "a", host)
        answered_up(d)
        os.kill(host, signal.SIGKILL)
        _, waited = next_host(d, "a", host)
        assert waited < 1.0
        assert d.log().count("restarting at once: it had served 1 requests") == 1
    assert b_statuses[200] > 0 and set(b_statuses) == {200}, b_statuses


def test_a_program_that_stops_loading_backs_off_from_the_first_failure(tmp_path: Path) -> None:
    # A directory the tenant's uid can read (pytest's own tmp is 0700).
    marks = Path(tempfile.mkdtemp(prefix="mf-marks-"))
    marks.chmod(0o755)
    broken = marks / "broken"
    program = f"import os\n\ndef on_init():\n    if os.path.exists({str(broken)!r}):\n        os._exit(1)\n\n{ANSWER}"
    try:
        with Daemon(tmp_path, [{**tenant("a"), "files": [str(marks)]}, tenant("b")],
                    {"a.py": program, "b.py": ANSWER}) as d, other_tenant_served(d) as b_statuses:
            host = d.host_pid("a")
            assert d.get("a.localhost").text == "up"
            broken.touch()
            os.kill(host, signal.SIGKILL)
            d.wait_for(lambda: d.log().count("the program failed to load:") >= 3, what="three load failures")
            status = d.status()["tenants"]["a"]
            assert status["state"] == "backoff" and status["hosts"] == [], status
            assert d.get("a.localhost").status == 503
            log = d.log()
            assert "host died; restarting at once: it had served 1 requests" in log
            assert "restarting in 0.1s" in log and "restarting in 0.2s" in log, log[-3000:]
            broken.unlink()
            next_host(d, "a", host)
            answered_up(d)
        assert b_statuses[200] > 0 and set(b_statuses) == {200}, b_statuses
    finally:
        shutil.rmtree(marks, ignore_errors=True)
