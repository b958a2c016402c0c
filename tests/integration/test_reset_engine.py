"""The reset engine through the daemon: rewinds, aborts, replacement, verification."""
from __future__ import annotations

import http.client
import json
import random
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.daemon_harness import Daemon, reset_engine_missing
from tests.integration.conftest import SEED_PROGRAM, limits, needs_root

pytestmark = pytest.mark.skipif(bool(reset_engine_missing()), reason="the kernel cannot run the reset engine")

# Mutates everything a request can reach from Python, then reports what it
# found at its start: every request must find the sealed state.
MUTATOR = '''
import gc
import json
import mmap
import os
import random
import signal
import socket
import struct
import sys
import time

counter = 0
table = {"seed": 1}
blobs = []
KEEP = open(__file__, "rb")
START_CWD = os.getcwd()
# Pages no request has written yet, present at the snapshot and not: the
# first write to each makes the rewind fetch it from the template.
FRESH = bytearray(b"s" * (2 << 20))
ZEROS = mmap.mmap(-1, 2 << 20, flags=mmap.MAP_PRIVATE)


def template_pid():
    # The worker's one child: the template that holds its snapshot.
    with open(f"/proc/self/task/{os.getpid()}/children") as children:
        kids = children.read().split()
    return int(kids[0]) if len(kids) == 1 else -1


def template_sockets():
    # The worker made one socketpair itself: the template's (SO_PEERCRED
    # of a socketpair names its creator).
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        with sock:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if sock.type == socket.SOCK_SEQPACKET and struct.unpack("3i", cred)[0] == os.getpid():
                found.append(int(name))
    return found


def fresh_written():
    return FRESH.count(b"x") + len(ZEROS) - ZEROS[:].count(b"\\0")


def stack_kib():
    with open("/proc/self/maps") as maps:
        for line in maps:
            if line.rstrip().endswith("[stack]"):
                start, end = (int(x, 16) for x in line.split()[0].split("-"))
                return (end - start) // 1024
    return 0


def kernel_signals():
    # The kernel's dispositions (not Python's handler table, which the memory
    # rewind restores anyway): caught and ignored signals as bit masks.
    with open("/proc/self/status") as status:
        return " ".join(line.split()[1] for line in status if line.startswith(("SigIgn", "SigCgt")))


def deep(n):
    # Each level goes through C: list.sort keeps about 4.5 KiB of merge state
    # on the C stack while it calls its key. Three C calls a level, so 400
    # levels stay within 3.12's C recursion limit (1500) and 3.13's (10000).
    if n:
        [n - 1].sort(key=deep)
    return n


def on_client_request(request):
    global counter
    seen = {
        "stack_kib": stack_kib(),
        "pid": os.getpid(),
        "counter": counter,
        "table": len(table),
        "blobs": len(blobs),
        "offset": KEEP.tell(),
        "cwd": os.getcwd(),
        "umask": os.umask(0o077),
        "handler": signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL,
        "fds": len(os.listdir("/proc/self/fd")),
        "modules": "colorsys" in sys.modules,
        "random": random.random(),
        "stdout_blocking": os.get_blocking(1),
        "sig_kernel": kernel_signals(),
        "fresh": fresh_written(),
    }
    counter += 1
    for i in range(200):
        table[f"k{counter}-{i}"] = [i] * 10
    blobs.append(bytearray(64 * 1024))
    KEEP.read(5)
    os.chdir("/usr")
    q = request.query
    if "nosig" not in q:                      # the sigaction gate's quick path: nothing to put back
        signal.signal(signal.SIGUSR1, lambda *_: None)
    os.set_blocking(1, False)                 # the worker's own file description's flags
    open(__file__, "rb")                      # an fd left open
    import colorsys                           # a module imported in the request
    if "alarm" in q:
        got = []
        signal.signal(signal.SIGALRM, lambda *_: got.append(1))
        signal.setitimer(signal.ITIMER_REAL, 0.001)
        time.sleep(0.05)
        seen["alarm_handled"] = got == [1]
        seen["sig_kernel_after"] = kernel_signals()
    if "protected" in q:
        for name, sig in (("sigsys", signal.SIGSYS), ("abort", signal.SIGRTMAX - 1)):
            try:
                signal.signal(sig, signal.SIG_IGN)
                seen[name] = "changed"
            except OSError as exc:
                seen[name] = exc.errno
    if "blocksys" in q:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGSYS})
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    if "big" in q:
        blobs.append(bytearray(int(q.split("big=")[1].split("&")[0]) << 20))
    if "map" in q:
        m = mmap.mmap(-1, 1 << 20)
        m[:5] = b"dirty"
        blobs.append(m)
    if "gc" in q:
        gc.collect()
    if "deep" in q:
        sys.setrecursionlimit(2000)
        deep(400)
        seen["deep_stack_kib"] = stack_kib()
    if "raise" in q:
        raise ValueError("a failing request")
    if "loop" in q:
        while True:
            pass
    if "sleep" in q:
        time.sleep(10)
    if "exit" in q:
        os._exit(3)
    if "closefd" in q:
        os.close(KEEP.fileno())
    if "fresh=" in q:
        page = int(q.split("fresh=")[1].split("&")[0])
        FRESH[page * 4096] = ZEROS[page * 4096] = ord("x")
        seen["fresh_now"] = fresh_written()
    if "template" in q:
        pid = template_pid()
        seen["template_sockets"] = len(template_sockets())
        for path in (f"/proc/{pid}/mem", f"/proc/{pid}/fd/0"):
            try:
                open(path, "rb").close()
                seen.setdefault("template_reached", []).append(path)
            except OSError:
                pass
        if "kill" in q:
            try:
                os.kill(pid, signal.SIGKILL)
                seen["template_kill"] = "killed"
            except OSError as exc:
                seen["template_kill"] = exc.errno
    if "tsock=" in q:
        fd, = template_sockets()
        what = q.split("tsock=")[1].split("&")[0]
        if what == "write":
            os.write(fd, b"not the worker" * 8)
        elif what == "read":
            os.set_blocking(fd, False)
            try:
                seen["tsock_read"] = len(os.read(fd, 4096))
            except BlockingIOError:
                seen["tsock_read"] = None
        elif what == "swap":
            # A socket of its own at the template's fd, an answer queued on it.
            mine, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            other.send(struct.pack("QQII", 0, 1, 0, 1))
            os.dup2(mine.fileno(), fd)
            blobs.append((mine, other))
    return json.dumps(seen)  # json: imported before the seal, by the daemon's own code
'''

FAT = '''
HEAP = [bytearray(1 << 20) for _ in range(40)]


def on_client_request(request):
    return "fat"
'''

PRISTINE = {"counter": 0, "table": 1, "blobs": 0, "offset": 0, "umask": 0o022, "handler": True,
            "modules": False, "fresh": 0}


@pytest.fixture(scope="module")
def reset_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("reset")
    (workdir / "programs").mkdir()
    shutil.copy(SEED_PROGRAM, workdir / "programs" / "hello.py")
    quick = limits(memory="512MiB", request_memory="256MiB", request_timeout_ms=1500, request_cpu_ms=300)
    tenants = [
        {"name": "mutator", "hosts": ["mutator.localhost"], "program": "programs/mutator.py",
         "engine": "reset", "pool": 2, "verify_rewind": True, "limits": quick},
        {"name": "solo", "hosts": ["solo.localhost"], "program": "programs/mutator.py",
         "engine": "reset", "pool": 1, "limits": quick},
        {"name": "napper", "hosts": ["napper.localhost"], "program": "programs/mutator.py",
         "engine": "reset", "pool": 2, "pool_idle_ms": 300, "limits": quick},
        {"name": "hello", "hosts": ["hello.localhost"], "program": "programs/hello.py", "engine": "auto"},
        # Under verification each worker keeps a full copy of its snapshot:
        # two copies of a 40 MiB heap do not fit next to it in 64 MiB.
        {"name": "fat", "hosts": ["fat.localhost"], "program": "programs/fat.py", "engine": "reset", "pool": 2,
         "verify_rewind": True, "limits": limits(memory="64MiB")},
    ]
    d = Daemon(workdir, tenants, {"mutator.py": MUTATOR, "fat.py": FAT})
    d.engine = "reset"
    d.start()
    try:
        yield d
    finally:
        running = d.tenant_processes()
        code = d.stop()
        assert code == 0, d.log()[-5000:]
        assert d.cgroup_dirs() == [], "cgroups left behind"
        # Hosts, workers and the workers' templates: none outlives the daemon.
        assert [pid for pid in running if psutil.pid_exists(pid)] == []


def tenant(d: Daemon, name: str) -> dict[str, object]:
    status: dict[str, object] = d.status()["tenants"][name]
    return status


def seen(d: Daemon, host: str, query: str = "") -> dict[str, object]:
    reply = d.get(host, "/?" + query if query else "/")
    assert reply.status == 200, (reply.status, reply.body[:300])
    found: dict[str, object] = json.loads(reply.body)
    return found


def pristine(found: dict[str, object]) -> bool:
    return all(found[key] == value for key, value in PRISTINE.items()) and found["cwd"] == "/"


def test_auto_means_reset_on_this_kernel(reset_daemon: Daemon) -> None:
    status = tenant(reset_daemon, "hello")
    assert status["engine"] == "reset" and status["engine_configured"] == "auto"
    assert "engine auto means reset here" in reset_daemon.log()
    assert reset_daemon.get("hello.localhost").status == 200


def test_every_request_finds_the_sealed_state(reset_daemon: Daemon) -> None:
    results = [seen(reset_daemon, "solo.localhost", q) for q in ("", "big=20", "map", "gc", "", "")]
    assert all(pristine(r) for r in results), results
    assert len({r["pid"] for r in results}) == 1, "one worker served them all, rewound in place"
    # The generator is reseeded after each rewind, not rewound with the heap.
    assert len({r["random"] for r in results}) == len(results)
    # The last rewind's report may trail its answer by a moment.
    reset_daemon.wait_for(lambda: int(str(tenant(reset_daemon, "solo")["rewinds"])) >= len(results),
                          what="every rewind reported")
    status = tenant(reset_daemon, "solo")
    assert status["worker_replacements"] == 0 and int(str(status["pages_rewound"])) > 0


def _caught(kernel_signals: str) -> int:
    return int(kernel_signals.split()[1], 16)


def test_signal_dispositions_are_rewound_in_the_kernel(reset_daemon: Daemon) -> None:
    """Requests set SIGUSR1's handler (and one SIGALRM's) through the
    sigaction gate: the handler works in that request, and the kernel's
    disposition is the sealed one again in the next, changed or not."""
    usr1_alrm = 1 << (signal.SIGUSR1 - 1) | 1 << (signal.SIGALRM - 1)
    first = seen(reset_daemon, "solo.localhost", "nosig")
    alarmed = seen(reset_daemon, "solo.localhost", "alarm")
    assert alarmed["alarm_handled"] is True
    assert _caught(str(alarmed["sig_kernel_after"])) & usr1_alrm == usr1_alrm
    after = [seen(reset_daemon, "solo.localhost", q) for q in ("nosig", "", "nosig")]
    assert {r["sig_kernel"] for r in [first, alarmed, *after]} == {first["sig_kernel"]}
    assert _caught(str(first["sig_kernel"])) & usr1_alrm == 0
    assert len({r["pid"] for r in [first, alarmed, *after]}) == 1


def test_a_request_cannot_take_sigsys_or_the_abort_signal(reset_daemon: Daemon) -> None:
    found = seen(reset_daemon, "solo.localhost", "protected")
    assert (found["sigsys"], found["abort"]) == (1, 1)  # EPERM
    assert pristine(seen(reset_daemon, "solo.localhost"))


def test_stack_grown_by_a_request_is_given_back(reset_daemon: Daemon) -> None:
    before = seen(reset_daemon, "solo.localhost")
    grown = seen(reset_daemon, "solo.localhost", "deep")
    assert grown["deep_stack_kib"] > before["stack_kib"] + 1024, (before, grown)
    after = seen(reset_daemon, "solo.localhost")
    assert after["stack_kib"] == before["stack_kib"] and pristine(after)
    assert after["pid"] == before["pid"] and tenant(reset_daemon, "solo")["worker_replacements"] == 0


def test_file_status_flags_are_rewound(reset_daemon: Daemon) -> None:
    """O_NONBLOCK belongs to the open file description: the rewind puts the
    snapshot's back. (stdout is the host's pipe, shared by the pool's
    workers as by fork sandboxes: with pool > 1 a concurrent request may see
    the flag until then.)"""
    results = [seen(reset_daemon, "solo.localhost") for _ in range(3)]
    assert [r["stdout_blocking"] for r in results] == [True, True, True]


def test_a_cpu_overrun_is_aborted_and_rewound_in_place(reset_daemon: Daemon) -> None:
    before = seen(reset_daemon, "solo.localhost")
    reply = reset_daemon.get("solo.localhost", "/?loop")
    assert reply.status == 504, reply.body
    after = seen(reset_daemon, "solo.localhost")
    assert after["pid"] == before["pid"] and pristine(after)
    assert tenant(reset_daemon, "solo")["worker_replacements"] == 0
    assert "limit hit: request_cpu_ms" in reset_daemon.log()


def test_a_deadline_overrun_is_aborted_and_rewound_in_place(reset_daemon: Daemon) -> None:
    before = seen(reset_daemon, "solo.localhost")
    assert reset_daemon.get("solo.localhost", "/?sleep").status == 504
    reset_daemon.wait_for(lambda: tenant(reset_daemon, "solo")["in_flight"] == 0, what="the abort")
    after = seen(reset_daemon, "solo.localhost")
    assert after["pid"] == before["pid"] and pristine(after)
    assert tenant(reset_daemon, "solo")["worker_replacements"] == 0


@pytest.mark.parametrize("query, status", [("exit", 502), ("closefd", 200)])
def test_what_cannot_be_rewound_replaces_the_worker(reset_daemon: Daemon, query: str, status: int) -> None:
    before = seen(reset_daemon, "solo.localhost")
    replaced = int(str(tenant(reset_daemon, "solo")["worker_replacements"]))
    assert reset_daemon.get("solo.localhost", "/?" + query).status == status
    reset_daemon.wait_for(lambda: tenant(reset_daemon, "solo")["worker_replacements"] == replaced + 1,
                          what="the worker's replacement")
    after = seen(reset_daemon, "solo.localhost")
    assert after["pid"] != before["pid"] and pristine(after)
    assert "reset engine: a worker was replaced" in reset_daemon.log()


def test_blocking_sigsys_then_setting_a_handler_ends_only_that_worker(reset_daemon: Daemon) -> None:
    before = seen(reset_daemon, "solo.localhost")
    replaced = int(str(tenant(reset_daemon, "solo")["worker_replacements"]))
    assert reset_daemon.get("solo.localhost", "/?blocksys").status == 502
    reset_daemon.wait_for(lambda: tenant(reset_daemon, "solo")["worker_replacements"] == replaced + 1,
                          what="the worker's replacement")
    after = seen(reset_daemon, "solo.localhost")
    assert after["pid"] != before["pid"] and pristine(after)
    assert after["sig_kernel"] == before["sig_kernel"]


def _replaced(d: Daemon, name: str) -> int:
    return int(str(tenant(d, name)["worker_replacements"]))


@pytest.mark.parametrize("name", ["solo", "mutator"])
def test_pages_written_for_the_first_time_are_fetched_from_the_template(reset_daemon: Daemon, name: str) -> None:
    """Each request writes pages no request wrote before (present at the
    snapshot, and never present): the rewind asks the template for them.
    mutator verifies every page, and the template's copy of each, after
    each rewind."""
    host = f"{name}.localhost"
    replaced = _replaced(reset_daemon, name)
    # Far apart: a page no other test writes.
    pages = [100 + 7 * k for k in range(6)]
    results = [seen(reset_daemon, host, f"fresh={page}") for page in pages]
    assert [r["fresh_now"] for r in results] == [2] * len(pages)
    after = seen(reset_daemon, host)
    assert all(pristine(r) for r in [*results, after]), results
    assert _replaced(reset_daemon, name) == replaced and "verification:" not in reset_daemon.log()


def test_the_template_is_out_of_a_requests_reach(reset_daemon: Daemon) -> None:
    found = seen(reset_daemon, "solo.localhost", "template")
    assert found["template_sockets"] == 1 and "template_reached" not in found, found


def _templates(d: Daemon, name: str) -> list[psutil.Process]:
    """The tenant's deepest processes: host (its stub, if any) > worker > template."""
    procs = Path("/sys/fs/cgroup/memory") / d.cgroup_prefix / name / "cgroup.procs"
    inside = [psutil.Process(int(pid)) for pid in procs.read_text().split()]
    pids = {p.pid for p in inside}

    def depth(p: psutil.Process) -> int:
        parent = p.parent()
        return 0 if parent is None or parent.pid not in pids else 1 + depth(parent)

    deepest = max(depth(p) for p in inside)
    return [p for p in inside if depth(p) == deepest]


@needs_root
def test_a_killed_template_gets_its_worker_replaced(reset_daemon: Daemon) -> None:
    """A request cannot signal its template (the request filter allows no
    kill). Killed from outside, its worker serves on from what its store
    holds until it needs a page the store lacks (here: at once), which ends
    it; a fresh worker serves."""
    before = seen(reset_daemon, "solo.localhost", "template&kill")
    assert before["template_kill"] == 1  # EPERM
    replaced = _replaced(reset_daemon, "solo")
    template, = _templates(reset_daemon, "solo")
    assert template.num_fds() == 1, template.open_files()  # its socket, nothing the worker holds
    template.kill()
    seen(reset_daemon, "solo.localhost", "fresh=300")
    reset_daemon.wait_for(lambda: _replaced(reset_daemon, "solo") == replaced + 1, what="the worker's replacement")
    after = seen(reset_daemon, "solo.localhost")
    assert after["pid"] != before["pid"] and pristine(after)
    assert "the template (pid" in reset_daemon.log()
    assert not template.is_running() or template.status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("what, replaced_after", [("read", 0), ("write", 1), ("swap", 1)])
def test_a_request_on_the_template_socket_cannot_change_the_snapshot(
        reset_daemon: Daemon, what: str, replaced_after: int) -> None:
    """Garbage written to the template's socket ends the template (the next
    fetch then replaces the worker); a socket of the request's own put at
    its fd, with a forged answer queued, is found before it is read."""
    before = seen(reset_daemon, "solo.localhost")
    replaced = _replaced(reset_daemon, "solo")
    found = seen(reset_daemon, "solo.localhost", f"tsock={what}")
    if what == "read":
        assert found["tsock_read"] is None
    first = {"read": 400, "write": 410, "swap": 420}[what]  # pages no request wrote yet
    for page in range(first, first + 3):
        reply = reset_daemon.get("solo.localhost", f"/?fresh={page}")
        assert reply.status == 200, reply.body[:300]
    reset_daemon.wait_for(lambda: _replaced(reset_daemon, "solo") == replaced + replaced_after,
                          what="the worker replaced, or not")
    after = seen(reset_daemon, "solo.localhost")
    assert pristine(after) and (after["pid"] == before["pid"]) == (replaced_after == 0)


@needs_root
def test_ten_thousand_mutating_requests_rewind_without_a_difference(reset_daemon: Daemon) -> None:
    """Verification mode compares every tracked page with the snapshot after each rewind:
    globals and dicts that grow, 8 MiB allocations, new mappings, a collection,
    a stack grown by 1.4 MiB, exceptions and CPU-budget aborts at random points."""
    rng = random.Random(4)
    queries = rng.choices(["", "nosig", "", "big=8", "map", "gc", "deep", "raise", "loop"],
                          weights=[40, 30, 10, 5, 5, 3, 2, 4, 1], k=10_000)

    def run(chunk: list[str]) -> Counter[int]:
        statuses: Counter[int] = Counter()
        conn = http.client.HTTPConnection("127.0.0.1", reset_daemon.port, timeout=30)
        for q in chunk:
            conn.request("GET", "/?" + q, headers={"Host": "mutator.localhost"})
            reply = conn.getresponse()
            body = reply.read()
            statuses[reply.status] += 1
            if reply.status == 200:
                assert pristine(json.loads(body)), body
            if reply.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", reset_daemon.port, timeout=30)
        conn.close()
        return statuses

    with ThreadPoolExecutor(4) as pool:
        totals = sum(pool.map(run, [queries[i::4] for i in range(4)]), Counter())
    expected = Counter({200: 0, 500: queries.count("raise"), 504: queries.count("loop")})
    expected[200] = len(queries) - expected[500] - expected[504]
    assert totals == expected
    # The last rewinds' reports may trail their answers by a moment.
    reset_daemon.wait_for(lambda: int(str(tenant(reset_daemon, "mutator")["rewinds"])) >= len(queries),
                          timeout=30, what=f"all {len(queries)} rewinds reported")
    assert tenant(reset_daemon, "mutator")["worker_replacements"] == 0, reset_daemon.log()[-3000:]
    assert "verification:" not in reset_daemon.log()


@needs_root
def test_an_idle_worker_retires_and_the_next_request_forks_one(reset_daemon: Daemon) -> None:
    procs = Path("/sys/fs/cgroup/memory") / reset_daemon.cgroup_prefix / "napper" / "cgroup.procs"
    first = seen(reset_daemon, "napper.localhost", "big=20")
    assert pristine(first)
    # Idle for pool_idle_ms: the worker (and its snapshot) goes; the host stays.
    gone = reset_daemon.idle_processes() - reset_daemon.worker_processes()
    reset_daemon.wait_for(lambda: len(procs.read_text().split()) == gone, timeout=5,
                          what="the idle worker and its template gone, the host alone in the cgroup")
    again = seen(reset_daemon, "napper.localhost")
    assert pristine(again) and again["pid"] != first["pid"], "a fresh worker, from the sealed host"
    assert len(procs.read_text().split()) == reset_daemon.idle_processes()
    # A retirement is not a failure: nothing replaced, nothing logged as such.
    assert tenant(reset_daemon, "napper")["worker_replacements"] == 0
    assert not [line for line in reset_daemon.log().splitlines() if "tenant=napper" in line and "replaced" in line]


@needs_root
def test_a_pool_that_does_not_fit_in_memory_says_so(reset_daemon: Daemon) -> None:
    errors = set()

    def hinted() -> bool:
        errors.add(str(tenant(reset_daemon, "fat")["error"]))
        return "out of memory?" in str(tenant(reset_daemon, "fat")["error"])

    try:
        reset_daemon.wait_for(hinted, timeout=20, what="the tenant's error")
    except AssertionError:
        raise AssertionError(f"errors seen: {errors}") from None
    assert "use engine: fork" in str(tenant(reset_daemon, "fat")["error"])
    assert reset_daemon.get("fat.localhost").status == 503
    assert reset_daemon.get("hello.localhost").status == 200


def test_config_names_the_bad_engine_and_pool(tmp_path: Path) -> None:
    from mayflyd.config import ConfigError, parse_config
    program = tmp_path / "p.py"
    program.write_text("def on_client_request(request):\n    return 'x'\n")
    with pytest.raises(ConfigError) as caught:
        parse_config(f"tenants:\n  - name: a\n    program: {program}\n    engine: snapshot\n    pool: 0\n"
                     "    verify_rewind: maybe\n", source="c.yaml", base_dir=tmp_path)
    text = str(caught.value)
    assert "engine" in text and "snapshot" in text
    assert "pool" in text and "verify_rewind" in text
