"""The escape suite: a hostile program against every wall, through the real daemon.

The daemon runs in a pid and network namespace of its own (IsolatedDaemon).
Each case asserts the exact outcome: the error the program saw, or the
status the client got. The hello tenant is probed throughout and must answer
200 every time (checked last).
"""
from __future__ import annotations

import json
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.daemon_harness import IsolatedDaemon

EPERM = "PermissionError EPERM"


def attack(daemon: IsolatedDaemon, path: str, tenant: str = "attacker", **kwargs: object) -> tuple[int, str]:
    reply = daemon.get(f"{tenant}.localhost", path, **kwargs)  # type: ignore[arg-type]
    return reply.status, reply.text


def outcome(daemon: IsolatedDaemon, path: str, tenant: str = "attacker") -> str:
    status, text = attack(daemon, path, tenant)
    assert status == 200, f"{path}: {status} {text}"
    return text


def test_an_ordinary_program_still_works(isolated: IsolatedDaemon) -> None:
    seen = json.loads(outcome(isolated, "/normal").removeprefix("ok "))
    assert seen == {"year": 2026, "digest": "2d711642" + "9dd4", "decimal": "3.30", "now": True,
                    "urandom": 16, "uuid": 36, "listing": ["attacks.py"]}


# ---- reading secrets -------------------------------------------------------

def test_etc_shadow_is_not_in_view(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/read/shadow") == "FileNotFoundError ENOENT"


def test_another_tenants_program_is_not_in_view(isolated: IsolatedDaemon) -> None:
    secret = isolated.workdir / "programs" / "secret" / "__init__.py"
    assert outcome(isolated, f"/read/path?{secret}") == "FileNotFoundError ENOENT"
    assert isolated.get("secret.localhost").text == "tenant-b-secret"  # it is there, for its tenant


def test_daemon_config_is_not_in_view(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, f"/read/path?{isolated.config_path}") == "FileNotFoundError ENOENT"


def test_only_the_tenants_own_processes_are_visible(isolated: IsolatedDaemon) -> None:
    seen = json.loads(outcome(isolated, "/read/proc-list").removeprefix("ok "))
    assert seen["daemon_visible"] is False
    # A pid namespace of the tenant's own, and a procfs that hides even the
    # tenant's host (not dumpable): the sandbox sees itself alone.
    assert len(seen["pids"]) == 1 and seen["pids"][0] < 1000, seen["pids"]


def test_environment_of_the_host_is_not_readable(isolated: IsolatedDaemon) -> None:
    # The host is pid 1 of the sandbox's pid namespace, and invisible in its procfs.
    assert outcome(isolated, "/read/host-environ") == "FileNotFoundError ENOENT"


def test_daemon_environment_does_not_leak(isolated: IsolatedDaemon) -> None:
    names = json.loads(outcome(isolated, "/read/own-environ").removeprefix("ok "))
    assert "MAYFLYD_TEST_SECRET" not in names
    assert set(names) <= {"PATH", "LANG", "LC_CTYPE"}


def test_own_program_is_readable(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/read/own-program").startswith("ok ")


# ---- writing ---------------------------------------------------------------

@pytest.mark.parametrize("path,expected", [
    ("/write/program-dir", "OSError EROFS"),
    ("/write/root", "OSError EROFS"),
    ("/write/dev-shm", "FileNotFoundError ENOENT"),
])
def test_nothing_is_writable(isolated: IsolatedDaemon, path: str, expected: str) -> None:
    assert outcome(isolated, path) == expected


def test_there_is_no_writable_tmp(isolated: IsolatedDaemon) -> None:
    # /tmp exists in the view only as a read-only parent of a program below it.
    under_tmp = str(isolated.workdir).startswith("/tmp/")
    assert outcome(isolated, "/write/tmp") == ("OSError EROFS" if under_tmp else "FileNotFoundError ENOENT")


def test_nothing_is_left_for_the_next_request(isolated: IsolatedDaemon) -> None:
    for path in ("/write/tmp", "/write/root", "/write/dev-shm"):
        attack(isolated, path)
    assert outcome(isolated, "/check/left-behind") == "ok []"


# ---- network ---------------------------------------------------------------

@pytest.mark.parametrize("path", ["/net/daemon-port", "/net/other-port", "/net/bind", "/net/raw", "/net/netlink"])
def test_no_network_by_default(isolated: IsolatedDaemon, path: str) -> None:
    target = f"{path}?{isolated.port}" if path == "/net/daemon-port" else path
    assert outcome(isolated, target) == EPERM


def test_no_dns(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/net/dns") == "gaierror"


def test_loopback_network_is_the_sandboxes_own(isolated: IsolatedDaemon) -> None:
    # Sockets are allowed, but 127.0.0.1 is the sandbox's own: the daemon is not there.
    assert outcome(isolated, f"/net/daemon-port?{isolated.port}", "looper") == "ConnectionRefusedError ECONNREFUSED"
    assert outcome(isolated, "/net/bind", "looper") == "ok"
    assert outcome(isolated, "/net/raw", "looper") == EPERM
    assert outcome(isolated, "/net/netlink", "looper") == EPERM


# ---- processes -------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/proc/exec-sh", "/proc/subprocess", "/proc/fork", "/proc/fork-bomb", "/proc/kill-all", "/proc/kill-parent",
    "/proc/kill-host", "/proc/ptrace", "/proc/process-vm-readv", "/proc/setuid", "/proc/unshare", "/proc/setns",
    "/proc/mount", "/proc/keyctl", "/proc/bpf", "/proc/userfaultfd", "/proc/io-uring", "/proc/perf-event",
])
def test_process_escapes_are_denied(isolated: IsolatedDaemon, path: str) -> None:
    assert outcome(isolated, path) == EPERM


def test_threads_cannot_be_started(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/proc/thread") == "RuntimeError"


@pytest.mark.parametrize("path", ["/proc/fork", "/proc/ptrace", "/proc/kill-all", "/net/raw"])
def test_kill_action_ends_the_sandbox(isolated: IsolatedDaemon, path: str) -> None:
    status, _ = attack(isolated, path, "killer")
    assert status == 502
    assert outcome(isolated, "/read/own-program", "killer").startswith("ok ")


# ---- resources -------------------------------------------------------------

def test_memory_bomb_is_a_memory_error(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/res/memory-bomb") == "MemoryError"
    assert outcome(isolated, "/res/memory-creep") == "MemoryError"


def test_infinite_loop_hits_the_cpu_budget(isolated: IsolatedDaemon) -> None:
    status, text = attack(isolated, "/res/infinite-loop")
    assert status == 504 and "1500 ms of CPU" in text
    assert "limit hit: request_cpu_ms" in isolated.log()


def test_infinite_loop_with_every_signal_blocked_still_ends(isolated: IsolatedDaemon) -> None:
    """Reset engine: the abort signal cannot land, so the host kills the
    worker after its grace and replaces it; fork engine: the CPU timer's SIGKILL."""
    replaced = isolated.status()["tenants"]["attacker"]["worker_replacements"]
    status, _ = attack(isolated, "/res/infinite-loop-signals-blocked")
    assert status == 504
    if isolated.engine == "reset":
        isolated.wait_for(lambda: isolated.status()["tenants"]["attacker"]["worker_replacements"] == replaced + 1,
                          what="the stuck worker's replacement")
        assert "did not come back from an abort" in isolated.log()
    assert attack(isolated, "/normal")[0] == 200


def test_a_write_cannot_be_hidden_from_the_rewind(isolated: IsolatedDaemon) -> None:
    status, text = attack(isolated, "/reset/hide-write")
    assert status == 200, text
    assert text.startswith("ok "), text
    tried = json.loads(text[3:])
    if isolated.engine == "fork":
        assert tried == {}  # a fork sandbox holds neither fd
    else:
        assert tried == {"UFFDIO_WRITEPROTECT": "PermissionError EPERM", "PAGEMAP_SCAN": "PermissionError EPERM"}
    # Whatever the engine, the next requests find the global as sealed.
    assert {attack(isolated, "/reset/hidden")[1] for _ in range(6)} == {"ok 0"}


def test_untracking_memory_gets_the_worker_replaced(isolated: IsolatedDaemon) -> None:
    replaced = isolated.status()["tenants"]["attacker"]["worker_replacements"]
    status, text = attack(isolated, "/reset/close-tracker")
    assert status == 200
    if isolated.engine == "fork":
        assert "no userfaultfd" in text
        return
    assert "replaced fd" in text
    isolated.wait_for(lambda: isolated.status()["tenants"]["attacker"]["worker_replacements"] == replaced + 1,
                      what="the untracked worker's replacement")
    assert attack(isolated, "/normal")[0] == 200


def test_deep_recursion_in_c_is_a_502_or_a_recursion_error(isolated: IsolatedDaemon) -> None:
    # 3.11 overflows the C stack: the sandbox dies of SIGSEGV (502). 3.12+
    # raise RecursionError first, which the attack reports like any other.
    if sys.version_info < (3, 12):
        assert attack(isolated, "/res/deep-recursion")[0] == 502
    else:
        assert outcome(isolated, "/res/deep-recursion") == "RecursionError"


def test_open_files_are_capped(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/res/open-files") == "OSError EMFILE"


def test_response_of_a_gibibyte(isolated: IsolatedDaemon) -> None:
    # It cannot even be built within request_memory: the program fails, 500.
    assert attack(isolated, "/protocol/huge-response")[0] == 500
    # One that can be built, but is over max_response: never reaches the client.
    assert attack(isolated, "/protocol/over-max-response")[0] == 502
    assert "limit hit: max_response" in isolated.log()


def test_printing_100_mb_does_not_hurt_the_daemon(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/res/print-flood") == "ok done"


def test_slow_body_is_cut_at_the_header_timeout(isolated: IsolatedDaemon) -> None:
    sock = isolated.connect(10)
    with sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: attacker.localhost\r\nContent-Length: 1000\r\n\r\nonly a little")
        sock.settimeout(15)
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408 ")


# ---- protocol --------------------------------------------------------------

def test_header_injection_through_the_content_type(isolated: IsolatedDaemon) -> None:
    reply = isolated.get("attacker.localhost", "/protocol/inject-content-type")
    assert reply.status == 502 and reply.headers.get("Set-Cookie") is None


def test_forged_response_for_another_request(isolated: IsolatedDaemon) -> None:
    results: dict[str, tuple[int, str]] = {}

    def honest() -> None:
        results["honest"] = attack(isolated, "/read/own-program")

    thread = threading.Thread(target=honest)
    thread.start()
    results["forger"] = attack(isolated, "/protocol/forge")
    thread.join()
    assert results["forger"][0] == 502
    assert results["honest"][0] == 200 and results["honest"][1].startswith("ok ")


def test_a_forged_completion_is_not_believed(isolated: IsolatedDaemon) -> None:
    """Fork mode: the only socket is the request's, so it is a bad frame. Reset
    mode: the worker's channel to its host, and a completion without the
    host's nonce gets the worker killed and replaced before it serves again."""
    replaced = isolated.status()["tenants"]["attacker"]["worker_replacements"]
    status, _ = attack(isolated, "/protocol/forge-done")
    if isolated.engine == "fork":
        assert status == 502
        return
    # The answer may already be out when the host kills the worker. If not,
    # the GET is retried once on another worker, which forges again and is
    # replaced too: one replacement or two, never more.
    assert status in (204, 502)
    isolated.wait_for(lambda: isolated.status()["tenants"]["attacker"]["worker_replacements"] >= replaced + 1,
                      what="the forging worker's replacement")
    assert isolated.status()["tenants"]["attacker"]["worker_replacements"] <= replaced + 2
    assert "forged a completion" in isolated.log()
    assert attack(isolated, "/normal")[0] == 200


def test_malformed_frame(isolated: IsolatedDaemon) -> None:
    assert attack(isolated, "/protocol/garbage")[0] == 502


# ---- state left behind -----------------------------------------------------

def test_no_state_survives_a_request(isolated: IsolatedDaemon) -> None:
    baseline = json.loads(outcome(isolated, "/state/check"))
    assert outcome(isolated, "/state/set") == "dirtied"
    with ThreadPoolExecutor(4) as pool:
        after = [json.loads(text) for text in pool.map(lambda _: outcome(isolated, "/state/check"), range(8))]
    for state in after:
        assert state["counter"] == 0 and state["list"] == [] and state["json_patched"] is False
        assert state["env"] is None and state["cwd"] == baseline["cwd"] and state["umask"] == baseline["umask"]
        assert state["sigterm_default"] is True and state["alarm_pending"] == 0
        assert state["kernel_signals"] == baseline["kernel_signals"]
    randoms = [baseline["random"]] + [state["random"] for state in after]
    assert len(set(randoms)) == len(randoms), "the random sequence repeated across requests"


# ---- the health tenant, throughout ----------------------------------------

def test_zz_health_tenant_answered_200_throughout(isolated: IsolatedDaemon) -> None:
    probe = isolated.health  # type: ignore[attr-defined]
    statuses = [status for status, _ in probe.results]
    assert len(statuses) > 20 and set(statuses) == {200}
    assert isolated.proc is not None and isolated.proc.poll() is None, "the daemon died"
