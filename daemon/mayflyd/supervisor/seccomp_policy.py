"""The seccomp-BPF policy of a tenant sandbox, built here and loaded by the C helper.

Two filters, both exported as raw BPF (an array of 8-byte ``struct sock_filter``)
so the C side needs no libseccomp (docs/design.md section 6):

* ``loading``: default allow, deny list.  The host loads it just before it
  imports the tenant program and runs ``on_init()``.  It removes what a
  powerless, namespaced process still should not touch (kernel attack surface,
  namespaces, mounts, keyrings, tracing), while ``on_init`` keeps fork/threads.
* ``request``: default deny, allowlist.  Each fork()ed request child stacks it
  on top of ``loading`` right before tenant code runs: a single-threaded
  CPython handler that may import lazily, read files, allocate, sleep, print and
  talk over the sockets it was given, and nothing else.  The kernel applies the
  stricter verdict of the two filters.

Both filters check the architecture: any syscall from a foreign ABI (i386
``int 0x80``) or with the x32 bit (``__X32_SYSCALL_BIT``) kills the process,
whatever the deny mode.  ``clone3`` always fails with ENOSYS: its flags live in
memory that seccomp cannot read, and glibc then falls back to ``clone``, whose
flags it can.

Policy choices:

* network ``none``: no ``socket()`` at all; ``socketpair(AF_UNIX)`` only (an
  anonymous pair reaches nobody; asyncio's event loop needs one).
  ``loopback``/``full``: also ``socket(AF_INET/AF_INET6, SOCK_STREAM/SOCK_DGRAM)``
  plus connect/bind/listen/accept.  The two are the same here: seccomp cannot
  read addresses, the tenant's network namespace decides what is reachable.
  Both filters allow only these families (the loading filter too, so that
  on_init() cannot open AF_VSOCK, which no namespace isolates and which
  reaches the machine's hypervisor, nor AF_NETLINK, AF_PACKET, AF_ALG, ...).
* memfd_create allowed in a request (anonymous memory, charged to the cgroup
  like any other, gone with the sandbox or the rewind; exec is denied
  anyway); memfd_secret denied.  A memfd or any other writable shared
  memory that on_init() leaves behind makes the load fail instead
  (host/sandbox_host.py): every request would share it.  SysV shm
  (shmget/shmat) is denied in a request: the segment would outlive it.
* flock and F_SETPIPE_SZ denied in a request: a flock on a file every
  tenant can open (/usr) is a channel between tenants, and the pipe size
  of stdout/stderr belongs to the host, shared by every request.  fcntl
  record locks stay (SQLite takes them, even read-only): see
  docs/design.md, "Shared memory, stdio and covert channels".
* alarm/setitimer/timerfd_* allowed: they signal only this process and die
  with it (fork mode starts each request from a fresh child). POSIX timers
  (timer_create/settime/delete) are denied: the sandbox's CPU budget is one,
  armed before this filter, and must not be disarmed.
* ioctl and fcntl: only listed commands, so F_SETOWN/F_SETSIG/FIOSETOWN/
  SIOCSPGRP (which route SIGIO to any pid of the same uid, i.e. a sibling
  sandbox) and TIOCSTI/TIOCLINUX are denied.
* prlimit64 only queries this process (pid 0, new_limit NULL).
* landlock allowed in both phases: it can only take rights away.
* The reset engine (``reset=True``): the loading filter lets the host's
  workers create their userfaultfd (user-mode faults only), and the request
  filter lets the rewinder run ``PAGEMAP_SCAN``, which each worker narrows
  further to its rewinder's own syscall instruction (csrc/rewind/pagemap_gate.c).
  No userfaultfd ioctl is allowed: ``UFFDIO_WRITEPROTECT`` would let a
  request mark a written page clean.
* Signal ``SIGRTMAX - 1`` is the reset engine's abort signal: no request may
  change its disposition (``rt_sigaction`` is allowed for every other signal).
  Each reset worker also stacks the sigaction gate (csrc/rewind/sigaction_gate.h),
  which routes a request's disposition changes through its SIGSYS handler
  and refuses SIGSYS itself.

A third filter, ``build_front_filter()``, confines mayflyd-front (an
allowlist, see its docstring): it parses every client's bytes, so it keeps
only what an epoll server needs once its sockets exist.
"""

from __future__ import annotations

import ctypes
import errno
import tempfile
from dataclasses import dataclass
from typing import Final

import pyseccomp as _sc  # no stubs (ignore_missing_imports), wrapped below

__all__ = [
    "DENY_ACTIONS",
    "NETWORK_MODES",
    "SeccompFilters",
    "build_filters",
    "build_front_filter",
    "load_filter",
]

DENY_ACTIONS: Final = ("eperm", "kill")
NETWORK_MODES: Final = ("none", "loopback", "full")

_BPF_INSN_SIZE: Final = 8  # sizeof(struct sock_filter)
_BPF_MAXINSNS: Final = 4096  # the kernel refuses longer programs


@dataclass(frozen=True, slots=True, kw_only=True)
class SeccompFilters:
    """Raw BPF programs, ready for prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)."""

    loading: bytes  # default allow, deny list: host, before the tenant's import and on_init()
    request: bytes  # default deny, allowlist: each request child, stacked on `loading`


# --- constants (x86_64; build_filters refuses any other native architecture) ---

_EQ: Final[int] = _sc.EQ
_GT: Final[int] = _sc.GT
_MASKED_EQ: Final[int] = _sc.MASKED_EQ
_ALLOW: Final[int] = _sc.ALLOW
_KILL_PROCESS: Final[int] = _sc.KILL_PROCESS
_ARCH_X86_64: Final[int] = _sc.Arch.X86_64

_LOW32: Final = 0xFFFF_FFFF  # int/unsigned int arguments: the kernel ignores the upper half

_AF_UNIX: Final = 1
_AF_INET: Final = 2
_AF_INET6: Final = 10
_AF_MAX: Final = 46  # AF_MCTP + 1, Linux 6.x; every family from 0 to here is checked
_SOCK_STREAM: Final = 1
_SOCK_DGRAM: Final = 2
_SOCK_TYPE_MASK: Final = 0xF  # the rest of `type` is SOCK_NONBLOCK | SOCK_CLOEXEC

_CLONE_NAMESPACE_FLAGS: Final = (
    0x0002_0000,  # CLONE_NEWNS
    0x0200_0000,  # CLONE_NEWCGROUP
    0x0400_0000,  # CLONE_NEWUTS
    0x0800_0000,  # CLONE_NEWIPC
    0x1000_0000,  # CLONE_NEWUSER
    0x2000_0000,  # CLONE_NEWPID
    0x4000_0000,  # CLONE_NEWNET
)

_TIOCSTI: Final = 0x5412  # fakes terminal input: a classic escape
_TIOCLINUX: Final = 0x541C  # console selection/paste, same problem

_UFFD_USER_MODE_ONLY: Final = 1
_PAGEMAP_SCAN: Final = 0xC060_6610        # _IOWR('f', 16, struct pm_scan_arg)
ABORT_SIGNAL: Final = 63  # SIGRTMAX - 1: MF_ABORT_SIGNAL in csrc/engine/reset_worker.h
_NSIG: Final = 65  # signals 1..64

_PERSONALITY_QUERY: Final = 0xFFFF_FFFF
_PER_LINUX: Final = 0

# Syscalls newer than the libseccomp we run on (2.5.4 knows up to 453).
_X86_64_NUMBERS: Final[dict[str, int]] = {"open_tree_attr": 467}

# Denied while loading (and, being absent from the allowlist, while serving).
_LOADING_DENY: Final = (
    # other processes' memory and tracing
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "process_madvise", "perf_event_open",
    # mounts, namespaces and roots
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "move_mount", "open_tree", "open_tree_attr", "fsopen", "fsmount", "fsconfig",
    "fspick", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    # large kernel attack surface with no use in a request handler
    "keyctl", "add_key", "request_key", "bpf",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "modify_ldt", "lookup_dcookie", "fanotify_init", "memfd_secret",
    # machine-wide state
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "quotactl", "quotactl_fd", "iopl", "ioperm",
    "syslog", "vhangup", "uselib", "mknod", "mknodat",
    # NUMA placement: lets one tenant pin or move memory the others share
    "set_mempolicy", "set_mempolicy_home_node", "mbind", "migrate_pages", "move_pages",
)

# Allowed unconditionally while serving a request.
_REQUEST_ALLOW: Final = (
    # fd I/O (sockets included: the request arrives on one the helper already holds)
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev",
    "preadv2", "pwritev2", "lseek", "close", "close_range", "dup", "dup2", "dup3",
    "pipe", "pipe2", "sendfile", "copy_file_range", "fadvise64",
    "recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "shutdown",
    "getsockname", "getpeername", "getsockopt", "setsockopt",
    "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl",
    "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd2",
    # files: imports, tracebacks, the program's own directory
    "open", "openat", "openat2", "stat", "fstat", "lstat", "newfstatat", "statx",
    "statfs", "fstatfs", "access", "faccessat", "faccessat2", "readlink",
    "readlinkat", "getdents64", "getcwd", "chdir", "fchdir", "umask",
    "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
    # writes: only where the mount layer gives a writable /tmp (tempfile, shutil)
    "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat", "rename", "renameat",
    "renameat2", "ftruncate", "fsync", "fdatasync", "chmod", "fchmod",
    "fchmodat", "fchmodat2", "utimensat",
    # memory
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync",
    "membarrier", "memfd_create",
    # the C runtime of a (single-threaded) process
    "futex", "sched_yield", "set_robust_list", "rseq", "sched_getaffinity",
    "sched_getparam", "sched_getscheduler", "sched_get_priority_max",
    "sched_get_priority_min", "getcpu", "getrandom", "exit", "exit_group",
    "restart_syscall",
    # signals delivered to this process only
    "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigpending", "rt_sigtimedwait", "sigaltstack",
    # time and timers (they signal only this process and die with it)
    "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
    "gettimeofday", "time", "alarm", "setitimer", "getitimer", "timer_gettime",
    "timer_getoverrun", "timerfd_create", "timerfd_settime", "timerfd_gettime",
    # identity and resource queries
    "getpid", "gettid", "getppid", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "getgroups", "getpgrp", "getpgid", "getsid",
    "capget", "uname", "sysinfo", "getrusage", "times", "getrlimit", "getpriority",
    # self-restriction only
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
)

# fcntl commands allowed while serving.  Absent on purpose: F_SETOWN(8),
# F_SETSIG(10), F_SETOWN_EX(15) (send signals to another pid), F_SETLEASE,
# F_NOTIFY (signal-driven too), F_SETPIPE_SZ (1031: resizes the pipe itself,
# which for stdout and stderr is the host's, shared by every request).
_REQUEST_FCNTL: Final = (
    0,     # F_DUPFD
    1,     # F_GETFD
    2,     # F_SETFD
    3,     # F_GETFL
    4,     # F_SETFL
    5,     # F_GETLK
    6,     # F_SETLK
    7,     # F_SETLKW
    9,     # F_GETOWN
    11,    # F_GETSIG
    16,    # F_GETOWN_EX
    36,    # F_OFD_GETLK
    37,    # F_OFD_SETLK
    38,    # F_OFD_SETLKW
    1025,  # F_GETLEASE
    1030,  # F_DUPFD_CLOEXEC
    1032,  # F_GETPIPE_SZ
    1033,  # F_ADD_SEALS
    1034,  # F_GET_SEALS
)

# ioctl requests allowed while serving: what isatty(), get_terminal_size(),
# non-blocking sockets and FD_CLOEXEC use.  Everything else is denied,
# notably TIOCSTI, TIOCLINUX, FIOSETOWN/SIOCSPGRP (0x8901/0x8902: SIGIO to any pid).
_REQUEST_IOCTL: Final = (
    0x5401,      # TCGETS
    0x802C542A,  # TCGETS2 (newer glibc's tcgetattr)
    0x540F,      # TIOCGPGRP
    0x5411,      # TIOCOUTQ / SIOCOUTQ
    0x5413,      # TIOCGWINSZ
    0x541B,      # FIONREAD / SIOCINQ
    0x5421,      # FIONBIO
    0x5450,      # FIONCLEX
    0x5451,      # FIOCLEX
)


# --- a small typed layer over pyseccomp ---

@dataclass(frozen=True, slots=True)
class _Cmp:
    """A test of one syscall argument: `args[arg] <op> a`, or `args[arg] & a == b` for MASKED_EQ."""

    arg: int
    op: int
    a: int
    b: int = 0


def _eq(arg: int, value: int) -> _Cmp:
    # Full 64-bit equality: right for allow rules, where stray upper bits
    # must not slip through.
    return _Cmp(arg, _EQ, value)


def _masked(arg: int, mask: int, value: int) -> _Cmp:
    return _Cmp(arg, _MASKED_EQ, mask, value)


def _low32_eq(arg: int, value: int) -> _Cmp:
    # For deny rules on int arguments: the kernel drops the upper half, so the
    # comparison must too, or 0x1_0000_0010 would pass as "not AF_NETLINK".
    return _masked(arg, _LOW32, value)


class _Filter:
    """A libseccomp filter for x86_64 with a typed, name-checked add()."""

    def __init__(self, default_action: int) -> None:
        self._f = _sc.SyscallFilter(default_action)
        self._default = default_action
        # A foreign ABI (i386, or x32 through the x86_64 entry) is an attack,
        # never a mistake: kill the whole process, not just the thread.
        self._f.set_attr(_sc.Attr.ACT_BADARCH, _KILL_PROCESS)
        # Binary search over syscall numbers instead of a linear chain.
        self._f.set_attr(_sc.Attr.CTL_OPTIMIZE, 2)

    def add(self, action: int, syscall: str, *cmps: _Cmp) -> None:
        self._f.add_rule(action, _syscall_number(syscall),
                         *(_sc.Arg(c.arg, c.op, c.a, c.b) for c in cmps))

    def export(self) -> bytes:
        with tempfile.TemporaryFile() as out:  # export_bpf() wants a real fd
            self._f.export_bpf(out)
            out.seek(0)
            bpf = out.read()
        _check_program(bpf)
        return bpf


def _syscall_number(name: str) -> int:
    number = int(_sc.resolve_syscall(_sc.Arch.NATIVE, name))
    if number < 0:
        number = _X86_64_NUMBERS.get(name, -1)
    if number < 0:
        raise ValueError(f"unknown system call {name!r} for this libseccomp")
    return number


def _check_program(bpf: bytes) -> None:
    if not bpf or len(bpf) % _BPF_INSN_SIZE:
        raise ValueError(f"not a BPF program: {len(bpf)} bytes")
    if len(bpf) // _BPF_INSN_SIZE > _BPF_MAXINSNS:
        raise ValueError(f"BPF program too long: {len(bpf) // _BPF_INSN_SIZE} instructions")


def _deny_action(deny: str) -> int:
    if deny == "eperm":
        return int(_sc.ERRNO(errno.EPERM))
    if deny == "kill":
        return _KILL_PROCESS
    raise ValueError(f"deny must be one of {DENY_ACTIONS}, not {deny!r}")


# --- the two filters ---

def _loading_filter(deny: int, network: str, reset: bool) -> _Filter:
    f = _Filter(_ALLOW)
    for name in _LOADING_DENY:
        f.add(deny, name)
    if reset:
        # Each worker tracks its own memory; user-mode faults only, which
        # needs no privilege and cannot stall the kernel.
        f.add(deny, "userfaultfd", _masked(0, _UFFD_USER_MODE_ONLY, 0))
    else:
        f.add(deny, "userfaultfd")
    f.add(int(_sc.ERRNO(errno.ENOSYS)), "clone3")
    # clone() is how glibc forks and starts threads (on_init may): deny only
    # new namespaces.  One rule per flag, as a rule can only test equality.
    for flag in _CLONE_NAMESPACE_FLAGS:
        f.add(deny, "clone", _masked(0, flag, flag))
    _deny_other_families(f, deny, _granted_families(network))
    for request in (_TIOCSTI, _TIOCLINUX):
        f.add(deny, "ioctl", _low32_eq(1, request))
    _deny_personality_changes(f, deny)
    return f


def _granted_families(network: str) -> tuple[int, ...]:
    """The address families a tenant's sockets may have: AF_UNIX (socketpair),
    and the internet families when `network:` grants them (the network
    namespace then decides what they reach)."""
    if network in ("loopback", "full"):
        return (_AF_UNIX, _AF_INET, _AF_INET6)
    return (_AF_UNIX,)


def _deny_other_families(f: _Filter, deny: int, granted: tuple[int, ...]) -> None:
    """In a default-allow filter: socket() and socketpair() of any family but `granted`.

    A rule tests an argument once, so the complement is spelled out: every
    family below _AF_MAX but the granted ones, and anything above it (which
    also catches a family with upper bits set, that the kernel would truncate).
    """
    for name in ("socket", "socketpair"):
        f.add(deny, name, _Cmp(0, _GT, _AF_MAX))
        for family in range(_AF_MAX + 1):
            if family not in granted:
                f.add(deny, name, _eq(0, family))


def _deny_personality_changes(f: _Filter, deny: int) -> None:
    """Allow personality() only as PER_LINUX (0) or the query 0xffffffff.

    A default-allow filter cannot say "deny unless x in {0, 0xffffffff}", and a
    rule may test an argument only once, so the complement is spelled out: a
    32-bit word that is neither all zeros nor all ones has, somewhere, a 1 bit
    followed (cyclically) by a 0 bit.  Upper bits set at all: denied outright.
    """
    f.add(deny, "personality", _Cmp(0, _GT, _LOW32))
    for bit in range(32):
        one, zero = 1 << bit, 1 << ((bit + 1) % 32)
        f.add(deny, "personality", _masked(0, one | zero, one))


def _request_filter(deny: int, network: str, reset: bool) -> _Filter:
    f = _Filter(deny)
    for name in _REQUEST_ALLOW:
        f.add(_ALLOW, name)
    # Every signal but the abort signal (full 64-bit comparisons: a value
    # with upper bits set, which the kernel would truncate, is refused).
    f.add(_ALLOW, "rt_sigaction", _Cmp(0, _sc.LT, ABORT_SIGNAL))
    f.add(_ALLOW, "rt_sigaction", _eq(0, _NSIG - 1))
    if reset:
        f.add(_ALLOW, "ioctl", _eq(1, _PAGEMAP_SCAN))
    f.add(int(_sc.ERRNO(errno.ENOSYS)), "clone3")  # glibc then tries clone: denied
    for cmd in _REQUEST_FCNTL:
        f.add(_ALLOW, "fcntl", _eq(1, cmd))
    for request in _REQUEST_IOCTL:
        f.add(_ALLOW, "ioctl", _eq(1, request))
    f.add(_ALLOW, "prlimit64", _eq(0, 0), _eq(2, 0))  # own limits, read only
    f.add(_ALLOW, "personality", _eq(0, _PERSONALITY_QUERY))
    f.add(_ALLOW, "socketpair", _eq(0, _AF_UNIX))
    if network in ("loopback", "full"):
        # Same filter for both: the network namespace decides what is reachable.
        for family in (_AF_INET, _AF_INET6):
            for kind in (_SOCK_STREAM, _SOCK_DGRAM):
                f.add(_ALLOW, "socket", _eq(0, family), _masked(1, _SOCK_TYPE_MASK, kind))
        for name in ("connect", "bind", "listen", "accept", "accept4"):
            f.add(_ALLOW, name)
    return f


def build_filters(*, deny: str = "eperm", network: str = "none", reset: bool = False) -> SeccompFilters:
    """Build both filters for one tenant configuration.

    deny: "eperm" (denied calls fail with EPERM) or "kill" (the process dies
    with SIGSYS).  network: "none" | "loopback" | "full", see the module doc.
    reset: the tenant runs on the reset engine.
    """
    action = _deny_action(deny)
    if network not in NETWORK_MODES:
        raise ValueError(f"network must be one of {NETWORK_MODES}, not {network!r}")
    if _sc.system_arch() != _ARCH_X86_64:
        # Argument positions (clone), ioctl numbers and the x32 rule are x86_64's.
        raise RuntimeError("the seccomp policy is written for x86_64 only")
    return SeccompFilters(loading=_loading_filter(action, network, reset).export(),
                          request=_request_filter(action, network, reset).export())


# --- mayflyd-front ---

# Measured (strace -f -c) on the front end serving tests/unit/test_front_http.py
# and test_front_control.py, after it loaded its filter; plus what the data
# channels (socketpair, SCM_RIGHTS, eventfd) and the access log need.
_FRONT_ALLOW: Final = (
    # its sockets, timers and wake-ups: all made before the filter but
    # accepted clients, per-request socketpairs, timerfds and eventfds
    "read", "write", "readv", "writev", "close",
    "accept4", "recvfrom", "recvmsg", "sendto", "sendmsg", "shutdown",
    "getsockname", "getpeername", "getsockopt",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
    "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime", "signalfd4",
    # memory (malloc; thread stacks)
    "brk", "munmap", "mremap", "madvise",
    # threads, started after the filter (pthread_create), and their locks
    "futex", "set_robust_list", "rseq", "sched_yield", "gettid", "getpid", "getrandom",
    "exit", "exit_group", "restart_syscall",
    # signals: its own mask and handlers, sigwait on TERM/INT
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigtimedwait", "sigaltstack",
    # time
    "clock_gettime", "clock_getres", "gettimeofday", "nanosleep", "clock_nanosleep",
)

# A compromised front end must not get any further: these kill it outright.
_FRONT_KILL: Final = (
    "unshare", "setns", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "bpf", "perf_event_open", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsmount", "fspick", "mount_setattr", "execve", "execveat",
)

# glibc's pthread_create: clone(CLONE_VM | CLONE_FS | CLONE_FILES |
# CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM | CLONE_SETTLS |
# CLONE_PARENT_SETTID | CLONE_CHILD_CLEARTID), exit signal 0: a thread, and
# nothing else (no fork, no new namespace).
_CLONE_THREAD_FLAGS: Final = 0x3D0F00
_PROT_EXEC: Final = 4
_SOL_SOCKET: Final = 1
_IPPROTO_TCP: Final = 6
_FRONT_FCNTL: Final = (1, 2, 3, 4)  # F_GETFD, F_SETFD, F_GETFL, F_SETFL
_FRONT_IOCTL: Final = (0x541B, 0x5421)  # FIONREAD, FIONBIO


def build_front_filter() -> bytes:
    """The seccomp filter of mayflyd-front, as raw BPF for its --seccomp-fd.

    Default deny (EPERM), allowlist. The front end loads it once its
    listening socket, control channel, metrics area, epoll fds and timers
    exist and before its loop threads start, so it may still create
    threads (clone with glibc's thread flags exactly; clone3 answers ENOSYS
    so that glibc falls back to clone), accepted sockets, socketpairs
    (AF_UNIX only), eventfds, timerfds and memory, but no executable memory,
    no other socket, and no file: open/openat are refused (glibc's malloc
    asks /proc/sys/vm/overcommit_memory once when it trims an arena, and
    takes the refusal as "no"). Namespaces (unshare, setns, clone with a
    namespace flag), tracing, mounts, bpf and exec kill the process.
    """
    if _sc.system_arch() != _ARCH_X86_64:
        raise RuntimeError("the seccomp policy is written for x86_64 only")
    eperm = _deny_action("eperm")
    f = _Filter(eperm)
    for name in _FRONT_ALLOW:
        f.add(_ALLOW, name)
    for name in _FRONT_KILL:
        f.add(_KILL_PROCESS, name)
    f.add(_ALLOW, "clone", _eq(0, _CLONE_THREAD_FLAGS))
    for flag in _CLONE_NAMESPACE_FLAGS:
        f.add(_KILL_PROCESS, "clone", _masked(0, flag, flag))
    f.add(int(_sc.ERRNO(errno.ENOSYS)), "clone3")
    for name in ("mmap", "mprotect"):
        f.add(_ALLOW, name, _masked(2, _PROT_EXEC, 0))
    f.add(_ALLOW, "socketpair", _eq(0, _AF_UNIX))
    for level in (_SOL_SOCKET, _IPPROTO_TCP):
        f.add(_ALLOW, "setsockopt", _eq(1, level))
    for cmd in _FRONT_FCNTL:
        f.add(_ALLOW, "fcntl", _eq(1, cmd))
    for request in _FRONT_IOCTL:
        f.add(_ALLOW, "ioctl", _eq(1, request))
    return f.export()


# --- loading (tests; production loads from C) ---

_PR_SET_SECCOMP: Final = 22
_PR_SET_NO_NEW_PRIVS: Final = 38
_SECCOMP_MODE_FILTER: Final = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(bpf: bytes) -> None:
    """Load a raw BPF program into the calling thread, as the C helper does.

    Sets no_new_privs first: without CAP_SYS_ADMIN the kernel requires it.
    Irreversible; meant for tests, in a forked child.
    """
    _check_program(bpf)
    libc = ctypes.CDLL(None, use_errno=True)
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS, 1) failed: {errno.errorcode.get(err, err)}")
    program = ctypes.create_string_buffer(bpf, len(bpf))  # alive until prctl returns
    fprog = _SockFprog(len(bpf) // _BPF_INSN_SIZE, ctypes.addressof(program))
    if prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, {fprog.len} insns) "
                           f"failed: {errno.errorcode.get(err, err)}")
