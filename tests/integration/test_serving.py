"""The daemon end to end: real HTTP, real hosts, real sandboxes."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon
from tests.integration.conftest import SEED_PROGRAM, needs_root

SEED_PAGE = b"""\tthis is a very
\tlong string if I had the
\tenergy to type more and more ...
"""


def test_seed_program_is_served_byte_for_byte(daemon: Daemon) -> None:
    assert SEED_PROGRAM.read_text().count("def on_client_request():") == 1
    for host in (None, "hello.localhost", "hello.localhost:8080", "HELLO.localhost."):
        reply = daemon.request("GET", "/", host=host) if host else daemon.request("GET", "/")
        assert reply.status == 200
        assert reply.body == SEED_PAGE
        assert reply.headers["Content-Type"] == "text/plain"
    assert 'tenant=hello stream=stdout msg="Hello from Python"' in daemon.log()


def test_unknown_host_goes_to_the_default_tenant(daemon: Daemon) -> None:
    reply = daemon.get("nobody.example")
    assert reply.status == 200 and reply.body == SEED_PAGE


def test_echo_round_trips_method_path_query_headers_and_binary_body(daemon: Daemon) -> None:
    body = bytes(range(256)) * 300  # binary, and more than one 64 KiB frame
    reply = daemon.request("PUT", "/a/b%20c?x=1&y=two&x=3", host="echo.localhost", body=body,
                           headers={"X-Custom": "value 1", "Content-Type": "application/octet-stream"})
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    echoed = json.loads(reply.body)
    assert echoed["method"] == "PUT"
    assert echoed["path"] == "/a/b c"
    assert echoed["query"] == "x=1&y=two&x=3"
    assert echoed["args"] == {"x": ["1", "3"], "y": ["two"]}
    assert ["X-Custom", "value 1"] in echoed["headers"]
    assert ["Host", "echo.localhost"] in echoed["headers"]
    import base64
    assert base64.b64decode(echoed["body"]["base64"]) == body
    assert echoed["client"] == "127.0.0.1"


def test_a_body_larger_than_the_channel_buffer_arrives_whole(daemon: Daemon) -> None:
    """1 MiB is 16 frames, more than a socket buffer holds: the rest is sent
    while the sandbox reads."""
    import base64
    body = os.urandom(1 << 20)
    reply = daemon.request("POST", "/", host="echo.localhost", body=body)
    assert reply.status == 200
    assert base64.b64decode(json.loads(reply.body)["body"]["base64"]) == body


def test_the_program_sees_the_url_as_sent(daemon: Daemon) -> None:
    echoed = json.loads(daemon.get("echo.localhost", "/%E2%82%AC/a%2Fb%3Fx=1?q=%E2%82%AC&r=%2F").body)
    assert echoed["path"] == "/€/a/b?x=1"
    assert echoed["raw_path"] == "/%E2%82%AC/a%2Fb%3Fx=1"
    assert echoed["query"] == "q=%E2%82%AC&r=%2F"
    assert echoed["args"] == {"q": ["€"], "r": ["/"]}


def test_wildcard_host_routes(daemon: Daemon) -> None:
    reply = daemon.request("POST", "/w", host="deep.sub.echo.test", body=b"hi")
    assert reply.status == 200
    assert json.loads(reply.body)["body"] == {"text": "hi"}


def _state(daemon: Daemon, i: int, slow: bool = False) -> dict[str, object]:
    reply = daemon.get("state.localhost", f"/r{i}" + ("?slow" if slow else ""))
    assert reply.status == 200, reply.text
    return json.loads(reply.body)  # type: ignore[no-any-return]


def test_every_request_sees_the_pristine_state(daemon: Daemon) -> None:
    seen = [_state(daemon, i) for i in range(50)]
    with ThreadPoolExecutor(8) as pool:
        seen += list(pool.map(lambda i: _state(daemon, i, slow=True), range(50, 74)))
    for i, state in enumerate(seen):
        assert state["counter"] == 1
        assert state["items"] == [f"/r{i}"]
        assert state["env"] is None
        assert state["patched"] is False
        assert state["len_ok"] is True
        assert state["first_bytes"] == "\nimport ", "a file opened in on_init kept another request's offset"
    randoms = [state["random"] for state in seen]
    assert len(set(randoms)) == len(randoms), "two sandboxes saw the same random sequence"


def test_program_exception_is_a_500_without_traceback(daemon: Daemon) -> None:
    reply = daemon.get("crashy.localhost", "/raise")
    assert reply.status == 500
    assert b"secret-detail" not in reply.body and b"Traceback" not in reply.body
    assert reply.body.startswith(b"500 Internal Server Error")
    daemon.wait_for(lambda: "secret-detail-in-traceback" in daemon.log(), what="traceback in the log")
    req = reply.headers["X-Request-Id"]
    assert f"level=error logger=mayflyd.tenant.exception tenant=crashy req={req} stream=stderr" in daemon.log()


def test_wrong_return_type_is_a_500(daemon: Daemon) -> None:
    assert daemon.get("crashy.localhost", "/wrongtype").status == 500


@pytest.mark.parametrize("path", ["/exit", "/sysexit", "/segv", "/abort"])
def test_sandbox_ending_without_answer_is_a_502(daemon: Daemon, path: str) -> None:
    reply = daemon.get("crashy.localhost", path)
    assert reply.status == 502, reply.text
    assert daemon.get("crashy.localhost", "/").body == b"fine"


def test_segfault_is_logged_with_its_signal(daemon: Daemon) -> None:
    daemon.get("crashy.localhost", "/segv")
    daemon.wait_for(lambda: "SIGSEGV" in daemon.log(), what="the signal in the log")


@pytest.mark.parametrize("path", ["/sleep?s=30", "/spin"])
def test_over_the_deadline_is_a_504_and_the_tenant_keeps_serving(daemon: Daemon, path: str) -> None:
    started = time.monotonic()
    reply = daemon.get("slow.localhost", path)
    elapsed = time.monotonic() - started
    assert reply.status == 504
    assert elapsed < 5, f"504 took {elapsed:.1f}s for a 500 ms deadline"
    assert daemon.get("slow.localhost", "/").body == b"done"


def test_body_over_max_body_is_a_413(daemon: Daemon) -> None:
    assert daemon.request("POST", "/", host="small.localhost", body=b"x" * 1024).status == 200
    assert daemon.request("POST", "/", host="small.localhost", body=b"x" * 1025).status == 413
    # Without a Content-Length: chunked transfer, counted while read.
    chunks = iter([b"y" * 600, b"y" * 600])
    reply = daemon.request("POST", "/", host="small.localhost", body=chunks)  # type: ignore[arg-type]
    assert reply.status == 413


def test_a_head_too_large_for_the_protocol_is_a_431_and_starts_no_sandbox(daemon: Daemon) -> None:
    headers = {f"X-H{i}": "v" * 8000 for i in range(9)}  # 72 KB: a request head is one 64 KiB frame
    reply = daemon.request("GET", "/", host="echo.localhost", headers=headers)
    assert reply.status == 431
    assert daemon.get("echo.localhost").status == 200


def test_concurrency_and_queue_limits_are_a_503_with_retry_after(daemon: Daemon) -> None:
    """small: concurrency 1, queue 1. The second request waits its turn, the third is refused."""
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(daemon.get, "small.localhost", "/sleep?s=1.5")
        time.sleep(0.5)
        queued = pool.submit(daemon.get, "small.localhost", "/")
        time.sleep(0.3)
        reply = daemon.get("small.localhost", "/")
        assert reply.status == 503
        assert reply.headers["Retry-After"] == "1"
        assert slow.result().status == 200
        assert queued.result().status == 200
    assert daemon.get("small.localhost", "/").status == 200


@pytest.mark.parametrize("path", ["/status", "/informational", "/inject", "/ctype", "/nul", "/name", "/big"])
def test_invalid_responses_never_reach_the_client(daemon: Daemon, path: str) -> None:
    reply = daemon.get("badresp.localhost", path)
    assert reply.status == 502, reply.text
    assert "pwned" not in str(reply.headers) and "X-Evil" not in str(reply.headers)


def test_valid_responses_pass_through(daemon: Daemon) -> None:
    assert len(daemon.get("badresp.localhost", "/justright").body) == 1024 * 1024
    triple = daemon.get("badresp.localhost", "/triple")
    assert triple.status == 201 and triple.body == b"created"
    assert triple.headers.get_all("X-One") == ["1", "2"]
    hop = daemon.get("badresp.localhost", "/hopbyhop")
    assert hop.status == 200 and hop.body == b"body" and hop.headers["X-Kept"] == "1"
    assert hop.headers["Content-Length"] == "4"


def test_program_that_fails_to_load_gets_503_and_the_error_is_logged(daemon: Daemon) -> None:
    reply = daemon.get("initfail.localhost")
    assert reply.status == 503 and reply.headers["Retry-After"] == "1"
    assert "cannot load the model" in daemon.log()
    assert daemon.get("hello.localhost").status == 200


@needs_root
def test_sandbox_runs_unprivileged_in_a_minimal_root(daemon: Daemon) -> None:
    me = json.loads(daemon.get("whoami.localhost", f"/?{daemon.config_path}").body)
    assert (me["uid"], me["euid"], me["gid"], me["groups"]) == (201234, 201234, 201234, [201234])
    status = me["status"]
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapBnd"], 16) == 0
    assert status["NSpid"].split()[-1] == str(me["pid"]) and me["ppid"] == 1  # pid 1 is the host
    assert me["setuid_root"] is False
    # Only what the sandbox needs is in its view: the Python runtime (which
    # may live under /root), its own program, nothing else.
    under_root = {p.split("/")[2] for p in (sys.prefix, sys.base_prefix) if p.startswith("/root/")}
    assert set(me["root_home"] or []) <= under_root
    assert me["see_own_program"] is True
    assert me["see_config"] is False
    assert me["see_sibling_program"] is False
    assert me["see_shadow"] is False
    assert me["write_program_dir"] is False
    assert me["see_etc_passwd"] is False


@needs_root
def test_tenant_processes_are_in_its_cgroups(daemon: Daemon) -> None:
    group = Path("/sys/fs/cgroup/memory") / daemon.cgroup_prefix / "hog"
    assert int((group / "memory.limit_in_bytes").read_text()) == 64 * 1024 * 1024
    procs = [int(p) for p in (group / "cgroup.procs").read_text().split()]
    assert daemon.host_pid("hog") in procs, "the host is not in its cgroup"
    # pids follows concurrency (32 + 16, at least 64); cpu is one core by default.
    pids = Path("/sys/fs/cgroup/pids") / daemon.cgroup_prefix / "hog"
    assert (pids / "pids.max").read_text().strip() == "64"
    assert daemon.host_pid("hog") in [int(p) for p in (pids / "cgroup.procs").read_text().split()]
    cpu = Path("/sys/fs/cgroup/cpu") / daemon.cgroup_prefix / "hog"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"


@needs_root
def test_memory_bomb_kills_the_request_not_the_host(daemon: Daemon) -> None:
    procs = Path("/sys/fs/cgroup/memory") / daemon.cgroup_prefix / "hog" / "cgroup.procs"
    host_before = procs.read_text().split()
    # An idle tenant: its host, the stub that waits for a fresh host outside
    # its pid namespace, and the reset engine's first worker and its template.
    assert len(host_before) == daemon.idle_processes(), host_before
    # One request over its own request_memory: the program sees MemoryError.
    assert daemon.get("hog.localhost", "/hog?100").status == 500
    # Four requests within request_memory but together over the tenant's
    # 64 MiB: the OOM killer takes requests, never the host.
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: daemon.get("hog.localhost", "/hog?28"), range(4)))
    statuses = sorted(reply.status for reply in replies)
    assert 502 in statuses and set(statuses) <= {200, 502}, statuses
    assert any(b"ran out of memory" in reply.body for reply in replies)
    assert "limit hit: memory" in daemon.log()
    assert daemon.get("hog.localhost", "/").body == b"small"
    # The sandbox of the last request may still be exiting; the host stays
    # (reset workers the OOM killer took are replaced; the pool may have grown).
    hosts = daemon.idle_processes() - daemon.worker_processes()  # the host (and its stub)
    daemon.wait_for(lambda: procs.read_text().split()[:hosts] == host_before[:hosts]
                    and (daemon.engine == "reset" or procs.read_text().split() == host_before), timeout=5,
                    what="only the original host (and its workers) in the cgroup")


@needs_root
def test_processes_left_by_on_init_do_not_survive_sealing(daemon: Daemon) -> None:
    assert daemon.get("leftovers.localhost").text == "ok"
    procs = Path("/sys/fs/cgroup/memory") / daemon.cgroup_prefix / "leftovers" / "cgroup.procs"
    daemon.wait_for(lambda: len(procs.read_text().split()) == daemon.idle_processes(), timeout=5,
                    what="only the host and its stub (and workers) in the cgroup")


def test_a_host_with_threads_left_by_on_init_is_refused(daemon: Daemon) -> None:
    reply = daemon.get("threadleft.localhost")
    assert reply.status == 503
    daemon.wait_for(lambda: "left 1 thread(s) running" in daemon.log(), what="the refusal in the log")


def test_a_dead_host_is_replaced_and_requests_meanwhile_get_503(daemon: Daemon) -> None:
    first = json.loads(daemon.get("victim.localhost").body)["host"]
    os.kill(daemon.host_pid("victim"), signal.SIGKILL)
    statuses = set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        reply = daemon.get("victim.localhost")
        statuses.add(reply.status)
        if reply.status == 200 and json.loads(reply.body)["host"] != first:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the host was not replaced; statuses {statuses}\n{daemon.log()[-3000:]}")
    assert statuses <= {200, 502, 503}
    assert "host died; restarting" in daemon.log()


def test_other_tenants_do_not_notice_a_misbehaving_one(daemon: Daemon) -> None:
    stop = threading.Event()
    health: list[int] = []

    def probe() -> None:
        while not stop.is_set():
            health.append(daemon.get("hello.localhost").status)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            attacks = [("crashy.localhost", "/segv"), ("crashy.localhost", "/exit"), ("slow.localhost", "/spin"),
                       ("crashy.localhost", "/raise"), ("badresp.localhost", "/inject"),
                       ("slow.localhost", "/sleep?s=5")] * 2
            statuses = list(pool.map(lambda a: daemon.get(*a).status, attacks))
    finally:
        stop.set()
        thread.join()
    assert statuses == [502, 502, 504, 500, 502, 504] * 2
    assert health and set(health) == {200}


def test_daemon_survives_everything(daemon: Daemon) -> None:
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_no_default_tenant_means_404(tmp_path: Path) -> None:
    (tmp_path / "programs").mkdir()
    tenants = [{"name": "only", "hosts": ["only.localhost"], "program": "programs/p.py"}]
    with Daemon(tmp_path, tenants, {"p.py": "def on_client_request(request):\n    return 'only'\n"}) as d:
        assert d.get("only.localhost").body == b"only"
        reply = d.get("other.localhost")
        assert reply.status == 404
        assert d.request("GET", "/").status == 404
