"""Socket activation (systemd/mayflyd.socket) without systemd: the test holds
the listening socket, as systemd would, and starts `mayflyd serve` with it as
fd 3 under LISTEN_FDS=1 and LISTEN_PID. A front end or a supervisor killed
and restarted meanwhile refuses no connection: the new connections wait in
the kernel's backlog."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon, free_port

PROGRAM = "def on_client_request(request):\n    return 'served'\n"
# sd_listen_fds(3): the sockets start at fd 3; LISTEN_PID is the daemon's own
# pid, which stays through exec.
ACTIVATE = ("import os, sys; fd = int(sys.argv[1]); os.dup2(fd, 3); os.close(fd); "
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); os.execv(sys.argv[2], sys.argv[2:])")
# A connection accepted, then closed unanswered by a process killed.
LOST = {"error RemoteDisconnected", "error ConnectionResetError"}


def start_activated(d: Daemon, listener: socket.socket, timeout: float = 30.0) -> None:
    """`mayflyd serve` as systemd starts it from mayflyd.socket."""
    fd = listener.fileno()
    d.spawn(["serve", "--config", str(d.config_path)], timeout,
            prefix=[sys.executable, "-c", ACTIVATE, str(fd)], pass_fds=(fd,))


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


class Stream:
    """Clients making a new connection per request, all the time, until stopped."""

    def __init__(self, port: int, clients: int = 4) -> None:
        self.port = port
        self.clients = clients
        self.outcomes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def __enter__(self) -> Stream:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _client(self) -> None:
        while not self._stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                conn.request("GET", "/", headers={"Host": "a.localhost", "Connection": "close"})
                response = conn.getresponse()
                outcome = f"{response.status} {response.read().decode(errors='replace')}"
            except ConnectionRefusedError:
                outcome = "refused"
            except (OSError, http.client.HTTPException) as exc:
                outcome = f"error {type(exc).__name__}"
            finally:
                conn.close()
            with self._lock:
                self.outcomes[outcome] += 1

    def failures(self) -> Counter[str]:
        with self._lock:
            return Counter({k: v for k, v in self.outcomes.items() if k != "200 served"})

    def served(self) -> int:
        with self._lock:
            return self.outcomes["200 served"]

    def wait_served(self, more: int, timeout: float = 30.0) -> None:
        goal = self.served() + more
        deadline = time.monotonic() + timeout
        while self.served() < goal:
            assert time.monotonic() < deadline, f"only {self.served()} of {goal} served: {self.outcomes}"
            time.sleep(0.02)


@pytest.fixture
def activated(tmp_path: Path) -> Iterator[tuple[Daemon, socket.socket]]:
    d = Daemon(tmp_path, [{"name": "a", "hosts": ["a.localhost"], "program": "programs/a.py"}], {"a.py": PROGRAM})
    with socket.create_server(("127.0.0.1", d.port), backlog=4096) as listener:
        start_activated(d, listener)
        try:
            yield d, listener
        finally:
            assert d.stop() == 0, d.log()[-3000:]
    assert d.cgroup_dirs() == []


def test_a_restart_of_the_front_end_or_the_supervisor_refuses_no_connection(
        activated: tuple[Daemon, socket.socket]) -> None:
    d, listener = activated
    assert "(socket-activated)" in d.log()
    assert d.get("a.localhost").text == "served"
    with Stream(d.port) as stream:
        stream.wait_served(20)

        assert stream.failures() == Counter()

        # The front end dies: the supervisor's socket stays, a new front end takes it.
        front = d.status()["front"]["pid"]
        os.kill(front, signal.SIGKILL)
        d.wait_for(lambda: d.status()["front"]["restarts"] == 1, what="a new front end")
        stream.wait_served(20)
        # What the killed front end had accepted is lost (a connection closed
        # unanswered), at most one per client; no connection is refused.
        after_front = stream.failures()
        assert set(after_front) <= LOST and sum(after_front.values()) <= stream.clients, after_front

        # The supervisor dies: its hosts, zygote and front end with it; the
        # socket is ours, and what comes meanwhile waits for the next daemon.
        assert d.proc is not None
        old = [pid for pid in children_of(d.proc.pid) if alive(pid)]
        assert old, "the supervisor has no children"
        d.proc.kill()
        d.proc.wait()
        d.wait_for(lambda: not any(alive(pid) for pid in old), what="the old daemon's processes to end")
        # A process of the old run that escaped: the new daemon ends it with its stale cgroup.
        stale_groups = [Path(top, "a") for top in d.cgroup_dirs()]
        orphan = subprocess.Popen(["sleep", "60"]) if stale_groups else None
        if orphan is not None:
            (stale_groups[0] / "cgroup.procs").write_text(f"{orphan.pid}\n")
        gap = stream.served()
        time.sleep(0.5)  # connections queue up in the backlog meanwhile
        assert stream.served() == gap
        first_log = d.log()
        start_activated(d, listener)
        stream.wait_served(20)
    # The old daemon's admin socket, cgroups and their processes are taken over.
    assert "removing the stale admin socket" in d.log(), first_log[-2000:] + d.log()[-2000:]
    if orphan is not None:
        assert orphan.wait(timeout=5) == -signal.SIGKILL
        assert "removing the stale cgroup of tenant a from a previous run" in d.log()
    # Again what its front end had accepted when the supervisor died, at most.
    after_supervisor = stream.failures() - after_front
    assert set(after_supervisor) <= LOST and sum(after_supervisor.values()) <= stream.clients, stream.outcomes


def test_an_inherited_socket_on_another_address_is_refused(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [{"name": "a", "hosts": ["a.localhost"], "program": "programs/a.py"}], {"a.py": PROGRAM})
    other = free_port()
    with socket.create_server(("127.0.0.1", other)) as listener:
        with pytest.raises(RuntimeError, match="exited with 1"):
            start_activated(d, listener)
    assert (f"none of the inherited sockets (fd 3: TCP 127.0.0.1:{other}) is the configured listen address "
            f"127.0.0.1:{d.port}") in d.log(), d.log()


def test_an_inherited_socket_that_is_not_listening_is_refused(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [{"name": "a", "hosts": ["a.localhost"], "program": "programs/a.py"}], {"a.py": PROGRAM})
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", d.port))
        with pytest.raises(RuntimeError, match="exited with 1"):
            start_activated(d, bound)
    assert f"the inherited socket fd 3: TCP 127.0.0.1:{d.port} is not a listening TCP socket" in d.log(), d.log()
