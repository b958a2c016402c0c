"""mayflyd-front against a fake reset host: persistent request channels.

A reset host (HOST_ATTACH engine=ENGINE_RESET) gives each front end loop one
request channel per worker slot (WORKER_CHANNEL, with the front end's end);
REQUEST comes without an fd, DISPATCHED names the worker, and the request is
written and answered on that worker's channel, which outlives it. The fake
here plays that host (one thread per data channel, one per request served);
what a request does is chosen by its path, what the host does around it by
the fake's flags. The front end is the real executable, as test_front_hosts
builds it.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mayflyd.protocol import (
    CHILD_EXIT,
    ENGINE_RESET,
    EXIT_CANCELLED,
    REQUEST_CTL,
    REQUEST_FAILED,
    RESP_HEAD,
    WORKER_SLOT,
    MsgType,
    pack_frame,
)
from mayflyd.supervisor.front_link import FrontLink
from tests.unit.test_front_hosts import (
    Front,
    close_all,
    messages,
    read_request,
    response_packets,
    start_front,
    stop_front,
)
from tests.unit.test_front_http import REPO, _build, pytestmark  # noqa: F401  (skips without llhttp)

THREADS = 2  # as spawn() starts it
NO_CHANNEL_SLOT = 200  # a slot the fake never gives a channel


@dataclass
class Served:
    req_id: int
    thread: int
    slot: int
    inode: int  # of the fake's end of the worker's channel


@dataclass
class FakeResetHost:
    """A reset host: per front end thread a data channel and `slots` workers."""

    host_id: int
    slots: int
    hangs: bool = False  # /hang: never answer (else it answers like /ok)
    channels: dict[int, socket.socket] = field(default_factory=dict)
    workers: dict[tuple[int, int], socket.socket] = field(default_factory=dict)  # (thread, slot): our end
    idle: dict[int, list[int]] = field(default_factory=dict)
    queued: dict[int, collections.deque[tuple[int, int]]] = field(default_factory=dict)
    served: list[Served] = field(default_factory=list)
    fds_with_request: int = 0  # REQUESTs that came with an fd: must stay 0
    cancelled: set[int] = field(default_factory=set)
    busy_most: int = 0  # most requests running at once on one thread
    junk_before: bool = False  # the next dispatch: stale answers queued on the worker's channel first
    no_channel_next: bool = False  # the next DISPATCHED names NO_CHANNEL_SLOT
    dies_once: bool = True  # /die-once: its worker is killed the first time only
    gone_next: int = 0  # the next ones: REQUEST_FAILED EPIPE (their worker died as they were handed over)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, link: FrontLink, tenant: str, threads: int) -> None:
        async def go() -> None:
            for thread in range(threads):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                link.attach_host(self.host_id, thread, tenant, theirs.fileno(), ENGINE_RESET)
                theirs.close()
                self.channels[thread] = ours
                self.idle[thread] = list(range(self.slots))
                self.queued[thread] = collections.deque()
                for slot in range(self.slots):
                    self._new_worker(thread, slot)
                threading.Thread(target=self._serve, args=(thread,), daemon=True).start()

        asyncio.run(go())

    def _new_worker(self, thread: int, slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.workers[thread, slot] = ours
        socket.send_fds(self.channels[thread], [pack_frame(MsgType.WORKER_CHANNEL, 0, WORKER_SLOT.pack(slot, 0))],
                        [theirs.fileno()])
        theirs.close()  # the front end's only: its end ends with it

    def replace_worker(self, thread: int, slot: int) -> None:
        """The slot's worker goes (WORKER_GONE) and a new one takes the slot (WORKER_CHANNEL)."""
        with self.lock:
            self._replace(thread, slot)

    def _replace(self, thread: int, slot: int) -> None:
        self.channels[thread].send(pack_frame(MsgType.WORKER_GONE, 0, WORKER_SLOT.pack(slot, 0)))
        self.workers.pop((thread, slot)).close()
        self._new_worker(thread, slot)

    def close(self) -> None:
        close_all([*self.channels.values(), *self.workers.values()])

    def _serve(self, thread: int) -> None:
        for frame, fds in messages(self.channels[thread]):
            for fd in fds:
                os.close(fd)
            with self.lock:
                if frame.type == MsgType.CANCEL:
                    self.cancelled.add(frame.req_id)
                    self._report(thread, frame.req_id, flags=EXIT_CANCELLED)  # the worker aborted
                    continue
                if frame.type != MsgType.REQUEST:
                    self.errors.append(f"unexpected message type {frame.type}")
                    continue
                self.fds_with_request += len(fds)
                self.queued[thread].append((frame.req_id, REQUEST_CTL.unpack(frame.payload)[0]))
                self._dispatch(thread)

    def _report(self, thread: int, req_id: int, *, status: int = 0, flags: int = 0) -> None:
        exit_ = CHILD_EXIT.pack(4242, status, flags, 7, 0, 0)
        try:
            self.channels[thread].send(pack_frame(MsgType.CHILD_EXIT, req_id, exit_))
        except OSError:
            pass  # the front end ended first (the test is over)

    def _dispatch(self, thread: int) -> None:
        """Each queued request to an idle worker (under the lock): DISPATCHED, then a thread serves it."""
        while self.queued[thread] and (self.idle[thread] or self.no_channel_next):
            req_id, timeout_ms = self.queued[thread].popleft()
            if self.gone_next:
                self.gone_next -= 1
                self.channels[thread].send(pack_frame(MsgType.REQUEST_FAILED, req_id,
                                                      REQUEST_FAILED.pack(errno.EPIPE, 0)))
                continue
            if self.no_channel_next:
                self.no_channel_next = False
                self.channels[thread].send(pack_frame(MsgType.DISPATCHED, req_id,
                                                      WORKER_SLOT.pack(NO_CHANNEL_SLOT, 0)))
                continue  # its CANCEL ends it
            slot = self.idle[thread].pop(0)
            sock = self.workers[thread, slot]
            if self.junk_before:
                self.junk_before = False
                # What a finished request could have left: an answer for another request, and a
                # forged one for the request about to run.
                sock.send(response_packets(req_id + 1000, 200, [], b"stale")[0])
                sock.send(response_packets(req_id, 200, [], b"forged")[0])
            self.channels[thread].send(pack_frame(MsgType.DISPATCHED, req_id, WORKER_SLOT.pack(slot, 0)))
            self.busy_most = max(self.busy_most, self.slots - len(self.idle[thread]))
            threading.Thread(target=self._run, args=(thread, slot, sock, req_id, timeout_ms), daemon=True).start()

    def _run(self, thread: int, slot: int, sock: socket.socket, req_id: int, timeout_ms: int) -> None:
        try:
            request = read_request(sock, req_id, timeout_ms)
        except (OSError, AssertionError) as exc:
            self.errors.append(f"request {req_id}: {exc!r}")
            return
        with self.lock:
            self.served.append(Served(req_id, thread, slot, os.fstat(sock.fileno()).st_ino))
        if request.path == "/hang" and self.hangs:
            return  # holds its worker until the host's channels end
        dies = request.path == "/die" or (request.path == "/die-once" and self.dies_once)
        if request.path == "/die-once":
            self.dies_once = False
        if dies:
            sock.shutdown(socket.SHUT_RDWR)  # the worker dies: its channel ends under the request
            time.sleep(0.05)  # the front end sees the end before the report
            with self.lock:
                self._report(thread, req_id, status=signal.SIGKILL)
                self._replace(thread, slot)
                self.idle[thread].append(slot)
                self._dispatch(thread)
            return
        if request.path == "/slow":
            time.sleep(0.3)
        if request.path == "/cut":
            sock.send(pack_frame(MsgType.RESP_HEAD, req_id, RESP_HEAD.pack(200, 0, 10)))  # and no body
        else:
            body = json.dumps({"req": req_id, "thread": thread, "slot": slot, "path": request.path,
                               "query": request.query}).encode()
            for packet in response_packets(req_id, 200, [(b"Content-Type", b"application/json")], body):
                sock.send(packet)
        if request.path == "/junk-after":
            sock.send(response_packets(req_id, 200, [], b"forged")[0])
            sock.send(b"garbage")
        with self.lock:
            self._report(thread, req_id)
            self.idle[thread].append(slot)
            self.idle[thread].sort()
            self._dispatch(thread)


@dataclass
class ResetFront:
    front: Front
    fakes: list[FakeResetHost] = field(default_factory=list)

    def host(self, host_id: int, *, slots: int = 2, threads: int = THREADS, hangs: bool = False) -> FakeResetHost:
        fake = FakeResetHost(host_id, slots, hangs)
        fake.attach(self.front.link, "app", threads)
        self.fakes.append(fake)
        return fake


def start(binary: Path, tmp: Path, *options: str) -> ResetFront:
    running = ResetFront(start_front(binary, tmp, *options))
    running.front.routes()
    return running


def stop(running: ResetFront) -> None:
    try:
        stop_front(running.front)
    finally:
        for fake in running.fakes:
            fake.close()


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-reset-hosts"), REPO / "csrc" / "front" / "main.c")


@pytest.fixture
def front(binary: Path, tmp_path: Path) -> Iterator[ResetFront]:
    running = start(binary, tmp_path)
    yield running
    stop(running)


def answer_of(front: Front, path: str) -> tuple[int, dict[str, object]]:
    """One request on a new connection: its status and, for a 200, the fake's JSON."""
    status, headers, body = front.ask(path)
    if status != 200:
        return status, {"body": body.decode()}
    seen = json.loads(body)
    assert seen["req"] == int(headers["x-request-id"])  # its own answer, no other's
    return status, seen


def test_requests_reuse_the_worker_channel_and_carry_no_fd(front: ResetFront) -> None:
    # One slot: with two, the next request can come before the first slot is
    # idle again (the answer goes out before the report) and take the other.
    fake = front.host(1, slots=1)
    conn = http.client.HTTPConnection("127.0.0.1", front.front.port, timeout=10)
    try:
        for i in range(20):
            conn.request("GET", f"/ok?{i}", headers={"Host": "app.example"})
            answer = conn.getresponse()
            seen = json.loads(answer.read())
            assert answer.status == 200 and seen["query"] == str(i)
            assert seen["req"] == int(answer.getheader("X-Request-Id") or 0)
    finally:
        conn.close()
    assert len(fake.served) == 20 and fake.fds_with_request == 0 and not fake.errors
    assert len({s.inode for s in fake.served}) == 1  # one worker: the same channel, request after request
    assert "dropped" not in front.front.stderr.read_text()


def test_what_waits_on_the_channel_before_dispatch_is_dropped(front: ResetFront) -> None:
    fake = front.host(1, slots=1)
    fake.junk_before = True
    status, seen = answer_of(front.front, "/ok")
    assert status == 200 and seen["path"] == "/ok"
    log = front.front.stderr.read_text()
    assert "dropped 2 packets an earlier request left on worker 0's channel" in log, log
    assert not fake.errors


def test_what_comes_after_the_answer_is_dropped(front: ResetFront) -> None:
    fake = front.host(1, slots=1)
    status, seen = answer_of(front.front, "/junk-after")
    assert status == 200 and seen["path"] == "/junk-after"
    for _ in range(4):  # the same worker serves again, clean
        status, seen = answer_of(front.front, "/ok")
        assert status == 200 and seen["path"] == "/ok"
    log = front.front.stderr.read_text()
    assert "dropped 2 packets request" in log and "sent after its answer on worker 0's channel" in log, log
    assert not fake.errors


def test_an_answer_cut_short_or_no_channel_is_a_502(front: ResetFront) -> None:
    fake = front.host(1, slots=1)
    started = time.monotonic()
    status, seen = answer_of(front.front, "/cut")
    assert (status, seen["body"]) == (502, "502 Bad Gateway: the program ended without answering\n")
    assert time.monotonic() - started < 1  # at the report, not at the request's deadline
    fake.no_channel_next = True
    status, seen = answer_of(front.front, "/ok")
    assert (status, seen["body"]) == (502, "502 Bad Gateway: the program sent an invalid response\n")
    assert "it has no request channel here" in front.front.stderr.read_text()
    deadline = time.monotonic() + 5
    while not fake.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.cancelled) == 1  # the host aborts what it dispatched
    assert answer_of(front.front, "/ok")[0] == 200  # still serving
    assert not fake.errors


def test_a_replaced_worker_serves_on_its_new_channel(binary: Path, tmp_path: Path) -> None:
    running = start(binary, tmp_path, "--threads", "1")
    try:
        fake = running.host(1, slots=1, threads=1)
        assert answer_of(running.front, "/ok")[0] == 200
        fake.replace_worker(0, 0)
        assert answer_of(running.front, "/ok")[0] == 200
        assert answer_of(running.front, "/ok")[0] == 200
        first, second, third = fake.served
        assert first.inode != second.inode == third.inode
        assert not fake.errors
    finally:
        stop(running)


def test_two_workers_serve_at_once(binary: Path, tmp_path: Path) -> None:
    running = start(binary, tmp_path, "--threads", "1")
    try:
        fake = running.host(1, slots=2, threads=1)
        answers: list[tuple[int, dict[str, object]]] = []
        asking = [threading.Thread(target=lambda i=i: answers.append(answer_of(running.front, f"/slow?{i}")))
                  for i in range(4)]
        for thread in asking:
            thread.start()
        for thread in asking:
            thread.join(10)
        assert sorted(str(seen["query"]) for status, seen in answers if status == 200) == ["0", "1", "2", "3"]
        assert fake.busy_most == 2 and {s.slot for s in fake.served} == {0, 1}
        assert not fake.errors
    finally:
        stop(running)


def test_an_unknown_engine_is_refused(front: ResetFront) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        front.front.link.attach_host(9, 0, "app", theirs.fileno(), 7)
        theirs.close()
        ours.settimeout(5)
        assert ours.recv(64) == b""  # the front end closed the fd it got
    assert "HOST_ATTACH: engine 7" in front.front.stderr.read_text()


def test_a_killed_workers_get_is_retried_once_its_post_is_a_502(binary: Path, tmp_path: Path) -> None:
    running = start(binary, tmp_path, "--threads", "1")
    try:
        fake = running.host(1, slots=1, threads=1)
        status, seen = answer_of(running.front, "/die-once")
        assert status == 200 and seen["path"] == "/die-once"  # on the slot's new worker
        # Killed again: not a third time.
        status, seen = answer_of(running.front, "/die")
        assert (status, seen["body"]) == (502, "502 Bad Gateway: the program ended without answering\n")
        assert "the sandbox killed by signal 9 (SIGKILL) without answering" in running.front.stderr.read_text()
        assert running.front.stderr.read_text().count("the sandbox was killed under the request; retrying once") == 2
        assert answer_of(running.front, "/ok")[0] == 200
        # A POST may have had effects: not run again.
        fake.dies_once = True
        status, _, body = running.front.ask("/die-once", method="POST", body=b"x")
        assert (status, body) == (502, b"502 Bad Gateway: the program ended without answering\n")
        assert [s.req_id for s in fake.served] == [1, 1, 2, 2, 3, 4] and not fake.errors
        # Handed to a worker that was gone: it reached no program, even a POST goes again; not forever.
        fake.gone_next = 1
        assert running.front.ask("/ok", method="POST", body=b"x")[0] == 200
        assert "the worker died before the request reached the program; sending it again" in \
            running.front.stderr.read_text()
        fake.gone_next = 100
        assert running.front.ask("/ok", method="POST", body=b"x")[::2] == \
            (503, b"503 Service Unavailable: the tenant's program is not running\n")  # it never ran
        assert fake.gone_next == 100 - 9  # the first and eight more
    finally:
        stop(running)


def test_a_get_whose_reset_host_died_is_retried_clean_on_the_next(binary: Path, tmp_path: Path) -> None:
    """And a POST the dead host never DISPATCHED goes too: it never reached the program."""
    running = start(binary, tmp_path, "--threads", "1")
    try:
        dying = running.host(1, slots=1, threads=1, hangs=True)
        answers: list[tuple[int, dict[str, object]]] = []
        asking = threading.Thread(target=lambda: answers.append(answer_of(running.front, "/hang")))
        asking.start()
        deadline = time.monotonic() + 5
        while not dying.served and time.monotonic() < deadline:
            time.sleep(0.01)
        posts: list[int] = []  # the one worker is busy: the POST waits in the host
        posting = threading.Thread(target=lambda: posts.append(running.front.ask("/ok", method="POST", body=b"x")[0]))
        posting.start()
        time.sleep(0.2)
        dying.close()  # its data channel and workers end with the request on one of them
        time.sleep(0.1)
        fake = running.host(2, slots=1, threads=1)
        asking.join(10)
        posting.join(10)
        assert answers and answers[0][0] == 200  # not "dispatched already": the retry started clean
        assert posts == [200] and len(dying.served) == 1
        assert sorted(s.req_id for s in fake.served) == sorted([dying.served[0].req_id, dying.served[0].req_id + 1])
        assert fake.fds_with_request == 0 and not fake.errors
        assert "the host died before the request reached the program; sending it again" in \
            running.front.stderr.read_text()
    finally:
        stop(running)
