"""Entry point of a tenant's sandbox host process.

The supervisor starts a Python running :func:`main` with a JSON
:class:`HostSpec` as its one argument and the host end of the control socket
as an inherited fd. The host walls itself in
(cgroup, mount namespace with a minimal read-only root, unprivileged
identity), loads the program, runs on_init() once, and hands the control
socket to the C fork engine, which forks one sandbox per request.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import signal
import socket
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from mayflyd import _mayfly
from mayflyd.program import Program, ProgramError, Request, load_program
from mayflyd.protocol import MsgType, pack_frame

__all__ = ["HostSpec", "main"]

# Only the supervisor may make a host fall lower than its own sandboxes in
# the OOM killer's eyes; sandboxes raise themselves to 1000 after fork.
HOST_OOM_SCORE_ADJ = -500


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSpec:
    """What the supervisor tells a host; serialised as JSON on argv."""

    tenant: str
    program: str
    ctrl_fd: int
    supervisor_pid: int
    uid: int
    gid: int
    walls: bool                 # root-only walls: cgroup, mount namespace, identity
    cgroup_version: int         # 0 = none
    cgroup_base: str
    cgroup_group: str
    readonly_paths: list[str]

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


def _build_walls(spec: HostSpec) -> None:
    """Every step that needs root, in order; tenant code has not run yet."""
    # First, so that everything the host allocates from here on is charged
    # to the tenant and limited.
    if spec.cgroup_version:
        _mayfly.cgroup_join(spec.cgroup_version, spec.cgroup_base, spec.cgroup_group, os.getpid())
    # Lowering the score needs CAP_SYS_RESOURCE, so before the identity drop.
    # Some machines deny it even to root; sandboxes still rise to 1000.
    try:
        _mayfly.set_oom_score_adj(HOST_OOM_SCORE_ADJ)
    except PermissionError:
        print("mayflyd: cannot lower the host's oom_score_adj (no CAP_SYS_RESOURCE); sandboxes still "
              "rise to 1000", file=sys.stderr)
    # The mount namespace needs CAP_SYS_ADMIN; the program directory may sit
    # below a directory only root can traverse (e.g. /root).
    skipped = _mayfly.enter_minimal_root(spec.readonly_paths)
    if skipped:
        print(f"mayflyd: not in the sandbox's view (missing): {', '.join(skipped)}", file=sys.stderr)
    # Last: after this, nothing can be undone by the tenant.
    _mayfly.drop_privileges(spec.uid, spec.gid)


def _make_runner(program: Program) -> _mayfly.Runner:
    def runner(req_id: int, method: str, path: str, query: str,
               headers: list[tuple[str, str]], body: bytes, client: str) -> tuple[int, list[tuple[str, str]], bytes]:
        request = Request(id=req_id, method=method, path=path, query=query,
                          headers=headers, body=body, client=client)
        return program.call(request)
    return runner


def serve(spec: HostSpec) -> int:
    ctrl = socket.socket(fileno=spec.ctrl_fd)
    # Dies with the supervisor; the check inside catches a supervisor that
    # died before the signal was armed.
    _mayfly.set_parent_death_signal(signal.SIGKILL, spec.supervisor_pid)
    if spec.walls:
        try:
            _build_walls(spec)
        except OSError as exc:
            _report_load_failure(ctrl, f"sandbox setup failed: {exc}")
            return 1
    # cwd '' on sys.path would let a file in the sandbox's root shadow stdlib.
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    try:
        program = load_program(Path(spec.program))
        program.init()
    except ProgramError as exc:
        _report_load_failure(ctrl, str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - anything else from tenant code is a failed load too
        traceback.print_exc()
        _report_load_failure(ctrl, f"loading the program failed: {type(exc).__name__}: {exc}")
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Objects that exist now live as long as the host: keep the collector
    # from touching (and so copying) their pages in every sandbox.
    gc.collect()
    gc.freeze()
    _mayfly.serve_fork(ctrl.fileno(), _make_runner(program), [])
    return 0


def main() -> None:
    if len(sys.argv) != 2:
        print("usage: python -m mayflyd.sandbox_host SPEC_JSON (started by mayflyd, not by hand)", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(HostSpec.from_json(sys.argv[1])))


if __name__ == "__main__":
    main()
