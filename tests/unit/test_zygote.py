"""The zygote without the daemon: its C fork (zygote_fork.c) and its process (zygote.py)."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mayflyd import _mayfly
from mayflyd.host.sandbox_host import HostSpec
from mayflyd.protocol import (
    ChildExit,
    LoadFailed,
    MsgType,
    Ready,
    ResponseDecoder,
    decode_control,
    decode_data,
    encode_request,
    encode_request_ctl,
    pack_frame,
)
from mayflyd.supervisor.zygote_client import FdChannel, ZygoteChild, python_argv

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the identity drop needs root")
SEED = Path(__file__).resolve().parents[2] / "config" / "programs" / "hello_pythran.py"
NOBODY = 65534
NO_WALLS_BUT_IDENTITY = (False, 0, NOBODY, NOBODY, None, None)


def recv_within(sock: socket.socket, timeout: float = 10.0) -> bytes:
    ready, _, _ = select.select([sock], [], [], timeout)
    assert ready, "nothing arrived"
    return sock.recv(65536)


@needs_root
@pytest.mark.parametrize("oom", ["none", "below", "above"])
def test_the_forked_host_keeps_only_its_fds_and_leads_a_session_as_nobody(oom: str) -> None:
    # The memory events fd, if any, may be below or above the control
    # channel: the gaps around both are closed.
    oom_fd = os.open("/dev/null", os.O_RDONLY) if oom == "below" else -1
    stray_between = os.open("/dev/null", os.O_RDONLY)  # inheritable, yet must not reach the host
    os.set_inheritable(stray_between, True)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if oom == "above":
        oom_fd = os.open("/dev/null", os.O_RDONLY)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    stray = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(stray, True)
    pid = _mayfly.zygote_fork(theirs.fileno(), oom_fd, out_w, err_w, NO_WALLS_BUT_IDENTITY)
    if pid == 0:
        try:
            report = {"fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")), "uid": os.getuid(),
                      "sid_is_pid": os.getsid(0) == os.getpid(), "ppid": os.getppid()}
            os.write(1, b"to stdout")
            os.write(theirs.fileno(), json.dumps(report).encode())
        finally:
            os._exit(0)
    for fd in (out_w, err_w, stray, stray_between):
        os.close(fd)
    kept = {theirs.fileno()} | ({oom_fd} if oom_fd >= 0 else set())
    theirs.close()
    if oom_fd >= 0:
        os.close(oom_fd)
    try:
        report = json.loads(recv_within(ours))
        assert os.waitpid(pid, 0)[1] == 0
        # 0-2, the control channel, the memory events, and the fd listdir itself opened.
        assert {0, 1, 2} | kept <= set(report["fds"]) and len(report["fds"]) == 4 + len(kept)
        assert (report["uid"], report["sid_is_pid"], report["ppid"]) == (NOBODY, True, os.getpid())
        assert os.read(out_r, 100) == b"to stdout"
    finally:
        ours.close()
        os.close(out_r)
        os.close(err_r)


def test_a_step_that_fails_before_the_host_runs_is_reported_as_load_failed(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = _mayfly.zygote_fork(theirs.fileno(), -1, out_w, err_w, NO_WALLS_BUT_IDENTITY,
                              cgroup_version=1, cgroup_base=str(tmp_path / "no-such-cgroupfs"), cgroup_group="tenant")
    if pid == 0:
        os._exit(99)  # the cgroup join cannot succeed: never here
    for fd in (out_w, err_w):
        os.close(fd)
    theirs.close()
    try:
        message = decode_control(recv_within(ours))
        assert isinstance(message, LoadFailed)
        assert message.message.startswith("sandbox setup failed: ")
        assert "no-such-cgroupfs" in message.message
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    finally:
        ours.close()
        os.close(out_r)
        os.close(err_r)


def test_bad_fds_are_refused_in_the_caller() -> None:
    with pytest.raises(OSError, match="must be 3 or above"):
        _mayfly.zygote_fork(0, 3, 1, 2, NO_WALLS_BUT_IDENTITY)
    with pytest.raises(OSError, match="both fd 5"):
        _mayfly.zygote_fork(5, 5, 6, 7, NO_WALLS_BUT_IDENTITY)


def start_zygote(open_files: int | None = None) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    def limit_open_files() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    proc = subprocess.Popen(python_argv("mayflyd.host.zygote", str(theirs.fileno()), str(os.getpid())),
                            pass_fds=(theirs.fileno(),), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                            cwd="/", preexec_fn=limit_open_files)
    theirs.close()
    return proc, ours


@pytest.fixture
def zygote() -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    proc, ours = start_zygote()
    try:
        yield proc, ours
    finally:
        proc.kill()
        proc.wait()
        ours.close()


def spec(**overrides: object) -> HostSpec:
    base: dict[str, object] = dict(
        tenant="t", program=str(SEED), ctrl_fd=-1, parent_pid=0, uid=NOBODY, gid=NOBODY, mode="none",
        cgroup_version=0, cgroup_base="", cgroup_group="", network="none", readonly_paths=[], loading_filter="",
        request_filter="", pids=64, request_cpu_ms=1000, request_memory=0, nofile=64)
    return HostSpec(**{**base, **overrides})  # type: ignore[arg-type]


def test_the_zygote_answers_a_bad_message_and_keeps_serving(zygote: tuple[subprocess.Popen[bytes], socket.socket]
                                                             ) -> None:
    proc, channel = zygote
    channel.send(b"not json")
    assert json.loads(recv_within(channel)) == {"failed": None, "error": "bad spawn message: "
                                                "Expecting value: line 1 column 1 (char 0)"}
    channel.send(json.dumps({"spawn": 7, "spec": "{}", "env": {}}).encode())  # no fds
    reply = json.loads(recv_within(channel))
    assert reply["failed"] == 7 and "3 fds" in reply["error"]
    assert proc.poll() is None


@needs_root
def test_the_zygote_forks_a_host_that_serves_as_its_parents_child(
        zygote: tuple[subprocess.Popen[bytes], socket.socket]) -> None:
    _, channel = zygote
    ctrl, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    data_chan, data_host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    message = {"spawn": 1, "spec": spec().to_json(), "env": {"PATH": "/bin", "LANG": "C.UTF-8", "X": "1"}}
    host_fds = [host_end.fileno(), out_w, err_w]
    socket.send_fds(channel, [json.dumps(message).encode()], host_fds)
    for fd in (out_w, err_w):
        os.close(fd)
    host_end.close()
    try:
        ready, _, _ = select.select([channel], [], [], 10)
        assert ready
        data, fds, _, _ = socket.recv_fds(channel, 4096, 1)
        reply = json.loads(data)
        (pidfd,) = fds
        assert reply["spawned"] == 1 and reply["pid"] > 0
        # A sibling of the zygote (CLONE_PARENT): the zygote's parent's child, not the zygote's.
        assert psutil.Process(reply["pid"]).ppid() == os.getpid()
        assert isinstance(decode_control(recv_within(ctrl)), Ready)
        assert os.read(out_r, 100) == b"Hello from Python\n"  # on_init's print, on the host's own stdout
        socket.send_fds(ctrl, [pack_frame(MsgType.DATA_CHANNEL, 0)], [data_host_end.fileno()])
        data_host_end.close()
        # A request on the data channel: the host serves it and reports its end there.
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socket.send_fds(data_chan, [encode_request_ctl(1, 10_000)], [theirs.fileno()])
        theirs.close()
        for packet in encode_request(1, method="GET", path="/", query="", headers=[], body=b"", client="t"):
            mine.send(packet)
        decoder = ResponseDecoder(1, 1 << 20)
        while not decoder.done:
            decoder.feed(recv_within(mine))
        assert decoder.response().status == 200
        assert isinstance(decode_data(recv_within(data_chan)), ChildExit)
        mine.close()
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)  # ours to reap
        os.close(pidfd)
        assert info is not None and info.si_pid == reply["pid"]
        assert info.si_code == os.CLD_KILLED and info.si_status == signal.SIGKILL
    finally:
        ctrl.close()
        data_chan.close()
        os.close(out_r)
        os.close(err_r)


def test_a_zygote_child_is_reaped_through_its_pidfd_with_its_status() -> None:
    # The supervisor's own child, as a zygote's host is (CLONE_PARENT).
    async def scenario() -> tuple[int, int, list[int]]:
        ended: list[int] = []
        nonlocal pids
        exits = os.fork()
        if exits == 0:
            os._exit(3)
        sleeps = os.fork()
        if sleeps == 0:
            signal.pause()
            os._exit(0)
        first = ZygoteChild(exits, os.pidfd_open(exits), lambda child: ended.append(child.pid))
        second = ZygoteChild(sleeps, os.pidfd_open(sleeps), lambda child: ended.append(child.pid))
        pids = [exits, sleeps]
        second.kill()
        return await first.wait(), await second.wait(), ended
    pids: list[int] = []
    code, killed, ended = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert (code, killed) == (3, -signal.SIGKILL)
    assert sorted(ended) == sorted(pids)
    for pid in pids:
        with pytest.raises(ChildProcessError):  # reaped: no zombie left
            os.waitpid(pid, os.WNOHANG)


def test_the_channel_lets_many_senders_wait_for_a_full_queue_and_loses_none() -> None:
    async def scenario() -> list[bytes]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = FdChannel(ours)
        payload = b"x" * 16384
        r, w = os.pipe()
        try:
            # More than the peer's queue holds, all at once.
            sends = [asyncio.create_task(channel.send(b"%03d" % i + payload, [w])) for i in range(100)]
            await asyncio.sleep(0.05)
            assert not all(task.done() for task in sends), "the queue never filled: the test proves nothing"
            received: list[bytes] = []
            theirs.setblocking(False)
            while len(received) < 100:
                try:
                    data, fds, _, _ = socket.recv_fds(theirs, 65536, 1)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
                    continue
                for fd in fds:
                    os.close(fd)
                received.append(data[:3])
            await asyncio.wait_for(asyncio.gather(*sends), 5)
            return received
        finally:
            channel.close()
            theirs.close()
            os.close(r)
            os.close(w)
    received = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert sorted(received) == [b"%03d" % i for i in range(100)]


def test_closing_the_channel_fails_a_sender_that_waits() -> None:
    async def scenario() -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = FdChannel(ours)
        r, w = os.pipe()
        try:
            sends = [asyncio.create_task(channel.send(b"y" * 65536, [w])) for _ in range(20)]
            await asyncio.sleep(0.05)
            channel.close()
            results = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 5)
            assert any(isinstance(result, ConnectionResetError) for result in results), results
        finally:
            theirs.close()
            os.close(r)
            os.close(w)
    asyncio.run(asyncio.wait_for(scenario(), 10))


@needs_root
def test_a_zygote_out_of_fds_refuses_the_host_and_keeps_serving() -> None:
    # 0-2, the channel, the supervisor's pidfd, then the three fds of a
    # spawn: no room left for the child's pidfd.
    proc, channel = start_zygote(open_files=7)
    ctrl, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        message = {"spawn": 3, "spec": spec().to_json(), "env": {}}
        host_fds = [host_end.fileno(), out_w, err_w]
        socket.send_fds(channel, [json.dumps(message).encode()], host_fds)
        reply = json.loads(recv_within(channel))
        assert reply["failed"] == 3 and reply["error"].startswith("pidfd_open: [Errno 24]"), reply
        assert proc.poll() is None
        # The unwatched host was killed, for its parent (here, us) to reap.
        _, status = os.waitpid(reply["pid"], 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        for sock in (channel, ctrl, host_end):
            sock.close()
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)


def test_the_daemon_raises_its_open_files_limit_to_the_hard_one() -> None:
    script = ("import resource; soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE); "
              "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
              "from mayflyd.supervisor.daemon import raise_open_files_limit; "
              "print(raise_open_files_limit(), *resource.getrlimit(resource.RLIMIT_NOFILE), hard)")
    now, soft, hard_after, hard = map(int, subprocess.run([sys.executable, "-c", script], check=True,
                                                          capture_output=True, text=True).stdout.split())
    assert now == soft == hard_after == min(hard, 1 << 20) or hard == resource.RLIM_INFINITY
