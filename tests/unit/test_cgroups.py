"""The supervisor's cgroup chores, against fake trees."""
from __future__ import annotations

import os
from pathlib import Path

from mayflyd.supervisor.cgroups import leave_delegated_root, own_cgroup_v2
from mayflyd.supervisor.tenant import Walls


def walls(base: Path, version: int = 2) -> Walls:
    return Walls(mode="root", cgroup_version=version, cgroup_base=str(base), cgroup_prefix="mayflyd", seccomp=True)


def test_own_cgroup_v2(tmp_path: Path) -> None:
    (tmp_path / "cgroup").write_text("12:memory:/x\n0::/system.slice/mayflyd.service\n")
    assert own_cgroup_v2(str(tmp_path / "cgroup")) == "/system.slice/mayflyd.service"
    (tmp_path / "v1only").write_text("12:memory:/x\n")
    assert own_cgroup_v2(str(tmp_path / "v1only")) is None
    assert own_cgroup_v2(str(tmp_path / "missing")) is None


def test_supervisor_leaves_its_delegated_root(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup2"
    service = mount / "system.slice" / "mayflyd.service"
    service.mkdir(parents=True)
    (service / "supervisor").mkdir()
    (service / "supervisor" / "cgroup.procs").write_text("")  # a fake tree: interface files pre-exist
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/system.slice/mayflyd.service\n")
    leave_delegated_root(walls(service), mount=str(mount), proc_self_cgroup=str(proc))
    assert (service / "supervisor" / "cgroup.procs").read_text() == f"{os.getpid()}\n"


def test_supervisor_elsewhere_or_v1_stays(tmp_path: Path) -> None:
    mount = tmp_path / "cgroup2"
    service = mount / "mayflyd.slice"
    service.mkdir(parents=True)
    proc = tmp_path / "self-cgroup"
    proc.write_text("0::/user.slice/session-1.scope\n")
    leave_delegated_root(walls(service), mount=str(mount), proc_self_cgroup=str(proc))
    leave_delegated_root(walls(service, version=1), mount=str(mount), proc_self_cgroup=str(proc))
    assert not (service / "supervisor").exists()
