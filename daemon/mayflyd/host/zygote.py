"""The zygote: a pre-warmed interpreter that tenant hosts are forked from.

The supervisor starts it once (zygote_client.py). It imports the host's
code, specialises the daemon's per-request path and freezes its objects;
then, for each host the supervisor asks for, it forks a child that becomes
that host: zygote_fork.c builds its walls in C (cgroup, namespaces, minimal
root, identity, loading filter), and sandbox_host.serve does the rest.
Every host so started shares the interpreter's pages with all the others
instead of loading its own Python, which is what makes an idle tenant cheap
and quick to start.

The zygote runs no tenant code and holds nothing of any tenant: a forked
host learns only what every host already has. It forks each host as its
sibling (CLONE_PARENT): the host is the supervisor's child, which reaps it
through its pidfd and which it dies with (its parent-death signal); so a
host outlives the zygote, and the zygote dies with the supervisor too. No
stub is left behind except in an unprivileged daemon's user namespace.
docs/design.md section 3.

One JSON message per SEQPACKET packet:
  supervisor -> zygote  {"spawn": n, "spec": ..., "env": {...}}
                        with the fds [control socket, stdout, stderr]
  zygote -> supervisor  {"spawned": n, "pid": p} with the fd [pidfd]
                        {"failed": n, "error": text}, and "pid": p if a
                        child was forked (killed, for the supervisor to reap)
"""
from __future__ import annotations

import gc
import json
import os
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn

from mayflyd import _mayfly
from mayflyd.host.program import load_program, warm_up_request_path
from mayflyd.host.sandbox_host import HostSpec, entry_of, open_memory_events, serve, walls_of

__all__ = ["main", "MAX_MESSAGE", "SPAWN_FDS"]

MAX_MESSAGE = 256 * 1024  # a spawn message: the spec and the environment
SPAWN_FDS = 3             # control socket, stdout, stderr


class Zygote:
    def __init__(self, channel: socket.socket, supervisor_pidfd: int) -> None:
        self._channel = channel
        # The hosts' parent: each is forked as its child, and dies with it.
        self._supervisor_pidfd = supervisor_pidfd
        self._supervisor = os.getppid()
        self._environment = dict(os.environ)

    def serve(self) -> int:
        # The hosts are not our children: nothing to reap, only messages.
        while self._handle_message():
            pass
        return 0  # the supervisor is gone

    def _handle_message(self) -> bool:
        message: Any = None
        try:
            data, fds, _flags, _addr = socket.recv_fds(self._channel, MAX_MESSAGE, SPAWN_FDS)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            message = json.loads(data)
            if not isinstance(message, dict) or "spawn" not in message or len(fds) != SPAWN_FDS:
                raise ValueError(f"expected a spawn message with {SPAWN_FDS} fds")
            self._spawn(message, fds)
        except (ValueError, TypeError, KeyError) as exc:
            self._send({"failed": message.get("spawn") if isinstance(message, dict) else None,
                        "error": f"bad spawn message: {exc}"})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        # Every page this loop writes between two forks is a page the earlier
        # host keeps a copy of: as few Python calls as the spawn needs.
        ctrl, stdout, stderr = fds
        fields = json.loads(message["spec"])
        fields.update(ctrl_fd=ctrl, parent_pid=self._supervisor)
        spec = HostSpec(**fields)
        env: dict[str, str] = message["env"]
        argv = ["-c", json.dumps(fields)]  # as a fresh host's; made here, where its pages are shared
        sys.stdout.flush()
        sys.stderr.flush()
        # Opened here, where the cgroup file system is in view; the host
        # keeps it inside its walls.
        oom_fd = open_memory_events(spec)
        try:
            pid = _mayfly.zygote_fork(ctrl, oom_fd, stdout, stderr, walls_of(spec), **entry_of(spec),
                                      parent_pidfd=self._supervisor_pidfd)
        except OSError as exc:
            pid = -1
            self._send({"failed": message["spawn"], "error": f"fork: {exc}"})
        if pid == 0:
            self._become_host(spec, env, argv, oom_fd)
        if oom_fd >= 0:
            os.close(oom_fd)  # the host's copy is what counts
        if pid < 0:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # out of fds: a host nobody could watch must not run
            # Unreaped until the supervisor, its parent, reaps it: the pid is still this host's.
            os.kill(pid, signal.SIGKILL)
            self._send({"failed": message["spawn"], "error": f"pidfd_open: {exc}", "pid": pid})
            return
        self._send({"spawned": message["spawn"], "pid": pid}, [pidfd])
        os.close(pidfd)

    def _become_host(self, spec: HostSpec, env: dict[str, str], argv: list[str], oom_fd: int) -> NoReturn:
        """In the child: only fds 0-2, the control channel and oom_fd are left (zygote_fork.c)."""
        code = 1
        try:
            self._channel.detach()
            # Only what differs: the zygote's environment is the hosts' base,
            # and usually all of it (os.environ's methods are Python: pages).
            if env != self._environment:
                for key in [k for k in os.environ if k not in env]:
                    del os.environ[key]
                for key, value in env.items():
                    if os.environ.get(key) != value:
                        os.environ[key] = value
            sys.argv[:] = argv
            code = serve(spec, forked_by_zygote=True, oom_fd=oom_fd)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - a host's failure must not return into the zygote
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self._channel, [data], fds)
            else:
                self._channel.send(data)
        except OSError:
            pass  # the supervisor is gone: the next receive ends the loop


WARM_UP_LOADS = 4


def _prewarm() -> None:
    """What every host would otherwise do for itself, done once: each page
    this specialises or caches here is one page less copied into every host."""
    warm_up_request_path()
    sys.dont_write_bytecode = True  # as in a host
    saved_path = list(sys.path)
    for i in range(WARM_UP_LOADS):
        name = f"mayflyd_warm_up_program_{i}"
        load_program(Path(__file__).with_name("warm_up_program.py"), module_name=name).init()
        del sys.modules[name]
    sys.path[:] = saved_path
    # Objects that exist now live as long as the zygote: keep the hosts'
    # collectors from touching (and so copying) their pages, and (3.12+)
    # their requests from writing the reference counts.
    gc.collect()
    _mayfly.immortalize_tracked()
    gc.freeze()


def main() -> None:
    if len(sys.argv) != 3:
        print("usage: mayflyd.host.zygote CHANNEL_FD SUPERVISOR_PID (started by mayflyd, not by hand)", file=sys.stderr)
        sys.exit(2)
    channel_fd, supervisor_pid = int(sys.argv[1]), int(sys.argv[2])
    _mayfly.set_parent_death_signal(signal.SIGKILL, supervisor_pid)
    # Opened after the check that the supervisor is still our parent: its
    # pid cannot have been reused, as we would have been reparented.
    supervisor_pidfd = os.pidfd_open(supervisor_pid)
    channel = socket.socket(fileno=channel_fd)
    channel.set_inheritable(False)
    _prewarm()
    sys.exit(Zygote(channel, supervisor_pidfd).serve())


if __name__ == "__main__":
    main()
