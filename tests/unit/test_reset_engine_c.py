"""The reset engine's C side (csrc/engine/reset_engine.c, engine/reset_worker.c, rewind/rewind.c)
without the daemon: serve_reset in a forked child, the test plays the
supervisor on the control channel and the front end on the data channel."""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import queue
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mayflyd import _mayfly as M
from tests.daemon_harness import reset_engine_missing
from tests.unit.test_c_helper import (
    CHILD_EXIT,
    Host,
    check_queued_requests_end,
    check_the_queue_is_bounded,
    frame,
    memory_cgroup,
    nothing_on,
    open_inodes,
    parse_frame,
    peer_closed,
    read_response,
    request_packets,
    wait_for_pid_file,
)

# AddressSanitizer replaces malloc, and its mallopt() refuses M_MMAP_MAX and
# M_TRIM_THRESHOLD, which a reset worker sets before it starts (freed memory
# must stay mapped for the rewind): no worker can start under ASan. The
# sanitizer run (scripts/sanitized_c_tests.sh) runs this file against an
# UBSan-only build instead.
under_asan = hasattr(ctypes.CDLL(None), "__asan_init")
pytestmark = [
    pytest.mark.skipif(bool(reset_engine_missing()), reason="the kernel cannot run the reset engine"),
    pytest.mark.skipif(under_asan, reason="under ASan, mallopt refuses what a reset worker needs"),
]

STATE: list[int] = []
# Pages every request writes (hot, once learnt), anonymous and private: tracked.
HOT = mmap.mmap(-1, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
HOT[:6] = b"sealed"
_HOT_ADDR = ctypes.addressof(ctypes.c_char.from_buffer(HOT))
_LIBC = ctypes.CDLL(None, use_errno=True)
_MADV_DONTNEED, _PROT_READ = 4, 1


def runner(req_id: int, method: str, path: str, query: str, headers: list[tuple[str, str]],
           body: bytes, client: str) -> Any:
    seen = len(STATE)
    hot_seen = HOT[:6].decode()
    HOT[:6] = b"dirty!"
    if path in ("/zap-hot", "/readonly-hot"):
        op = (_LIBC.madvise, _MADV_DONTNEED) if path == "/zap-hot" else (_LIBC.mprotect, _PROT_READ)
        if op[0](ctypes.c_void_p(_HOT_ADDR), ctypes.c_size_t(len(HOT)), op[1]) != 0:
            raise OSError(ctypes.get_errno(), path)
    STATE.extend(range(1000))       # module state every request must not find
    hog = bytearray(4 << 20)        # a large allocation: brk or a new mapping
    fd = os.open("/dev/null", os.O_RDONLY)  # an fd left open
    os.umask(0o077)
    signal.signal(signal.SIGUSR2, lambda *_: None)
    if path == "/sleep":
        Path(query).write_text(str(os.getpid()))
        time.sleep(60)
    if path == "/spin":
        while True:
            pass
    if path == "/exit3":
        os._exit(3)
    if path == "/fill":  # written, not just reserved: charged to the cgroup
        hog = b"\1" * int(query)
    if path == "/inodes":
        return 200, [], json.dumps(open_inodes()).encode()
    if path == "/forge":
        # A completion on the worker's channel (the socket whose peer is the host), without the host's nonce.
        chan = next(fd for fd in range(3, 64) if _peer_pid(fd) == os.getppid())
        done = struct.pack("=IIIIII", 0, 0, 1, 1, 12345, 0)
        os.write(chan, frame(M.MSG_REQUEST_DONE, req_id, done))
    hdrs = [("x-pid", str(os.getpid())), ("x-seen", str(seen)), ("x-random", repr(random.random())),
            ("x-fd", str(fd)), ("x-umask", str(os.umask(0o077))), ("x-len", str(len(hog))),
            ("x-handler", str(signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL)), ("x-hot", hot_seen)]
    return 200, hdrs, body[::-1]


def _peer_pid(fd: int) -> int | None:
    try:
        dup = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError:
        return None
    try:
        pid: int = struct.unpack("3i", dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        return pid
    except OSError:
        return None
    finally:
        dup.close()


# Set before a host is forked: the worker dawdles at rest before reading its
# next request, so that an abort sent right behind the request arrives first.
SLOW_REST = False


def after_rewind() -> None:
    random.seed()
    if SLOW_REST:
        time.sleep(0.05)


class ResetRequest:
    """A request to a reset host, seen as the front end sees it: sent
    without a socket; once the host says DISPATCHED, its packets go on the
    worker's persistent request channel, where the answer is read."""

    def __init__(self, host: ResetHost, req_id: int, packets: list[bytes]) -> None:
        self.host, self.req_id, self.packets = host, req_id, packets
        self.sock: socket.socket | None = None  # the worker's channel, once dispatched
        self.done = threading.Event()           # dispatched, or ended undispatched

    def recv(self, size: int) -> bytes:
        """The next packet of the answer; b"" if the request ended undispatched."""
        assert self.done.wait(10), "neither dispatched nor ended"
        return b"" if self.sock is None else self.sock.recv(size)


class ResetHost(Host):
    """serve_reset in a forked child; the test plays the supervisor, and a
    thread plays the front end's part on the data channels: it keeps the
    worker channels the host sends, writes each request on the one the host
    dispatches it to, and passes CHILD_EXIT and REQUEST_FAILED on."""

    ENGINE = M.ENGINE_RESET

    def __init__(self, setup: Callable[[], None] | None = None, **serve_kw: Any) -> None:
        def host_setup() -> None:
            os.umask(0o022)
            if setup is not None:
                setup()
        super().__init__(runner, host_setup, **serve_kw)

    def serve(self, ctrl_fd: int, runner: Callable[..., Any], serve_kw: dict[str, Any]) -> None:
        M.serve_reset(ctrl_fd, runner, [], after_rewind, **serve_kw)

    def attach(self) -> socket.socket:
        chan = super().attach()
        if "lock" not in self.__dict__:
            self.lock = threading.Lock()
            self.channels: dict[socket.socket, dict[int, socket.socket]] = {}
            self.inbox: dict[socket.socket, queue.Queue[tuple[int, int, bytes]]] = {}
            self.requests: dict[int, ResetRequest] = {}
            self.gone: list[socket.socket] = []  # channels of workers that exited
            self.stopping = threading.Event()
            threading.Thread(target=self._front, daemon=True).start()
        with self.lock:
            self.channels[chan] = {}
            self.inbox[chan] = queue.Queue()
        return chan

    def _send(self, req_id: int, packets: list[bytes], timeout_ms: int, chan: socket.socket) -> ResetRequest:
        """REQUEST, no fd; the thread writes packets once the host dispatches it."""
        req = self.requests[req_id] = ResetRequest(self, req_id, packets)
        chan.send(frame(M.MSG_REQUEST, req_id, struct.pack("=II", timeout_ms, 0)))
        return req

    def request(self, req_id: int, *, timeout_ms: int = 10_000, on: socket.socket | None = None,
                **kw: Any) -> Any:
        return self._send(req_id, list(request_packets(req_id, **kw)), timeout_ms, on or self.data)

    def bare_request(self, req_id: int) -> Any:
        return self._send(req_id, [], 10_000, self.data)

    def _front(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                chans = [c for c in self.channels if c.fileno() >= 0]
            try:
                ready, _, _ = select.select(chans, [], [], 0.05)
            except (OSError, ValueError):
                continue  # a test closed a channel meanwhile
            for chan in ready:
                try:
                    self._one(chan)
                except OSError:
                    with self.lock:
                        self.channels.pop(chan, None)

    def _one(self, chan: socket.socket) -> None:
        """One message from a data channel, handled as the front end would."""
        data, fds, _, _ = socket.recv_fds(chan, 4096, 1)
        if not data:
            with self.lock:
                self.channels.pop(chan, None)
            return
        msg_type, rid, payload = parse_frame(data)
        channels = self.channels[chan]
        if msg_type == M.MSG_WORKER_CHANNEL:
            assert len(fds) == 1 and rid == 0, (fds, rid)
            slot = struct.unpack("=II", payload)[0]
            old = channels.pop(slot, None)
            if old is not None:
                self.gone.append(old)
            channels[slot] = socket.socket(fileno=fds[0])
            channels[slot].settimeout(10)
            return
        assert not fds, (msg_type, fds)
        if msg_type == M.MSG_WORKER_GONE:
            # Not closed: a test may still be reading the dead worker's end.
            self.gone.append(channels.pop(struct.unpack("=II", payload)[0]))
        elif msg_type == M.MSG_DISPATCHED:
            req = self.requests[rid]
            sock = channels[struct.unpack("=II", payload)[0]]
            while select.select([sock], [], [], 0)[0]:  # left from earlier requests
                sock.recv(1 << 17)
            for pkt in req.packets:
                sock.send(pkt)
            req.sock = sock
            req.done.set()
        else:
            assert msg_type in (M.MSG_CHILD_EXIT, M.MSG_REQUEST_FAILED), msg_type
            if rid in self.requests:
                self.requests[rid].done.set()
            self.inbox[chan].put((msg_type, rid, payload))

    def close(self, channel: str = "both") -> int:
        if channel in ("data", "both"):
            self.stopping.set()
        return super().close(channel)

    def data_message(self, on: socket.socket | None = None) -> tuple[int, int, bytes]:
        return self.inbox[on or self.data].get(timeout=10)

    def any_message(self) -> tuple[int, int, bytes]:
        """The next message a test reads from either channel."""
        inbox = self.inbox[self.data]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return inbox.get(timeout=0.02)
            except queue.Empty:
                pass
            if select.select([self.ctrl], [], [], 0)[0]:
                msg_type, rid, payload = parse_frame(self.ctrl.recv(4096))
                assert msg_type not in (M.MSG_CHILD_EXIT, M.MSG_REQUEST_FAILED), msg_type
                return msg_type, rid, payload
        raise AssertionError("no message from the host")

    def message(self) -> tuple[int, int, bytes]:
        return self.any_message()

    def child_exit(self, req_id: int) -> tuple[int, int, int, int, int]:
        msg_type, rid, payload = self.message()
        assert (msg_type, rid) == (M.MSG_CHILD_EXIT, req_id), (msg_type, payload)
        pid, status, flags, cost_us, pages, _ = CHILD_EXIT.unpack(payload)
        return pid, status, flags, cost_us, pages


@pytest.fixture
def host() -> Iterator[ResetHost]:
    h = ResetHost(pool_size=1, verify=True, cpu_ms=200)
    yield h
    if h.ctrl.fileno() >= 0:
        assert h.close() == 0


def served(host: ResetHost, req_id: int, path: bytes = b"/") -> tuple[dict[str, str], int, int, int]:
    sock = host.request(req_id, path=path, body=b"abc")
    status, headers, body = read_response(sock, req_id)
    assert status == 200 and body == b"cba"
    pid, wait_status, flags, cost_us, pages = host.child_exit(req_id)
    assert os.WIFEXITED(wait_status) and os.WEXITSTATUS(wait_status) == 0 and flags == 0
    assert pid == int(headers["x-pid"]) and pid != host.pid
    return headers, cost_us, pages, pid


def test_each_request_finds_the_sealed_state_in_the_same_worker(host: ResetHost) -> None:
    results = [served(host, i) for i in range(1, 30)]
    assert {h["x-seen"] for h, *_ in results} == {"0"}
    assert {h["x-umask"] for h, *_ in results} == {str(0o077)}  # the request's own, after its umask()
    assert {h["x-handler"] for h, *_ in results} == {"False"}
    assert len({h["x-fd"] for h, *_ in results}) == 1, "the fd a request leaves open is closed"
    assert len({h["x-random"] for h, *_ in results}) == len(results), "random is reseeded"
    assert len({pid for *_, pid in results}) == 1, "one worker, rewound in place"
    assert all(cost > 0 and pages > 0 for _, cost, pages, _ in results)


def test_cancel_aborts_and_rewinds_in_place(host: ResetHost, tmp_path: Path) -> None:
    *_, worker = served(host, 1)
    pid_file = tmp_path / "pid"
    sock = host.request(2, path=b"/sleep", query=str(pid_file).encode())
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    host.data.send(frame(M.MSG_CANCEL, 2))
    pid, status, flags, cost_us, pages = host.child_exit(2)
    assert pid == worker and flags == M.EXIT_CANCELLED
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # reported like a killed sandbox
    assert nothing_on(sock.sock), "no answer on the worker's channel"
    headers, *_, pid = served(host, 3)
    assert pid == worker and headers["x-seen"] == "0"


def test_a_cancel_right_behind_its_request_is_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The abort can reach the worker before the request does: it must wait
    for it, not be dropped (the request would then run until the host kills
    the worker, and the worker would be replaced)."""
    monkeypatch.setattr(sys.modules[__name__], "SLOW_REST", True)
    host = ResetHost(pool_size=1)
    try:
        *_, worker = served(host, 1)
        for req_id in range(2, 6):
            host.request(req_id, path=b"/sleep", query=str(tmp_path / str(req_id)).encode())
            host.data.send(frame(M.MSG_CANCEL, req_id))
            msg_type, _, payload = host.message()
            assert msg_type == M.MSG_CHILD_EXIT, payload
            pid, _, flags, *_ = CHILD_EXIT.unpack(payload)
            assert pid == worker and flags == M.EXIT_CANCELLED
        assert served(host, 6)[3] == worker
    finally:
        assert host.close() == 0


def test_cpu_budget_aborts_and_rewinds_in_place(host: ResetHost) -> None:
    *_, worker = served(host, 1)
    host.request(2, path=b"/spin")
    pid, status, flags, *_ = host.child_exit(2)
    assert pid == worker and flags == M.EXIT_CPU_EXCEEDED
    headers, *_, pid = served(host, 3)
    assert pid == worker and headers["x-seen"] == "0"


def test_deadline_aborts_and_rewinds_in_place(host: ResetHost) -> None:
    *_, worker = served(host, 1)
    started = time.monotonic()
    host.request(2, path=b"/sleep", query=b"/dev/null", timeout_ms=0)
    pid, _, flags, *_ = host.child_exit(2)
    assert pid == worker and flags == M.EXIT_TIMED_OUT
    assert time.monotonic() - started < 5  # timeout 0 + the host's grace
    assert served(host, 3)[3] == worker


@pytest.mark.parametrize("path, reason", [(b"/exit3", "exited with status 3"),
                                          (b"/forge", "forged a completion")])
def test_a_worker_that_dies_or_forges_is_replaced(host: ResetHost, path: bytes, reason: str) -> None:
    *_, worker = served(host, 1)
    host.request(2, path=path)
    messages = {}
    while not {M.MSG_CHILD_EXIT, M.MSG_WORKER_REPLACED} <= messages.keys():  # the two channels: any order
        msg_type, _, payload = host.message()
        messages[msg_type] = payload
    assert reason in messages[M.MSG_WORKER_REPLACED].decode()
    headers, *_, pid = served(host, 3)
    assert pid != worker and headers["x-seen"] == "0"


def test_a_pool_serves_requests_side_by_side(tmp_path: Path) -> None:
    h = ResetHost(pool_size=2)
    try:
        files = [tmp_path / "a", tmp_path / "b"]
        socks = [h.request(i + 1, path=b"/sleep", query=str(f).encode()) for i, f in enumerate(files)]
        deadline = time.monotonic() + 10
        while not all(f.exists() and f.read_text() for f in files):
            assert time.monotonic() < deadline, "both requests run at once on two workers"
            time.sleep(0.01)
        assert files[0].read_text() != files[1].read_text()
        # A third request waits in the host for a free worker.
        third = h.request(3)
        h.data.send(frame(M.MSG_CANCEL, 1))
        assert h.child_exit(1)[2] == M.EXIT_CANCELLED
        assert read_response(third, 3)[0] == 200
        assert h.child_exit(3)[0] == int(files[0].read_text())
        h.data.send(frame(M.MSG_CANCEL, 2))
        assert h.child_exit(2)[2] == M.EXIT_CANCELLED
        del socks
    finally:
        assert h.close() == 0


def _minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def test_pages_every_request_writes_stay_writable_and_are_still_rewound(host: ResetHost) -> None:
    """After HOT_LEARN_REWINDS requests (and the first), the pages each wrote are no
    longer write-protected (no fault per page per request) but copied back
    on every rewind: the host's verify mode compares every tracked page with
    the snapshot after each rewind, and each request still finds the sealed state."""
    def faults_per_request(first: int, count: int) -> tuple[float, float]:
        before = _minor_faults(worker)
        results = [served(host, first + i) for i in range(count)]
        assert {h["x-seen"] for h, *_ in results} == {"0"}
        return (_minor_faults(worker) - before) / count, sum(pages for _, _, pages, _ in results) / count

    *_, worker = served(host, 1)  # its rewind is not learnt from: one-time set-up
    learning, pages_learning = faults_per_request(2, M.HOT_LEARN_REWINDS - 2)
    faults_per_request(100, 3)  # the last rewinds that learn, and the first after
    learnt, pages_learnt = faults_per_request(200, 10)
    assert pages_learnt >= pages_learning * 0.8, "the hot pages are still copied back"
    # Each hot page cost a write-protect fault per request while learning.
    assert learning - learnt > pages_learnt / 2, (learning, learnt, pages_learnt)


def test_a_hot_page_a_request_zapped_is_copied_back(host: ResetHost) -> None:
    """A hot page is copied back on every rewind, whatever the request did
    to it: zapped (MADV_DONTNEED), the next request finds its sealed content."""
    results = [served(host, i) for i in range(1, M.HOT_LEARN_REWINDS + 3)]
    assert {h["x-hot"] for h, *_ in results} == {"sealed"}
    headers, *_, worker = served(host, 100, path=b"/zap-hot")
    assert headers["x-hot"] == "sealed"
    after, *_, pid = served(host, 101)
    assert (after["x-hot"], pid) == ("sealed", worker)


def test_a_page_made_read_only_is_repaired_or_its_worker_replaced(host: ResetHost) -> None:
    """verify compares the whole mappings text after every request: a
    protection change alone is put back; one that split a merged mapping
    (the layout decides) ends the worker. Either way the next request finds
    the page writable and sealed."""
    for i in range(1, M.HOT_LEARN_REWINDS + 3):
        served(host, i)
    status, headers, _ = read_response(host.request(100, path=b"/readonly-hot", body=b"abc"), 100)
    assert (status, headers["x-hot"]) == (200, "sealed")
    seen = {}
    while M.MSG_CHILD_EXIT not in seen or (CHILD_EXIT.unpack(seen[M.MSG_CHILD_EXIT])[1] != 0
                                           and M.MSG_WORKER_REPLACED not in seen):
        msg_type, req_id, payload = host.message()
        assert msg_type == M.MSG_WORKER_REPLACED or (msg_type, req_id) == (M.MSG_CHILD_EXIT, 100)
        seen[msg_type] = payload
    after, *_ = served(host, 101)
    assert after["x-hot"] == "sealed"


def test_a_hot_page_made_read_only_ends_its_worker() -> None:
    """Without verify, mappings are compared in full only every 64th rewind:
    the copy back into the read-only page faults, and the worker is replaced."""
    h = ResetHost(pool_size=1, cpu_ms=200)
    try:
        *_, worker = served(h, 1)
        for i in range(2, M.HOT_LEARN_REWINDS + 3):
            served(h, i)
        h.request(100, path=b"/readonly-hot")
        messages = {}
        while not {M.MSG_CHILD_EXIT, M.MSG_WORKER_REPLACED} <= messages.keys():  # the two channels: any order
            msg_type, _, payload = h.message()
            messages[msg_type] = payload
        assert b"killed by signal 11" in messages[M.MSG_WORKER_REPLACED]
        headers, *_, pid = served(h, 101)
        assert pid != worker and headers["x-hot"] == "sealed"
    finally:
        assert h.close() == 0


def test_workers_hold_neither_channel(host: ResetHost) -> None:
    inodes = host.inodes_in_a_child(1)
    assert inodes and not inodes & host.host_ends


def test_requests_on_the_control_channel_and_shutdown_on_the_data_channel_are_refused(
        host: ResetHost, tmp_path: Path) -> None:
    *_, worker = served(host, 1)
    refused, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(host.ctrl, [frame(M.MSG_REQUEST, 2, struct.pack("=II", 10_000, 0))], [theirs.fileno()])
    theirs.close()
    refused.settimeout(10)
    assert refused.recv(100) == b"", "the host closed the request's socket unanswered"
    host.data.send(frame(M.MSG_SHUTDOWN, 0))
    host.request(3, path=b"/sleep", query=str(tmp_path / "pid").encode())
    assert wait_for_pid_file(tmp_path / "pid") == worker
    host.ctrl.send(frame(M.MSG_CANCEL, 3))  # refused: the request goes on
    host.data.send(frame(M.MSG_CANCEL, 3))
    msg_type, rid, payload = host.message()
    assert (msg_type, rid) == (M.MSG_CHILD_EXIT, 3) and CHILD_EXIT.unpack(payload)[2] == M.EXIT_CANCELLED
    assert served(host, 4)[3] == worker
    assert select.select([host.ctrl], [], [], 0)[0] == [], "nothing was said on the control channel"


def test_the_end_of_the_control_channel_ends_the_host_and_its_workers(tmp_path: Path) -> None:
    h = ResetHost(pool_size=2)
    try:
        h.request(1, path=b"/sleep", query=str(tmp_path / "pid").encode())
        busy = wait_for_pid_file(tmp_path / "pid")
        workers = psutil.Process(h.pid).children()
        assert busy in {w.pid for w in workers}
    finally:
        assert h.close("control") == 0
    for worker in workers:  # killed and reaped by the host
        with pytest.raises(ProcessLookupError):
            os.kill(worker.pid, 0)
    h.data.close()


def test_busy_workers_stay_within_concurrency_and_the_queue_is_bounded(tmp_path: Path) -> None:
    h = ResetHost(pool_size=2, concurrency=1, queue=1)
    try:
        worker = check_the_queue_is_bounded(h, tmp_path)
        assert h.child_exit(2)[:3] == (worker, 0, 0)
        assert [p.pid for p in psutil.Process(h.pid).children()] == [worker], "a pool of min(pool, concurrency)"
    finally:
        assert h.close() == 0


def test_queued_requests_time_out_or_are_cancelled(host: ResetHost, tmp_path: Path) -> None:
    check_queued_requests_end(host, tmp_path)


def test_the_end_of_a_data_channel_aborts_its_request_and_the_worker_serves_on(
        host: ResetHost, tmp_path: Path) -> None:
    second = host.attach()
    sock = host.request(1, path=b"/sleep", query=str(tmp_path / "pid").encode(), on=second)
    worker = wait_for_pid_file(tmp_path / "pid")
    second.close()
    assert sock.sock is not None and nothing_on(sock.sock)  # aborted, and no answer
    # No report of request 1; the same worker, rewound, serves the next.
    assert served(host, 2)[3] == worker
    assert select.select([host.data, host.ctrl], [], [], 0.2)[0] == []


def test_a_worker_the_oom_killer_took_is_flagged() -> None:
    # Room for the host's and the worker's own pages, not for the request's.
    with memory_cgroup(512 << 20) as (join, oom_fd):
        h = ResetHost(join, oom_fd=oom_fd)
        try:
            sock = h.request(1, path=b"/fill", query=str(1 << 30).encode())
            assert peer_closed(sock)
            # The two channels keep no order between them: each read on its own.
            msg_type, rid, payload = h.data_message()
            assert (msg_type, rid) == (M.MSG_CHILD_EXIT, 1)
            _, status, flags, *_ = CHILD_EXIT.unpack(payload)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert flags == M.EXIT_OUT_OF_MEMORY
            # Its replacement serves.
            assert h.ctrl_message()[0] == M.MSG_WORKER_REPLACED
            served(h, 2)
        finally:
            assert h.close() == 0
