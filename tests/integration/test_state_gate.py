"""The reset engine's state gate (csrc/rewind/state_gate.h): the rewind puts
fds, timers, the alternate stack, umask and cwd back only when a request
changed them, and finds written pages with one scan unless a mapping may
have been replaced. Each case changes one piece of that state in a request
and nothing else, so that a change the gate missed would reach the next
request: the program reads its state without any call the gate traps."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from tests.daemon_harness import Daemon, reset_engine_missing
from tests.integration.conftest import SEED_PROGRAM, limits

pytestmark = pytest.mark.skipif(bool(reset_engine_missing()), reason="the kernel cannot run the reset engine")

QUIET = '''
import ctypes
import fcntl
import json
import mmap
import os
import signal
import socket
import struct
import termios

PAGE = mmap.PAGESIZE
BUF = mmap.mmap(-1, 16 * PAGE, flags=mmap.MAP_PRIVATE)  # private anonymous: tracked by the rewind
BUF[:8] = b"pristine"
BUF_ADDR = ctypes.addressof(ctypes.c_char.from_buffer(BUF))
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
ALT = ctypes.create_string_buffer(65536)
LOCKF = open(__file__, "rb")  # a file of the snapshot, no lock held


class StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def umask():
    with open("/proc/self/status") as status:
        return next(line.split()[1] for line in status if line.startswith("Umask:"))


def host_channel():
    """The worker's channel to its host: the first socket whose peer is the parent."""
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            if struct.unpack("3i", cred)[0] == os.getppid():
                return int(name)
        except OSError:
            pass
        finally:
            sock.detach()
    return -1


def locks():
    with open(f"/proc/self/fdinfo/{LOCKF.fileno()}") as info:
        return sum(line.startswith("lock:") for line in info)


def sndtimeo():
    with socket.socket(fileno=host_channel()) as sock:
        try:
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, 16).hex()
        finally:
            sock.detach()


def state():
    alt = StackT()
    libc.sigaltstack(None, ctypes.byref(alt))  # a query: the gate lets it pass
    return {
        "pid": os.getpid(), "cwd": os.getcwd(), "umask": umask(),
        "timer": signal.getitimer(signal.ITIMER_REAL)[0] > 0,
        "altstack": [alt.ss_sp or 0, alt.ss_size],
        "stdout_blocking": os.get_blocking(1), "stdin_inheritable": os.get_inheritable(0),
        "buf": BUF[:8].decode(errors="replace"),
        "timerslack": open("/proc/self/timerslack_ns").read().strip(),
        "locks": locks(), "host_channel_sndtimeo": sndtimeo(),
    }


def change(what):
    if what == "umask":
        os.umask(0o077)
    elif what == "chdir":
        os.chdir("/usr")
    elif what == "timer":
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.setitimer(signal.ITIMER_REAL, 100)
    elif what == "altstack":
        alt = StackT(ctypes.addressof(ALT), 0, len(ALT))
        assert libc.sigaltstack(ctypes.byref(alt), None) == 0
    elif what == "nonblock_fcntl":
        os.set_blocking(1, False)
    elif what == "nonblock_ioctl":
        fcntl.ioctl(1, termios.FIONBIO, struct.pack("i", 1))
    elif what == "cloexec_fcntl":
        fcntl.fcntl(0, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
    elif what == "cloexec_ioctl":
        fcntl.ioctl(0, termios.FIOCLEX)
    elif what == "map_fixed":
        # A fresh mapping over a tracked page, same size: the address space
        # looks the same, and the dirty tracker does not watch the new one.
        got = libc.mmap(BUF_ADDR, PAGE, mmap.PROT_READ | mmap.PROT_WRITE,
                        mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x10, -1, 0)
        assert got == BUF_ADDR, ctypes.get_errno()
        ctypes.memmove(BUF_ADDR, b"leaked!!", 8)
    elif what == "timerslack":
        with open("/proc/self/timerslack_ns", "w") as slack:
            slack.write("12345")
    elif what == "ofd_lock":
        fcntl.fcntl(LOCKF, fcntl.F_OFD_SETLK, struct.pack("hhqqixxxx", fcntl.F_RDLCK, 0, 0, 0, 0))
    elif what == "posix_lock":
        fcntl.lockf(LOCKF, fcntl.LOCK_SH | fcntl.LOCK_NB)
    elif what == "host_channel_option":
        with socket.socket(fileno=host_channel()) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("qq", 7, 0))
            sock.detach()
    else:
        raise ValueError(what)


def on_client_request(request):
    found = state()
    if request.query:
        change(request.query)
        found["changed"] = state()
    return json.dumps(found)
'''

CHANGES = ["umask", "chdir", "timer", "altstack", "nonblock_fcntl", "nonblock_ioctl", "cloexec_fcntl",
           "cloexec_ioctl", "map_fixed", "timerslack", "ofd_lock", "posix_lock", "host_channel_option"]
# flock is denied in a request (the request filter): the gate's trap of it
# then only returns that EPERM.
# What cannot be put back in place: the worker is replaced instead.
REPLACED = {"map_fixed", "host_channel_option"}


@pytest.fixture(scope="module")
def gated_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    workdir = tmp_path_factory.mktemp("gate")
    (workdir / "programs").mkdir()
    shutil.copy(SEED_PROGRAM, workdir / "programs" / "hello.py")
    tenants = [{"name": "quiet", "hosts": ["quiet.localhost"], "program": "programs/quiet.py", "engine": "reset",
                "pool": 1, "limits": limits(request_timeout_ms=2000)}]
    d = Daemon(workdir, tenants, {"quiet.py": QUIET})
    d.engine = "reset"
    d.start()
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, d.log()[-5000:]
        assert d.cgroup_dirs() == [], "cgroups left behind"


def state(d: Daemon, query: str = "") -> dict[str, object]:
    reply = d.get("quiet.localhost", "/?" + query if query else "/")
    assert reply.status == 200, (reply.status, reply.body[:500])
    found: dict[str, object] = json.loads(reply.body)
    return found


@pytest.mark.parametrize("what", CHANGES)
def test_a_change_the_gate_sees_is_rewound(gated_daemon: Daemon, what: str) -> None:
    before = state(gated_daemon)
    changed = state(gated_daemon, what)
    assert changed["pid"] == before["pid"]
    inner = changed["changed"]
    assert isinstance(inner, dict) and {k: v for k, v in inner.items() if k != "pid"} != \
        {k: v for k, v in before.items() if k != "pid"}, "the request changed nothing: the case tests nothing"
    after = [state(gated_daemon) for _ in range(3)]
    for found in after:
        assert {k: v for k, v in found.items() if k != "pid"} == {k: v for k, v in before.items() if k != "pid"}
    if what not in REPLACED:
        assert {found["pid"] for found in after} == {before["pid"]}, gated_daemon.log()[-2000:]

