"""A tenant's sandbox host process.

Forked by the zygote (zygote.py), which has built its walls in C already, or
started as a fresh Python running :func:`main` with a JSON :class:`HostSpec`
as its one argument and the host end of its control channel (lifecycle, to
the supervisor) as an inherited fd, which then builds them here (cgroup,
namespaces, minimal read-only root, unprivileged identity, seccomp). Either
way :func:`serve` loads the program, runs on_init() once, and hands the
control channel to the C engine: fork (one sandbox forked per request) or
reset (a pool of workers forked once, each rewound after every request).
The supervisor attaches the data channels (requests, to the front end)
through the control channel once the host serves.
"""
from __future__ import annotations

import binascii
import dataclasses
import gc
import json
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mayflyd import _mayfly
from mayflyd.host.program import ProgramError, load_program, report_exception, warm_up_request_path
from mayflyd.host.shared_memory import shared_memory_left
from mayflyd.host.stdio import own_stdin
from mayflyd.host.warm_up_requests import send_warm_up_requests
from mayflyd.protocol import MsgType, pack_frame

__all__ = ["HostSpec", "main", "tenant_sys_path"]

HOSTNAME_MAX = 64  # bytes; sethostname() refuses longer
# The stop hook gets the request timeout, up to this: a daemon's stop waits for it.
STOP_TIMEOUT_MAX_MS = 5000
SERVING_NICE = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """What the supervisor tells a host; serialised as JSON on argv."""

    tenant: str
    program: str
    ctrl_fd: int                # control channel: READY, LOAD_FAILED, SHUTDOWN, DATA_CHANNEL, ...
    parent_pid: int             # the supervisor (also of a host the zygote forked)
    uid: int
    gid: int
    # Which walls to build: "root" (all of them), "userns" (unprivileged
    # daemon: namespaces inside a user namespace, no uid change, no cgroup),
    # "none" (unprivileged, no user namespaces: seccomp and rlimits only).
    mode: str
    cgroup_version: int         # 0 = none
    cgroup_base: str
    cgroup_group: str
    network: str                # none | loopback | full
    readonly_paths: list[str]
    loading_filter: str         # base64 BPF; "" = no seccomp
    request_filter: str         # base64 BPF; "" = no seccomp
    pids: int
    request_cpu_ms: int
    request_memory: int
    nofile: int
    concurrency: int = 32       # sandboxes running at once (reset: busy workers, never more than pool)
    queue: int = 256            # requests waiting beyond them, FIFO; beyond: REQUEST_FAILED EAGAIN
    engine: str = "fork"        # fork | reset (auto is resolved by the supervisor)
    pool: int = 1               # reset: workers
    pool_idle_ms: int = 0       # reset: a worker idle this long exits (0: never)
    verify_rewind: bool = False  # reset: compare every tracked page after each rewind
    front_loops: int = 1        # reset: request channels per worker, one per front-end loop
    app: str = ""               # "module:attribute" of a WSGI/ASGI app in `program`; "": the program contract
    interface: str = "auto"     # the app's: wsgi | asgi | auto
    warm_up: list[str] = dataclasses.field(default_factory=list)  # targets to GET before the seal
    warm_up_host: str = ""      # their Host header: the tenant's first host name
    warm_up_rounds: int = 0     # requests per target
    root: str = ""              # the tenant's code directory, first on sys.path; "": none
    packages: str = ""          # the tenant's installed packages, ahead of the daemon's; "": none
    stop_timeout_ms: int = STOP_TIMEOUT_MAX_MS  # the stop hook's sandbox is killed past this

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> HostSpec:
        return cls(**json.loads(text))


def _report_load_failure(ctrl: socket.socket, message: str) -> None:
    payload = message.encode("utf-8", "replace")[:4096]
    try:
        ctrl.send(pack_frame(MsgType.LOAD_FAILED, 0, payload))
    except OSError:
        pass  # the supervisor is gone; our exit status says enough


def hostname_of(spec: HostSpec) -> str:
    return f"mayfly-{spec.tenant}"[:HOSTNAME_MAX]


def entry_of(spec: HostSpec) -> dict[str, Any]:
    """Where a host goes before its walls, as zygote_fork's keywords: the
    user namespace (unprivileged daemon), the tenant's cgroup (root), the
    namespaces (both). A fresh host takes the same steps in _enter_tenant."""
    entry: dict[str, Any] = {}
    if spec.mode == "root" and spec.cgroup_version:
        entry.update(cgroup_version=spec.cgroup_version, cgroup_base=spec.cgroup_base,
                     cgroup_group=spec.cgroup_group)
    elif spec.mode == "userns":
        entry.update(user_namespace=True)
    if spec.mode in ("root", "userns"):
        entry.update(network=spec.network, hostname=hostname_of(spec))
    return entry


def memory_events_path(spec: HostSpec) -> str | None:
    """The file with the tenant cgroup's oom_kill count (memory.events on v2,
    memory.oom_control on v1), where the host reads whether a sandbox was
    OOM-killed; None without a cgroup."""
    if spec.mode != "root" or not spec.cgroup_version:
        return None
    if spec.cgroup_version == 2:
        return os.path.join(spec.cgroup_base, spec.cgroup_group, "memory.events")
    return os.path.join(spec.cgroup_base, "memory", spec.cgroup_group, "memory.oom_control")


def open_memory_events(spec: HostSpec) -> int:
    """The memory events file, opened while the cgroup file system is in
    view (before the host's walls); -1 without a cgroup or if it cannot be
    (the memory limit still holds; only the OOM flag is lost)."""
    path = memory_events_path(spec)
    if path is None:
        return -1
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        print(f"mayflyd host: {path}: {exc}; out-of-memory kills will not be told apart", file=sys.stderr)
        return -1


def _enter_tenant(spec: HostSpec) -> int:
    """Into the tenant's cgroup and namespaces; the memory events fd (or -1)."""
    entry = entry_of(spec)
    oom_fd = -1
    if "cgroup_version" in entry:
        # First, so that everything the host allocates from here on is
        # charged to the tenant and limited.
        _mayfly.cgroup_join(entry["cgroup_version"], entry["cgroup_base"], entry["cgroup_group"], os.getpid())
    if entry.get("user_namespace"):
        # Gives this unprivileged process the capabilities, inside a user
        # namespace, that the namespaces and mounts below need.
        _mayfly.enter_user_namespace()
    if "network" in entry:
        # After the cgroup join (a cgroup namespace rooted at the tenant's
        # group); from here on this process is pid 1 of a pid namespace and
        # a stub parent waits for it outside.
        _mayfly.enter_namespaces(entry["network"], entry["hostname"])
    if "cgroup_version" in entry:
        # In the new pid namespace, so that the stub left outside holds no
        # copy; before the walls, while the cgroup file system is in view.
        oom_fd = open_memory_events(spec)
    return oom_fd


def walls_of(spec: HostSpec) -> tuple[bool, int, int, int, list[str] | None, bytes | None]:
    """What host_walls.c builds once the host is in its namespaces and cgroup."""
    namespaces = spec.mode in ("root", "userns")
    return (spec.mode == "root", spec.pids, spec.uid, spec.gid, spec.readonly_paths if namespaces else None,
            binascii.a2b_base64(spec.loading_filter) if spec.loading_filter else None)


def _build_walls(spec: HostSpec) -> int:
    """Every wall, in order, before any tenant code runs (a zygote's host
    has them from zygote_fork.c already); the memory events fd (or -1)."""
    oom_fd = _enter_tenant(spec)
    _mayfly.build_host_walls(walls_of(spec))
    return oom_fd


def _count_threads_without_proc() -> str | None:
    """The thread check where /proc cannot be listed (no walls): the C seal
    counts /proc/self/task where it can. An error text if threads are left."""
    if os.path.isdir("/proc/self/task"):
        return None
    # Imported only here: a zygote without threading spares every host
    # its after-fork work (and the pages it would copy).
    import threading
    threads = threading.active_count()
    if threads > 1:
        return (f"on_init() left {threads - 1} thread(s) running; a host must be single-threaded "
                "before it serves (a thread would see every request's channel)")
    # After the kill: what a leftover process held is gone with it.
    return shared_memory_left()


def _warm_up(spec: HostSpec, forked_by_zygote: bool) -> None:
    """Sandboxes start from the state sealed with the host: specialise the
    daemon's own per-request code now, before the program loads (after
    it, the host runs no Python), not in every sandbox (a zygote did)."""
    if not forked_by_zygote:
        warm_up_request_path()


def tenant_sys_path(spec: HostSpec, path: list[str]) -> None:
    """Put the tenant's directories first on `path` (sys.path), in place,
    as PYTHONPATH would: its root, then its packages, then the daemon's
    path. The daemon's own site-packages comes first there (the zygote's
    bootstrap puts it there to find mayflyd): after it, a tenant's own
    version of a package the daemon also has would never be imported."""
    mine = [directory for directory in (spec.root, spec.packages) if directory]
    for directory in mine:
        # Checked when the config was read; this host may start much later.
        if not os.path.isdir(directory):
            what = "root" if directory == spec.root else "packages"
            raise ProgramError(f"the tenant's {what} directory {directory!r} does not exist")
    path[:0] = mine


def _loader(spec: HostSpec) -> _mayfly.Loader:
    """What the engine calls to load the program: import, on_init(), then
    what must happen while Python may still run in the host. Everything
    after it returns is the engine's C (py_seal.c): the seal, then serving,
    then, after a SHUTDOWN, the stop hook in a sandbox (stop_sandbox.h)."""
    # Taken now: on_init() may replace the module's name, not this reference.
    check_shared_memory = shared_memory_left

    def load() -> tuple[_mayfly.Runner, _mayfly.StopHook | None]:
        # cwd '' on sys.path would let a file in the sandbox's root shadow stdlib.
        sys.path[:] = [p for p in sys.path if p not in ("", ".")]
        # The sandbox's root is read-only: every attempt to write a .pyc would fail.
        sys.dont_write_bytecode = True
        try:
            tenant_sys_path(spec, sys.path)
            if spec.app:
                # Imported here, with the program: a zygote's hosts that serve
                # no app copy none of its pages.
                from mayflyd.host.wsgi import load_app
                program = load_app(Path(spec.program), spec.app, spec.interface)
            else:
                program = load_program(Path(spec.program))
                program.init()
        except ProgramError:
            raise
        except BaseException as exc:  # noqa: BLE001 - anything else from tenant code is a failed load too
            report_exception(exc)
            raise ProgramError(f"loading the program failed: {type(exc).__name__}: {exc}") from None
        request_path = program.request_path()
        if spec.warm_up:
            send_warm_up_requests(request_path, spec.warm_up, spec.warm_up_host, spec.warm_up_rounds)
        sys.stdout.flush()
        sys.stderr.flush()
        problem = _count_threads_without_proc() or check_shared_memory()
        if problem is not None:
            raise ProgramError(problem)
        # Objects that exist now live as long as the host: keep the collector
        # from touching (and so copying) their pages in every sandbox, and
        # (3.12+) requests from writing their reference counts. A zygote's own
        # are immortal and frozen already: not listed, so not written here.
        # Finalizers the collection runs are the program's last code in the
        # host; the C seal then checks what it left (processes, threads) and
        # freezes.
        gc.collect()
        _mayfly.immortalize_tracked()
        return request_path, program.stop_hook()
    return load


def serve(spec: HostSpec, *, forked_by_zygote: bool = False, oom_fd: int = -1) -> int:
    """Run the host; forked_by_zygote: already in its namespaces, dying
    with its parent, and with the daemon's request path warm, its cgroup's
    memory events at oom_fd (-1: none). Returns only if the program could
    not be loaded or sealed: a sealed host exits from C when it stops."""
    ctrl = socket.socket(fileno=spec.ctrl_fd)
    # Not across exec: nothing on_init() runs may inherit the channel.
    ctrl.set_inheritable(False)
    if oom_fd >= 0:
        os.set_inheritable(oom_fd, False)
    if not forked_by_zygote:
        # Dies with its parent; the check inside catches a parent that died
        # before the signal was armed.
        _mayfly.set_parent_death_signal(signal.SIGKILL, spec.parent_pid)
    try:
        if not forked_by_zygote:
            oom_fd = _build_walls(spec)
        # Before any tenant code: fd 0 must be no other tenant's.
        own_stdin()
    except (OSError, ValueError) as exc:
        _report_load_failure(ctrl, f"sandbox setup failed: {exc}")
        return 1
    # Tenant code yields to the daemon (front end, reloads, restarts) when
    # the CPU is short; raising one's own nice value needs no privilege.
    os.setpriority(os.PRIO_PROCESS, 0, SERVING_NICE)
    _warm_up(spec, forked_by_zygote)
    # Everything the engine needs is taken now, before any tenant code runs:
    # after on_init() the program could have replaced any module's function
    # (this one's included), and nothing it replaced may run in the host.
    request_filter = binascii.a2b_base64(spec.request_filter)
    seal: dict[str, Any] = {"load": _loader(spec), "gc_freeze": gc.freeze, "pid_one": spec.mode in ("root", "userns"),
                            "stop_timeout_ms": spec.stop_timeout_ms}
    try:
        if spec.engine == "reset":
            _mayfly.serve_reset(ctrl.fileno(), None, [], _mayfly.reseed_random,
                                request_filter=request_filter, cpu_ms=spec.request_cpu_ms,
                                memory_bytes=spec.request_memory, nofile=spec.nofile, pool_size=spec.pool,
                                idle_ms=spec.pool_idle_ms, verify=spec.verify_rewind,
                                concurrency=spec.concurrency, queue=spec.queue, oom_fd=oom_fd,
                                front_loops=spec.front_loops, **seal)
        else:
            _mayfly.serve_fork(ctrl.fileno(), None, [], request_filter=request_filter,
                               cpu_ms=spec.request_cpu_ms, memory_bytes=spec.request_memory, nofile=spec.nofile,
                               concurrency=spec.concurrency, queue=spec.queue, oom_fd=oom_fd, **seal)
    except ProgramError as exc:
        _report_load_failure(ctrl, str(exc))
    except OSError as exc:  # the seal's checks: a thread or a file on_init() left, ...
        _report_load_failure(ctrl, f"sealing the host failed: {exc.strerror or exc}")
    except BaseException as exc:  # noqa: BLE001 - a signal handler of the program's, raising
        _report_load_failure(ctrl, f"loading the program failed: {type(exc).__name__}: {exc}")
    return 1


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m mayflyd.host.sandbox_host SPEC_JSON (started by mayflyd, not by hand)", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(HostSpec.from_json(sys.argv[1])))


if __name__ == "__main__":
    main()
