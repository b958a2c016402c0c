"""The zygote: a pre-warmed interpreter that tenant hosts are forked from.

The supervisor starts it once (zygote_client.py). It imports the host's
code, specialises the daemon's per-request path and freezes its objects;
then, for each host the supervisor asks for, it forks a child that becomes
that host (sandbox_host.serve). Every host so started shares the
interpreter's pages with all the others instead of loading its own Python,
which is what makes an idle tenant cheap and quick to start.

The zygote runs no tenant code and holds nothing of any tenant: a forked
host learns only what every host already has. It reaps its children and
reports how each ended; it dies with the supervisor, and the hosts with it
(each host's stub has the zygote as its parent-death watch).

One JSON message per SEQPACKET packet:
  supervisor -> zygote  {"spawn": n, "spec": ..., "env": {...}}
                        with the fds [control socket, stdout, stderr]
  zygote -> supervisor  {"spawned": n, "pid": p} with the fd [pidfd]
                        {"failed": n, "error": text}
                        {"exited": p, "status": wait status}
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any, NoReturn

from mayflyd import _mayfly
from mayflyd.program import warm_up_request_path
from mayflyd.sandbox_host import HostSpec, make_runner, serve

__all__ = ["main", "MAX_MESSAGE", "SPAWN_FDS"]

MAX_MESSAGE = 256 * 1024  # a spawn message: the spec and the environment
SPAWN_FDS = 3             # control socket, stdout, stderr


class Zygote:
    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._pid = os.getpid()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def serve(self) -> int:
        # SIGCHLD only wakes the poll below; reaping is done there.
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        poller = select.poll()
        poller.register(self._channel, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            for fd, _events in poller.poll():
                if fd == self._wake_r:
                    os.read(self._wake_r, 4096)
                elif not self._handle_message():
                    return 0  # the supervisor is gone
            self._reap()

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
        spec = HostSpec.from_json(message["spec"])
        env = {str(k): str(v) for k, v in message["env"].items()}
        ctrl, stdout, stderr = fds
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self._send({"failed": message["spawn"], "error": f"fork: {exc}"})
            return
        if pid == 0:
            self._become_host(dataclasses.replace(spec, ctrl_fd=ctrl, parent_pid=self._pid), env, stdout, stderr)
        pidfd = os.pidfd_open(pid)
        try:
            self._send({"spawned": message["spawn"], "pid": pid}, [pidfd])
        finally:
            os.close(pidfd)

    def _become_host(self, spec: HostSpec, env: dict[str, str], stdout: int, stderr: int) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._channel.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            os.close(stdout)
            os.close(stderr)
            os.setsid()
            os.environ.clear()
            os.environ.update(env)
            sys.argv[:] = ["-c", spec.to_json()]
            code = serve(spec, warmed_up=True)
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

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._send({"exited": pid, "status": status})

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        try:
            if fds:
                socket.send_fds(self._channel, [data], fds)
            else:
                self._channel.send(data)
        except OSError:
            pass  # the supervisor is gone: the next receive ends the loop


def _prewarm() -> None:
    """What every host would otherwise do for itself, done once."""
    warm_up_request_path(make_runner)
    # Objects that exist now live as long as the zygote: keep the hosts'
    # collectors from touching (and so copying) their pages.
    gc.collect()
    gc.freeze()


def main() -> None:
    if len(sys.argv) != 3:
        print("usage: mayflyd.zygote CHANNEL_FD SUPERVISOR_PID (started by mayflyd, not by hand)", file=sys.stderr)
        sys.exit(2)
    channel_fd, supervisor_pid = int(sys.argv[1]), int(sys.argv[2])
    _mayfly.set_parent_death_signal(signal.SIGKILL, supervisor_pid)
    channel = socket.socket(fileno=channel_fd)
    channel.set_inheritable(False)
    _prewarm()
    sys.exit(Zygote(channel).serve())


if __name__ == "__main__":
    main()
