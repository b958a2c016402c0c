"""The supervisor's own dealings with the cgroup tree (the tenants' groups
themselves are set up by the C helper): clearing what a crashed run left,
and stepping out of a delegated cgroup v2 root."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from mayflyd import _mayfly
from mayflyd.supervisor.tenant import Walls

__all__ = ["remove_stale_cgroups", "leave_delegated_root", "own_cgroup_v2"]

log = logging.getLogger("mayflyd.cgroups")

SUPERVISOR_LEAF = "supervisor"


def remove_stale_cgroups(walls: Walls) -> None:
    """Tenant cgroups a crashed previous run left under this daemon's prefix."""
    if walls.cgroup_version == 1:
        parents = [Path(walls.cgroup_base, ctrl, walls.cgroup_prefix) for ctrl in ("memory", "pids", "cpu")]
    elif walls.cgroup_version == 2:
        parents = [Path(walls.cgroup_base, walls.cgroup_prefix)]
    else:
        return
    stale = sorted({child.name for parent in parents if parent.is_dir()
                    for child in parent.iterdir() if child.is_dir()})
    for name in stale:
        log.warning("removing the stale cgroup of tenant %s from a previous run", name)
        try:
            _mayfly.cgroup_remove(walls.cgroup_version, walls.cgroup_base, walls.group_of(name))
        except OSError as exc:
            log.error("cannot remove the stale cgroup %s: %s", walls.group_of(name), exc)


def own_cgroup_v2(proc_self_cgroup: str = "/proc/self/cgroup") -> str | None:
    """This process's cgroup v2 path (the "0::" line), e.g. /system.slice/mayflyd.service."""
    try:
        with open(proc_self_cgroup) as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None


def leave_delegated_root(walls: Walls, *, mount: str = "/sys/fs/cgroup",
                         proc_self_cgroup: str = "/proc/self/cgroup") -> None:
    """On cgroup v2, move the supervisor out of `cgroup_root` into a leaf of its own.

    With systemd's Delegate=yes the service's cgroup is the delegated root,
    and the daemon starts inside it; but a v2 group that holds processes
    cannot hand controllers to child groups ("no internal processes"), so
    the tenants' groups could not get memory, cpu or pids limits.
    """
    if walls.cgroup_version != 2:
        return
    own = own_cgroup_v2(proc_self_cgroup)
    if own is None or os.path.normpath(mount + own) != os.path.normpath(walls.cgroup_base):
        return
    leaf = Path(walls.cgroup_base, SUPERVISOR_LEAF)
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n")
    log.info("moved the supervisor into %s, so that tenant groups may have controllers", leaf)
