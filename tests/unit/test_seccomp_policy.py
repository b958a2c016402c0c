"""The seccomp policy, checked in the kernel: each test forks a child that loads the
filters as production does (``loading``, then ``request`` stacked on it), runs
probes and reports them as JSON through a pipe.

Children that probe what must be *denied* keep root's capabilities, so an EPERM
can only come from seccomp.  Children that probe what must *work* drop every
capability first, like the real host.  They stay uid 0 only because this
machine's Python lives under /root (mode 0700), which uid 65534 cannot read.
"""
from __future__ import annotations

import ctypes
import errno
import faulthandler
import json
import mmap
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from mayflyd.supervisor.seccomp_policy import ABORT_SIGNAL, SeccompFilters, build_filters, load_filter

pytestmark = pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64",
                                reason="the policy is written for Linux x86_64")

_CHILD_TIMEOUT = 60.0
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long

# x86_64 syscall numbers for the probes Python has no wrapper for
_NR_GETPID = 39
_NR_SOCKET = 41
_NR_CLONE = 56
_NR_PTRACE = 101
_NR_PERSONALITY = 135
_NR_MOUNT = 165
_NR_KEYCTL = 250
_NR_UNSHARE = 272
_NR_BPF = 321
_NR_USERFAULTFD = 323
_NR_IO_URING_SETUP = 425
_NR_CLONE3 = 435
_X32_SYSCALL_BIT = 0x4000_0000

_CLONE_NEWNS = 0x0002_0000
_CLONE_NEWUSER = 0x1000_0000
_PTRACE_ATTACH = 16
_F_SETOWN = 8
_F_SETPIPE_SZ = 1031
_TIOCSTI = 0x5412
_EPERM = "errno:EPERM"


# --- running a probe in a sandboxed child ---

@dataclass(frozen=True, slots=True)
class _Child:
    status: int  # as from waitpid
    report: dict[str, str] | None  # None if the child died before reporting
    stdout: bytes

    @property
    def killed_by(self) -> int | None:
        return os.WTERMSIG(self.status) if os.WIFSIGNALED(self.status) else None


def _syscall(nr: int, *args: int) -> int:
    """A raw syscall; raises OSError like the os module does."""
    ret = int(_LIBC.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args)))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _drop_capabilities() -> None:
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header = Header(0x2008_0522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (Data * 2)()  # all zero: no capability left
    if _LIBC.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def _outcome(probe: Callable[[], object]) -> str:
    try:
        probe()
    except OSError as e:
        return f"errno:{errno.errorcode.get(e.errno or 0, e.errno)}"
    except Exception as e:  # noqa: BLE001 - the parent asserts on the text
        return f"{type(e).__name__}:{e}"
    return "ok"


def _run_child(probes: Callable[[], dict[str, str]], filters: Sequence[bytes], *,
               drop_caps: bool = False) -> _Child:
    """Fork; the child loads `filters` in order, runs `probes`, reports; reap it."""
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        try:
            os.close(report_r)
            os.close(out_r)
            faulthandler.disable()  # some probes crash on purpose
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # and leave no core file
            os.dup2(out_w, 1)  # the probes print to fds 1 and 2: the parent checks
            os.dup2(out_w, 2)
            if drop_caps:
                _drop_capabilities()
            for bpf in filters:
                load_filter(bpf)
            report = probes()
            os.write(report_w, json.dumps(report).encode())
        except BaseException as e:  # noqa: BLE001 - report setup failures instead of hanging the parent
            os.write(report_w, json.dumps({"child setup": f"{type(e).__name__}:{e}"}).encode())
        finally:
            os._exit(0)
    os.close(report_w)
    os.close(out_w)
    try:
        data = _read_until_eof(report_r, pid)
        _, status = os.waitpid(pid, 0)
        stdout = _read_until_eof(out_r, pid)
    finally:
        os.close(report_r)
        os.close(out_r)
    return _Child(status, json.loads(data) if data else None, stdout)


def _read_until_eof(fd: int, pid: int) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + _CHILD_TIMEOUT
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail(f"sandboxed child {pid} hung")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


@pytest.fixture(scope="module")
def eperm() -> SeccompFilters:
    return build_filters(deny="eperm", network="none")


@pytest.fixture(scope="module")
def kill() -> SeccompFilters:
    return build_filters(deny="kill", network="none")


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A harmless process to aim ptrace at (attaching to pytest would stop it if the filter failed)."""
    pid = os.fork()
    if pid == 0:
        time.sleep(_CHILD_TIMEOUT)
        os._exit(0)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# --- what a request must still be able to do ---

_LAZY_MODULES = ("json", "re", "hashlib", "decimal", "fractions", "collections", "base64", "uuid",
                 "random", "struct", "zlib", "urllib.parse", "email.utils", "_strptime", "datetime",
                 "secrets", "zoneinfo", "traceback", "linecache", "tempfile", "shutil", "asyncio",
                 "sqlite3", "encodings.cp1252", "encodings.koi8_u")


def _forget_modules() -> None:
    """Make the imports below real: pytest may have imported some already."""
    for name in list(sys.modules):
        if any(name == m or name.startswith(m + ".") for m in _LAZY_MODULES):
            del sys.modules[name]


def _working_probes(data_dir: str) -> Callable[[], dict[str, str]]:
    def probes() -> dict[str, str]:
        import importlib

        _forget_modules()
        results: dict[str, str] = {}

        def check(name: str, probe: Callable[[], object]) -> None:
            results[name] = _outcome(probe)

        for module in _LAZY_MODULES:
            results[f"import {module}"] = _outcome(lambda: importlib.import_module(module))

        def hashes() -> None:
            import hashlib
            assert hashlib.sha256(b"abc").hexdigest().startswith("ba7816bf")
            assert hashlib.md5(b"abc").hexdigest() == "900150983cd24fb0d6963f7d28e17f72"
            hashlib.blake2b(b"abc").hexdigest()
            hashlib.sha3_256(b"abc").hexdigest()
        check("hashlib", hashes)

        def local_time() -> None:
            import datetime
            import zoneinfo
            datetime.datetime.now()
            datetime.datetime.now().astimezone()
            os.environ["TZ"] = "America/New_York"  # makes glibc read a zone file now
            time.tzset()
            time.localtime()
            datetime.datetime.now(zoneinfo.ZoneInfo("Europe/Paris"))
        check("datetime.now and local time", local_time)
        check("time.strptime", lambda: time.strptime("2024-02-29 13:45", "%Y-%m-%d %H:%M"))

        def numbers() -> None:
            import decimal
            import fractions
            assert str(decimal.Decimal(1) / decimal.Decimal(8)) == "0.125"
            assert fractions.Fraction(1, 3) + fractions.Fraction(1, 6) == fractions.Fraction(1, 2)
        check("decimal and fractions", numbers)

        def codecs_() -> None:
            import codecs
            codecs.lookup("cp1252")
            assert len("жук".encode("koi8_u")) == 3  # a codec nobody looked up before
        check("codecs.lookup", codecs_)

        def misc_stdlib() -> None:
            import base64
            import collections
            import email.utils
            import random
            import re
            import struct
            import urllib.parse
            import uuid
            import zlib
            assert json.loads(json.dumps({"a": [1, 2]})) == {"a": [1, 2]}
            assert re.compile(r"(\d+)-(\w+)").match("12-ab") is not None
            assert collections.Counter("abca")["a"] == 2
            assert base64.b64decode(base64.b64encode(b"xyz")) == b"xyz"
            assert uuid.uuid4().version == 4
            random.random()
            random.SystemRandom().random()
            assert struct.unpack("<I", struct.pack("<I", 7)) == (7,)
            assert zlib.decompress(zlib.compress(b"q" * 1000)) == b"q" * 1000
            assert urllib.parse.parse_qs("a=1&b=2") == {"a": ["1"], "b": ["2"]}
            email.utils.formatdate(localtime=True)
        check("json re collections base64 uuid4 random struct zlib urllib email", misc_stdlib)

        def randomness() -> None:
            import secrets
            assert len(os.urandom(32)) == 32
            secrets.token_hex(16)
        check("os.urandom and secrets", randomness)

        def files() -> None:
            assert open(os.path.join(data_dir, "data.txt")).read() == "payload\n"
            assert sorted(os.listdir(data_dir)) == ["data.txt", "mod.py"]
            os.stat(data_dir)
            list(os.scandir(data_dir))
        check("read and list the program directory", files)

        def big_buffers() -> None:
            buf = bytearray(50 * 1024 * 1024)
            buf.extend(b"x" * (10 * 1024 * 1024))  # grows: mremap
            del buf
            with mmap.mmap(-1, 8 * 1024 * 1024) as m:
                m[0:4] = b"abcd"
        check("50 MB bytearray and mmap", big_buffers)

        def tracebacks() -> None:
            import linecache
            import traceback
            linecache.clearcache()  # so the source file is read under the filter
            sys.path.insert(0, data_dir)
            mod = importlib.import_module("mod")
            try:
                mod.fail()
            except ValueError:
                text = traceback.format_exc()
            assert "raise ValueError('from the tenant')" in text, text
        check("traceback with source lines", tracebacks)

        def sleep() -> None:
            start = time.monotonic()
            time.sleep(0.01)
            assert time.monotonic() - start >= 0.009
        check("time.sleep", sleep)

        def printing() -> None:
            with open(1, "w", closefd=False) as out:
                print("to stdout", file=out)
            with open(2, "w", closefd=False) as err:
                print("to stderr", file=err)
        check("print to stdout and stderr", printing)

        def signals_and_timers() -> None:
            fired: list[int] = []
            signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGUSR1])
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            deadline = time.monotonic() + 5
            while not fired and time.monotonic() < deadline:
                time.sleep(0.005)
            signal.alarm(0)
            assert fired == [signal.SIGALRM]
        check("signal handlers and timers", signals_and_timers)

        def process_queries() -> None:
            os.getpid(), os.getppid(), os.getuid(), os.geteuid(), os.getgid(), os.getgroups()
            os.uname(), os.cpu_count(), os.sched_getaffinity(0), os.times(), os.getcwd()
            resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.getrusage(resource.RUSAGE_SELF)
        check("process queries", process_queries)

        def fds_and_polling() -> None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.dup2(r, 100)
            os.close(100)
            os.write(w, b"x")
            assert select.select([r], [], [], 1)[0] == [r]
            poller = select.poll()
            poller.register(r, select.POLLIN)
            assert poller.poll(1000)
            with select.epoll() as ep:
                ep.register(r, select.EPOLLIN)
                assert ep.poll(1)
            os.close(r)
            os.close(w)
        check("pipes, fcntl, dup, select/poll/epoll", fds_and_polling)

        def event_loop() -> None:
            import asyncio
            loop = asyncio.new_event_loop()  # socketpair + epoll
            try:
                loop.run_until_complete(asyncio.sleep(0.001))
            finally:
                loop.close()
        check("asyncio event loop", event_loop)

        def scratch_files() -> None:
            import shutil
            import tempfile
            with tempfile.TemporaryDirectory(dir=data_dir) as scratch:
                path = os.path.join(scratch, "f")
                with open(path, "w") as f:
                    f.write("x")
                shutil.copy(path, path + ".copy")
        check("tempfile and shutil where the mount is writable", scratch_files)

        def libraries() -> None:
            import sqlite3
            with sqlite3.connect(":memory:") as db:
                assert db.execute("select 1").fetchone() == (1,)
            assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 5)() == 5
            os.close(os.memfd_create("scratch"))
        check("sqlite3, ctypes callbacks, memfd", libraries)
        return results

    return probes


@pytest.fixture
def program_dir(tmp_path: Path) -> str:
    (tmp_path / "data.txt").write_text("payload\n")
    (tmp_path / "mod.py").write_text("def fail():\n    raise ValueError('from the tenant')\n")
    return str(tmp_path)


@pytest.mark.parametrize("deny", ["eperm", "kill"])
def test_request_phase_keeps_the_python_runtime_working(deny: str, program_dir: str) -> None:
    # Under "kill", any needed syscall missing from the allowlist would end the child with SIGSYS.
    filters = build_filters(deny=deny)
    child = _run_child(_working_probes(program_dir), [filters.loading, filters.request], drop_caps=True)
    assert child.killed_by is None, f"child killed by signal {child.killed_by}"
    assert child.report is not None
    failed = {name: result for name, result in child.report.items() if result != "ok"}
    assert not failed
    assert b"to stdout\n" in child.stdout and b"to stderr\n" in child.stdout


# --- what a request must not do ---

def _dangerous_calls(sleeper: int) -> dict[str, Callable[[], object]]:
    """Calls a request must not make.  Each is harmless should the filter let it through."""
    import subprocess
    import threading

    def new_namespace_clone() -> None:
        if _syscall(_NR_CLONE, _CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0) == 0:
            os._exit(0)  # only if the filter failed: we are the new child

    def mount() -> None:
        # a missing mountpoint: should the filter fail, this is ENOENT, not a mount
        if _LIBC.mount(b"none", b"/nonexistent-mayfly-probe", b"tmpfs", 0, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return {
        "fork": os.fork,
        "thread": lambda: threading.Thread(target=lambda: None).start(),
        "execv": lambda: os.execv("/bin/true", ["true"]),
        "subprocess": lambda: subprocess.run(["true"]),
        "clone with CLONE_NEWUSER": new_namespace_clone,
        "kill": lambda: os.kill(os.getppid(), 0),
        "ptrace": lambda: _syscall(_NR_PTRACE, _PTRACE_ATTACH, sleeper, 0, 0),
        "socket AF_INET": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
        "socket AF_NETLINK": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close(),
        # Not namespaced: it reaches the machine's hypervisor whatever the network namespace.
        "socket AF_VSOCK": lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close(),
        "socket AF_ALG": lambda: socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET).close(),
        # AF_VSOCK with upper bits set: the kernel truncates the int, the filter must not.
        "socket AF_VSOCK, upper bits": lambda: os.close(_syscall(_NR_SOCKET, (1 << 32) | socket.AF_VSOCK,
                                                                 socket.SOCK_STREAM, 0)),
        "socketpair AF_VSOCK": lambda: socket.socketpair(socket.AF_VSOCK, socket.SOCK_STREAM),
        "flock": _flock,
        "fcntl F_SETPIPE_SZ": _fcntl_setpipe_sz,
        "unshare": lambda: _syscall(_NR_UNSHARE, _CLONE_NEWNS),
        "mount": mount,
        "keyctl": lambda: _syscall(_NR_KEYCTL, 0, -3, 0),  # KEYCTL_GET_KEYRING_ID, session
        "bpf": lambda: _syscall(_NR_BPF, 0, 0, 0),
        "userfaultfd": lambda: _syscall(_NR_USERFAULTFD, 0),
        "io_uring_setup": lambda: _syscall(_NR_IO_URING_SETUP, 1, 0),
        "setuid": lambda: os.setuid(0),
        "setgroups": lambda: os.setgroups([]),
        "setrlimit": lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                resource.getrlimit(resource.RLIMIT_NOFILE)),
        "personality": lambda: _syscall(_NR_PERSONALITY, 0x0040000),  # ADDR_NO_RANDOMIZE
        "fcntl F_SETOWN": _fcntl_setown,
        "ioctl TIOCSTI": _ioctl_tiocsti,
        "clone3": lambda: _syscall(_NR_CLONE3, 0, 0),
    }


def _probe_calls(sleeper: int, names: Sequence[str]) -> Callable[[], dict[str, str]]:
    return lambda: {name: _outcome(_dangerous_calls(sleeper)[name]) for name in names}


def _fcntl_setown() -> None:
    import fcntl
    r, w = os.pipe()
    try:
        fcntl.fcntl(r, _F_SETOWN, os.getppid())  # would aim SIGIO at another process
    finally:
        os.close(r)
        os.close(w)


def _flock() -> None:
    import fcntl
    with open(__file__, "rb") as f:  # a file every tenant could open: a channel between them
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)


def _fcntl_setpipe_sz() -> None:
    import fcntl
    r, w = os.pipe()  # stderr is the host's pipe, shared by every request
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, 4096)
    finally:
        os.close(r)
        os.close(w)


def _ioctl_tiocsti() -> None:
    import fcntl
    r, w = os.pipe()  # not a terminal: ENOTTY should the filter let it through
    try:
        fcntl.ioctl(r, _TIOCSTI, b"x")
    finally:
        os.close(r)
        os.close(w)


_ALL_DANGEROUS = tuple(_dangerous_calls(0))


def test_request_phase_denies_with_eperm(eperm: SeccompFilters, sleeper: int) -> None:
    child = _run_child(_probe_calls(sleeper, _ALL_DANGEROUS), [eperm.loading, eperm.request])
    assert child.report is not None, f"child died: status {child.status:#x}"
    expected = {name: _EPERM for name in _ALL_DANGEROUS}
    expected["thread"] = "RuntimeError:can't start new thread"
    expected["clone3"] = "errno:ENOSYS"  # always: glibc falls back to clone(), which is checked
    expected["setrlimit"] = "ValueError:not allowed to raise maximum limit"  # Python's word for EPERM
    assert child.report == expected


@pytest.mark.parametrize("network", ["loopback", "full"])
def test_request_phase_with_network_allows_inet_sockets(network: str) -> None:
    filters = build_filters(network=network)

    def probes() -> dict[str, str]:
        def tcp_round_trip() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
                server.bind(("127.0.0.1", 0))
                server.listen(1)
                with socket.create_connection(server.getsockname(), timeout=5) as client:
                    conn, _ = server.accept()
                    with conn:
                        client.sendall(b"ping")
                        assert conn.recv(4) == b"ping"

        return {
            "tcp over loopback": _outcome(tcp_round_trip),
            "udp socket": _outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).close()),
            "inet6 socket": _outcome(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()),
            "raw socket": _outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                         socket.IPPROTO_ICMP)),
            "netlink socket": _outcome(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)),
            "packet socket": _outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
        }

    child = _run_child(probes, [filters.loading, filters.request])
    assert child.report == {
        "tcp over loopback": "ok", "udp socket": "ok", "inet6 socket": "ok",
        "raw socket": _EPERM, "netlink socket": _EPERM, "packet socket": _EPERM,
    }


def test_loopback_and_full_differ_only_in_the_network_namespace() -> None:
    # seccomp cannot see socket addresses: "full" vs "loopback" is decided by the netns.
    assert build_filters(network="full") == build_filters(network="loopback")
    assert build_filters(network="none").request != build_filters(network="loopback").request


@pytest.mark.parametrize("probe", ["kill", "socket", "fork"])
def test_kill_mode_ends_the_child_with_sigsys(kill: SeccompFilters, probe: str) -> None:
    calls: dict[str, Callable[[], object]] = {
        "kill": lambda: os.kill(os.getppid(), 0),
        "socket": lambda: socket.socket(socket.AF_INET),
        "fork": os.fork,
    }
    child = _run_child(lambda: {probe: _outcome(calls[probe])}, [kill.loading, kill.request])
    assert child.report is None and child.killed_by == signal.SIGSYS


@pytest.mark.parametrize("deny", ["eperm", "kill"])
def test_os_abort_still_ends_the_process(deny: str) -> None:
    # tgkill is denied, so abort() cannot raise SIGABRT; glibc then executes a
    # crashing instruction (or _exit(127)).  Under "kill" the tgkill itself kills.
    filters = build_filters(deny=deny)
    child = _run_child(lambda: {"abort": _outcome(os.abort)}, [filters.loading, filters.request])
    assert child.report is None
    if deny == "kill":
        assert child.killed_by == signal.SIGSYS
    else:
        assert child.killed_by is not None or os.WEXITSTATUS(child.status) == 127


# --- the loading phase ---

def test_loading_phase_allows_fork_and_threads(eperm: SeccompFilters) -> None:
    def probes() -> dict[str, str]:
        import threading

        def fork_and_reap() -> None:
            pid = os.fork()
            if pid == 0:
                os._exit(7)
            _, status = os.waitpid(pid, 0)
            assert os.WEXITSTATUS(status) == 7

        def thread() -> None:
            seen: list[int] = []
            t = threading.Thread(target=lambda: seen.append(1))
            t.start()  # clone3 gets ENOSYS, glibc falls back to clone
            t.join()
            assert seen == [1]

        return {
            "fork": _outcome(fork_and_reap),
            "thread": _outcome(thread),
            "personality query": _outcome(lambda: _syscall(_NR_PERSONALITY, 0xFFFF_FFFF)),
            "personality PER_LINUX": _outcome(lambda: _syscall(_NR_PERSONALITY, 0)),
        }

    child = _run_child(probes, [eperm.loading])
    assert child.report == {"fork": "ok", "thread": "ok", "personality query": "ok",
                            "personality PER_LINUX": "ok"}


def test_loading_phase_denies_the_dangerous_calls(eperm: SeccompFilters, sleeper: int) -> None:
    must_deny = ("ptrace", "mount", "unshare", "bpf", "keyctl", "userfaultfd", "io_uring_setup",
                 "socket AF_NETLINK", "socket AF_VSOCK", "socket AF_ALG", "socket AF_VSOCK, upper bits",
                 "socketpair AF_VSOCK", "clone with CLONE_NEWUSER", "personality", "ioctl TIOCSTI",
                 "socket AF_INET")  # network: none grants no internet family
    still_allowed = ("kill", "setrlimit", "flock", "fcntl F_SETPIPE_SZ")  # on_init may need them
    report = _run_child(_probe_calls(sleeper, must_deny + still_allowed + ("clone3",)),
                        [eperm.loading]).report
    assert report == {**{name: _EPERM for name in must_deny}, **{name: "ok" for name in still_allowed},
                      "clone3": "errno:ENOSYS"}


@pytest.mark.parametrize("network", ["loopback", "full"])
def test_loading_phase_grants_only_the_families_of_the_network(network: str, sleeper: int) -> None:
    # The internet families are what `network:` grants; vsock, netlink, packet, alg never.
    loading = build_filters(network=network).loading
    denied = ("socket AF_NETLINK", "socket AF_VSOCK", "socket AF_ALG", "socket AF_VSOCK, upper bits",
              "socketpair AF_VSOCK")
    report = _run_child(_probe_calls(sleeper, denied + ("socket AF_INET",)), [loading]).report
    assert report == {**{name: _EPERM for name in denied}, "socket AF_INET": "ok"}


# --- foreign ABIs ---

def _i386_getpid() -> None:
    # mov eax, 20 (getpid in the i386 table); int 0x80; ret
    code = b"\xb8\x14\x00\x00\x00\xcd\x80\xc3"
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    ctypes.CFUNCTYPE(ctypes.c_int)(address)()


@pytest.mark.parametrize("phase", ["loading", "request"])
@pytest.mark.parametrize("abi", ["x32", "i386"])
def test_foreign_abi_syscalls_kill_the_process(eperm: SeccompFilters, phase: str, abi: str) -> None:
    # Even in "eperm" mode: libseccomp's bad-architecture action, set to KILL_PROCESS.
    filters = [eperm.loading] if phase == "loading" else [eperm.loading, eperm.request]
    probe: Callable[[], object] = ((lambda: _syscall(_X32_SYSCALL_BIT | _NR_GETPID)) if abi == "x32"
                                   else _i386_getpid)
    child = _run_child(lambda: {abi: _outcome(probe)}, filters)
    assert child.report is None and child.killed_by == signal.SIGSYS


# --- the programs themselves ---

def test_programs_are_well_formed_bpf() -> None:
    for deny in ("eperm", "kill"):
        for network in ("none", "loopback", "full"):
            filters = build_filters(deny=deny, network=network)
            for bpf in (filters.loading, filters.request):
                assert len(bpf) % 8 == 0 and 0 < len(bpf) // 8 <= 4096


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        build_filters(deny="ignore")
    with pytest.raises(ValueError):
        build_filters(network="host")
    with pytest.raises(ValueError):
        load_filter(b"\x00" * 7)


# --- the reset engine ---

_NR_USERFAULTFD = 323
_UFFD_USER_MODE_ONLY = 1


def _userfaultfd(flags: int) -> None:
    os.close(_syscall(_NR_USERFAULTFD, flags | os.O_CLOEXEC))


def test_reset_loading_phase_allows_only_user_mode_userfaultfd() -> None:
    reset = build_filters(reset=True)

    def probes() -> dict[str, str]:
        return {"user mode only": _outcome(lambda: _userfaultfd(_UFFD_USER_MODE_ONLY)),
                "kernel faults too": _outcome(lambda: _userfaultfd(0))}

    assert _run_child(probes, [reset.loading], drop_caps=True).report == {
        "user mode only": "ok", "kernel faults too": _EPERM}
    # The request phase never creates one, and the fork engine's loading phase neither.
    assert _run_child(probes, [reset.loading, reset.request]).report == {
        "user mode only": _EPERM, "kernel faults too": _EPERM}
    fork = build_filters()
    assert _run_child(probes, [fork.loading]).report == {"user mode only": _EPERM, "kernel faults too": _EPERM}


@pytest.mark.parametrize("reset", [False, True])
def test_no_request_may_take_the_abort_signal(reset: bool) -> None:
    filters = build_filters(reset=reset)
    abort = signal.SIGRTMAX - 1
    assert abort == ABORT_SIGNAL

    def probes() -> dict[str, str]:
        return {"abort signal": _outcome(lambda: signal.signal(abort, lambda *_: None)),
                "SIGRTMAX": _outcome(lambda: signal.signal(signal.SIGRTMAX, lambda *_: None)),
                "SIGUSR1": _outcome(lambda: signal.signal(signal.SIGUSR1, lambda *_: None))}

    assert _run_child(probes, [filters.loading, filters.request]).report == {
        "abort signal": _EPERM, "SIGRTMAX": "ok", "SIGUSR1": "ok"}
