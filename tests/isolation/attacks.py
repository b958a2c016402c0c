"""A hostile tenant program: every path is one attack on a wall.

Each attack returns what it observed, so that the test can assert the exact
outcome: "ok" plus data when the attempt went through, or the exception the
program saw ("PermissionError EPERM", "FileNotFoundError ENOENT", ...).
Bombs are capped so that a missing wall fails the test, not the machine.
"""
import ctypes
import errno
import json
import os
import random
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# x86_64 system call numbers for calls Python has no wrapper for.
SYS = {"ptrace": 101, "process_vm_readv": 310, "unshare": 272, "mount": 165, "keyctl": 250, "bpf": 321,
       "userfaultfd": 323, "io_uring_setup": 425, "setns": 308, "perf_event_open": 298}

STATE = {"counter": 0}
GLOBAL_LIST = []


def syscall(name, *args):
    ctypes.set_errno(0)
    result = libc.syscall(SYS[name], *[ctypes.c_long(a) for a in args])
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def observed(action):
    try:
        result = action()
    except BaseException as exc:  # noqa: BLE001 - the outcome is what we report
        code = getattr(exc, "errno", None)
        name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
        return f"{type(exc).__name__} {name}".strip()
    return f"ok {result}" if result is not None else "ok"


def read(path):
    with open(path, "rb") as f:
        return len(f.read())


def write(path):
    with open(path, "w") as f:
        f.write("left behind")


def fork_bomb():
    for _ in range(64):  # capped: a missing wall fails the test, not the machine
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    return "forked 64"


def thread_left_running():
    threading.Thread(target=lambda: __import__("time").sleep(60), daemon=True).start()


def normal_program():
    """What an ordinary program does in a request must keep working under the walls."""
    import codecs
    import datetime
    import decimal
    import hashlib
    import re
    import time
    import uuid
    parsed = time.strptime("2026-11-28", "%Y-%m-%d")
    digest = hashlib.sha256(b"x").hexdigest()[:8] + hashlib.md5(b"x").hexdigest()[:4]
    codecs.lookup("cp1252")
    assert re.match(r"\d+", "123")
    total = decimal.Decimal("1.10") + decimal.Decimal("2.20")
    now = datetime.datetime.now().year
    here = sorted(os.listdir(os.path.dirname(__file__)))
    with open(__file__, "rb") as f:
        f.read(10)
    return json.dumps({"year": parsed.tm_year, "digest": digest, "decimal": str(total), "now": now > 2000,
                       "urandom": len(os.urandom(16)), "uuid": len(str(uuid.uuid4())), "listing": here})


def spin():
    while True:
        pass


def deep_c_recursion():
    """Recursion in C (comparing two deeply nested lists) past the C stack:
    SIGSEGV on 3.11; 3.12 and newer stop it with their own C recursion limit.
    (Not repr(): its per-level cycle check is quadratic, and the CPU limit
    would end the request before the stack does.)"""
    sys.setrecursionlimit(10 ** 8)
    left, right = [], []
    for _ in range(300_000):
        left, right = [left], [right]
    return left == right


def _sockets_by_peer():
    """This process's Unix sockets: fd -> the pid of the peer (0 outside our pid namespace)."""
    found = {}
    for fd in range(3, 256):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
        except OSError:
            continue
        dup = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            found[fd] = struct.unpack("3i", dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        finally:
            dup.close()
    return found


def forge_for_request(request):
    other = request.id + 1
    head = struct.pack("=IIQ", 200, 0, 6)
    for fd in request_channels():
        for msg_type, payload in [(48, head), (49, b"forged"), (50, b"")]:
            os.write(fd, struct.pack("=IHHQII", 0x594C464D, msg_type, 1, other, len(payload), 0) + payload)
    return None


def worker_channel():
    """In a reset-engine worker, its channel to the host (its parent); in a fork sandbox, none."""
    for fd, peer in _sockets_by_peer().items():
        if peer == os.getppid():
            return fd
    return request_channels()[0]


def forge_done(request):
    """Tell the host this request is done while it is not: the host must not believe it."""
    fd = worker_channel()
    done = struct.pack("=IIIIII", 0, 0, 1, 1, 12345, 0)
    os.write(fd, struct.pack("=IHHQII", 0x594C464D, 65, 1, request.id, len(done), 0) + done)
    return None


def request_channels():
    """The sockets this request could reach the front end by: in a fork
    sandbox, its own socketpair end; in a reset worker, its persistent
    request channels, one per front-end loop (made by the host after its
    own channel to the worker, so at higher fds; all have the host as peer)."""
    by_peer = _sockets_by_peer()
    from_host = sorted(fd for fd, peer in by_peer.items() if peer == os.getppid())
    if len(from_host) > 1:
        return from_host[1:]
    return [fd for fd, peer in by_peer.items() if peer != os.getppid()]


def _frame(msg_type, req_id, payload):
    return struct.pack("=IHHQII", 0x594C464D, msg_type, 1, req_id, len(payload), 0) + payload


def _answer(req_id, text):
    """A whole answer (RESP_WHOLE) for req_id, as the worker would write it."""
    body = text.encode()
    return _frame(51, req_id, struct.pack("=IIQ", 200, 0, len(body)) + body)


def on_each_channel(action):
    """action(socket) on a duplicate of every request channel; what each did."""
    seen = []
    for fd in request_channels():
        sock = socket.socket(fileno=os.dup(fd))
        try:
            seen.append(observed(lambda: action(sock)))
        finally:
            sock.detach() if sock.fileno() < 0 else sock.close()
    return seen


def channel_junk(request):
    """Answer early (a whole answer of its own id), then leave frames on the
    channel for the requests after it: answers for the next ids, another
    answer of its own, garbage. Then the real answer goes after them."""
    for fd in request_channels():
        os.write(fd, _answer(request.id, "early"))
        for other in range(request.id + 1, request.id + 4):
            os.write(fd, _answer(other, "stolen"))
        os.write(fd, _answer(request.id, "junk-after"))
        os.write(fd, b"garbage that is no frame")
    return "late"


def channel_linger(request):
    """A forged completion: answer at once, then keep running."""
    for fd in request_channels():
        os.write(fd, _answer(request.id, "early"))
    time.sleep(1.0)
    return "late"


def channel_scm_dup(touch):
    """A duplicate of the channel by SCM_RIGHTS over a socketpair of the
    request's own; touch: then set an option through the duplicate."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(mine, [b"x"], request_channels())
    _, fds, _, _ = socket.recv_fds(theirs, 16, 16)
    if touch:
        for fd in fds:
            socket.socket(fileno=fd).setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 1000))
    return f"{len(fds)} duplicates"


def _drop_all_filter(sock):
    """SO_ATTACH_FILTER with a classic BPF program that drops every packet."""
    program = (ctypes.c_uint64 * 1)(0x0000000000000006)  # BPF_RET | BPF_K, k = 0
    fprog = struct.pack("HxxxxxxQ", 1, ctypes.addressof(program))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_ATTACH_FILTER, fprog)


def _open_fds():
    """(fd, what it points at) for this process's fds from 3 up."""
    for fd in range(3, 256):
        try:
            yield fd, os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue


def close_tracker():
    """Reset engine: swap the worker's userfaultfd for an eventfd at the same
    number, so that nothing is tracked any more. The rewind must notice."""
    for fd, target in _open_fds():
        if target == "anon_inode:[userfaultfd]":
            os.close(fd)
            replacement = os.eventfd(0)
            return f"replaced fd {fd} with {replacement}"
    return "no userfaultfd"


HIDDEN = []


def hide_a_write():
    """Reset engine: write a global, then mark its page clean again, so that
    the rewind would not restore it: through the worker's userfaultfd
    (UFFDIO_WRITEPROTECT) and through its pagemap fd (PAGEMAP_SCAN with
    PM_SCAN_WP_MATCHING). Both must be refused."""
    import fcntl
    HIDDEN.append("from an earlier request")
    page = id(HIDDEN) & ~4095
    tried = {}
    for fd, target in _open_fds():
        if target == "anon_inode:[userfaultfd]":
            arg = bytearray(struct.pack("QQQ", page, 4096, 1))  # range, UFFDIO_WRITEPROTECT_MODE_WP
            tried["UFFDIO_WRITEPROTECT"] = observed(lambda: fcntl.ioctl(fd, 0xC018AA06, arg))
        elif target.endswith("/pagemap"):
            # size, flags=WP_MATCHING, start, end, walk_end, vec, vec_len, max_pages,
            # category_inverted, category_mask=WRITTEN, anyof, return_mask=WRITTEN
            arg = bytearray(struct.pack("12Q", 96, 1, page, page + 4096, 0, 0, 0, 0, 0, 2, 0, 2))
            tried["PAGEMAP_SCAN"] = observed(lambda: fcntl.ioctl(fd, 0xC0606610, arg))
    return json.dumps(tried)


def spin_with_signals_blocked():
    """Block every signal that can be blocked, then spin: an abort cannot land."""
    signal.pthread_sigmask(signal.SIG_BLOCK, set(range(1, signal.NSIG)) - {signal.SIGKILL, signal.SIGSTOP})
    spin()


def garbage(request):
    for fd in request_channels():
        os.write(fd, b"\xff" * 40)
    return None


def processes():
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    cmdlines = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdlines.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return json.dumps({"pids": pids, "daemon_visible": any("mayflyd serve" in c for c in cmdlines)})


ATTACKS = {
    "/normal": lambda r: normal_program(),
    # the channel to the front end
    "/channel/shutdown": lambda r: on_each_channel(lambda s: s.shutdown(socket.SHUT_RDWR)),
    "/channel/options": lambda r: on_each_channel(
        lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 1000))),
    "/channel/filter": lambda r: on_each_channel(_drop_all_filter),
    "/channel/scm-dup-touch": lambda r: channel_scm_dup(True),
    "/channel/scm-dup-keep": lambda r: channel_scm_dup(False),
    "/channel/close": lambda r: [os.close(fd) for fd in request_channels()] and "closed",
    "/channel/dup2": lambda r: [os.dup2(os.open("/dev/null", os.O_RDONLY), fd) for fd in request_channels()]
    and "replaced",
    # reading secrets
    "/read/shadow": lambda r: read("/etc/shadow"),
    "/read/path": lambda r: read(r.query),
    "/read/proc-list": lambda r: processes(),
    "/read/host-environ": lambda r: read("/proc/1/environ"),
    "/read/own-environ": lambda r: json.dumps(sorted(os.environ)),
    "/read/own-program": lambda r: read(__file__),
    # writing
    "/write/tmp": lambda r: write("/tmp/left-behind"),
    "/write/program-dir": lambda r: write(os.path.join(os.path.dirname(__file__), "x")),
    "/write/root": lambda r: write("/left-behind"),
    "/write/dev-shm": lambda r: write("/dev/shm/left-behind"),
    "/check/left-behind": lambda r: [p for p in ("/tmp/left-behind", "/left-behind", "/dev/shm/left-behind")
                                     if os.path.exists(p)],
    # network
    "/net/daemon-port": lambda r: socket.create_connection(("127.0.0.1", int(r.query)), timeout=2).close(),
    "/net/other-port": lambda r: socket.create_connection(("127.0.0.1", 22), timeout=2).close(),
    "/net/dns": lambda r: socket.getaddrinfo("example.com", 80),
    "/net/bind": lambda r: socket.socket().bind(("0.0.0.0", 8081)),
    "/net/raw": lambda r: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    "/net/netlink": lambda r: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "/net/unix-abstract": lambda r: socket.socket(socket.AF_UNIX).connect("\0mayflyd-nowhere"),
    # processes
    "/proc/exec-sh": lambda r: os.execv("/bin/sh", ["sh", "-c", "true"]),
    "/proc/subprocess": lambda r: subprocess.run(["true"]).returncode,
    "/proc/fork": lambda r: os.fork(),
    "/proc/fork-bomb": lambda r: fork_bomb(),
    "/proc/thread": lambda r: thread_left_running(),
    "/proc/kill-all": lambda r: os.kill(-1, signal.SIGKILL),
    "/proc/kill-parent": lambda r: os.kill(os.getppid() or 1, signal.SIGKILL),
    "/proc/kill-host": lambda r: os.kill(1, signal.SIGKILL),
    "/proc/ptrace": lambda r: syscall("ptrace", 16, 1, 0, 0),  # PTRACE_ATTACH to the host
    "/proc/process-vm-readv": lambda r: syscall("process_vm_readv", 1, 0, 0, 0, 0, 0),
    "/proc/setuid": lambda r: os.setuid(0),
    "/proc/unshare": lambda r: syscall("unshare", 0x10000000),  # CLONE_NEWUSER
    "/proc/setns": lambda r: syscall("setns", 0, 0),
    "/proc/mount": lambda r: syscall("mount", 0, 0, 0, 0, 0),
    "/proc/keyctl": lambda r: syscall("keyctl", 0, 0, 0, 0, 0),
    "/proc/bpf": lambda r: syscall("bpf", 0, 0, 0),
    "/proc/userfaultfd": lambda r: syscall("userfaultfd", 0),
    "/proc/io-uring": lambda r: syscall("io_uring_setup", 1, 0),
    "/proc/perf-event": lambda r: syscall("perf_event_open", 0, 0, -1, -1, 0),
    # resources
    "/res/memory-bomb": lambda r: len(bytearray(2 * 1024 ** 3)),
    "/res/memory-creep": lambda r: len([bytearray(1024 * 1024) for _ in range(4096)]),
    "/res/infinite-loop": lambda r: spin(),
    "/res/infinite-loop-signals-blocked": lambda r: spin_with_signals_blocked(),
    "/reset/close-tracker": lambda r: close_tracker(),
    "/reset/hide-write": lambda r: hide_a_write(),
    "/reset/hidden": lambda r: str(len(HIDDEN)),
    "/res/deep-recursion": lambda r: deep_c_recursion(),
    "/res/print-flood": lambda r: [sys.stdout.write("x" * 1023 + "\n") for _ in range(100 * 1024)] and "done",
    "/res/open-files": lambda r: len([open(__file__) for _ in range(100000)]),
    # state left behind (set, then the next request checks)
    "/state/set": None,
    "/state/check": None,
}


def set_state():
    STATE["counter"] += 1
    GLOBAL_LIST.append("dirty")
    sys.modules["json"].dumps = lambda *a, **k: "patched"
    os.environ["LEFT_BEHIND"] = "1"
    os.chdir("/usr")
    os.umask(0o777)
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.alarm(1)
    random.seed(1234)
    return "dirtied"


def kernel_signal_masks():
    """The kernel's caught and ignored signals: Python's handler table is
    rewound with the heap, the dispositions must be too."""
    with open("/proc/self/status") as status:
        return [line.split()[1] for line in status if line.startswith(("SigIgn", "SigCgt"))]


def check_state():
    handler = signal.getsignal(signal.SIGTERM)
    return json.dumps({
        "kernel_signals": kernel_signal_masks(),
        "counter": STATE["counter"], "list": GLOBAL_LIST, "json_patched": json.dumps([1]) == "patched",
        "env": os.environ.get("LEFT_BEHIND"), "cwd": os.getcwd(), "umask": os.umask(0o022),
        "sigterm_default": handler == signal.SIG_DFL, "alarm_pending": signal.alarm(0),
        "random": random.random(),
    })


def on_client_request(request):
    if request.path == "/state/set":
        return set_state()
    if request.path == "/state/check":
        return check_state()
    if request.path == "/protocol/forge":
        return forge_for_request(request)
    if request.path == "/channel/junk":
        return channel_junk(request)
    if request.path == "/channel/linger":
        return channel_linger(request)
    if request.path == "/protocol/forge-done":
        return forge_done(request)
    if request.path == "/protocol/garbage":
        return garbage(request)
    if request.path == "/protocol/inject-content-type":
        return "text/plain\r\nSet-Cookie: owned=1", "x"
    if request.path == "/protocol/huge-response":
        return b"x" * (1024 ** 3)
    if request.path == "/protocol/over-max-response":
        return b"x" * (20 * 1024 * 1024)
    attack = ATTACKS.get(request.path)
    if attack is None:
        return 404, {}, "no such attack"
    return observed(lambda: attack(request))


# ---- stdio, locks, address families, headers (tests/isolation/test_walls_more.py) ----

def stdio_flags():
    """O_NONBLOCK on fds 0-2, as this request sees them."""
    import fcntl
    return json.dumps([bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK) for fd in (0, 1, 2)])


def stdio_set_nonblocking_and_hold(seconds):
    """Set O_NONBLOCK on fds 0-2, then stay: a concurrent request must not see it."""
    for fd in (0, 1, 2):
        os.set_blocking(fd, False)
    time.sleep(seconds)
    return stdio_flags()


def pipe_size(fd):
    import fcntl
    return fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the pipe itself, shared by every request


def flock_shared_file():
    import fcntl
    with open(os.__file__, "rb") as f:  # /usr: every tenant can open it
        fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)


MORE_ATTACKS = {
    "/stdio/flags": lambda r: stdio_flags(),
    "/stdio/set-nonblocking": lambda r: stdio_set_nonblocking_and_hold(float(r.query or 0)),
    "/stdio/pipe-size": lambda r: pipe_size(2),
    "/lock/flock-usr": lambda r: flock_shared_file(),
    "/net/vsock": lambda r: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close(),
}
# Answers the program gives as they are (not an observed outcome): headers
# with control bytes, which the front end must turn into a 502.
RAW_ANSWERS = {
    "/protocol/header-ctl-01": lambda r: (200, [("X-Bad", "a\x01b")], "x"),
    "/protocol/header-ctl-7f": lambda r: (200, [("X-Bad", "a\x7fb")], "x"),
    "/protocol/header-ctl-1f": lambda r: (200, [("X-Bad", "a\x1fb")], "x"),
    "/protocol/header-name-space": lambda r: (200, [("X Bad", "v")], "x"),
    "/protocol/header-tab-ok": lambda r: (200, [("X-Good", "a\tb")], "x"),
}
_on_client_request_before = on_client_request


def on_client_request(request):  # extends the one above
    if request.path in RAW_ANSWERS:
        return RAW_ANSWERS[request.path](request)
    if request.path in MORE_ATTACKS:
        return observed(lambda: MORE_ATTACKS[request.path](request))
    return _on_client_request_before(request)
