"""cgroup v2 through the daemon, against a fake cgroupfs tree (this machine's v2 has no controllers)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the cgroup wall is built only as root")


def fake_tree(base: Path, group: str) -> Path:
    """Every directory and interface file pre-exists, as a kernel would make them."""
    d = base
    for part in ["", *group.split("/")]:
        d = d / part if part else d
        d.mkdir(exist_ok=True)
        (d / "cgroup.controllers").write_text("cpu memory pids\n")
        (d / "cgroup.subtree_control").write_text("")
        (d / "cgroup.procs").write_text("")
    for name in ("memory.max", "memory.swap.max", "pids.max", "cpu.max"):
        (d / name).write_text("max\n")
    (d / "memory.events").write_text("oom_kill 0\n")
    (d / "memory.current").write_text("0\n")
    return d


def test_tenant_limits_and_membership_on_cgroup_v2(tmp_path: Path) -> None:
    base = tmp_path / "cgroup2"
    tenant = {"name": "a", "hosts": ["a.localhost"], "program": "programs/a.py",
              "limits": {"memory": "64MiB", "cpu": 0.5, "concurrency": 8}}
    d = Daemon(tmp_path, [tenant], {"a.py": "def on_client_request(request):\n    return 'on v2'\n"},
               cgroup="v2", cgroup_root=str(base))
    leaf = fake_tree(base, f"{d.cgroup_prefix}/a")
    d.start()
    try:
        assert d.get("a.localhost").text == "on v2"
        assert f"cgroup v2 limits (memory, cpu, pids) at {base}" in d.log()
        assert (leaf / "memory.max").read_text() == str(64 * 1024 * 1024)
        assert (leaf / "memory.swap.max").read_text() == "0"
        assert (leaf / "pids.max").read_text() == "64"
        assert (leaf / "cpu.max").read_text() == "50000 100000"
        # The host joins from inside its new pid namespace, where it is pid 1
        # (the kernel reads the pid in the writer's namespace).
        assert (leaf / "cgroup.procs").read_text() == "1"
        # Each ancestor hands its controllers down (a fake file keeps the last write).
        assert (base / d.cgroup_prefix / "cgroup.subtree_control").read_text().startswith("+")
    finally:
        assert d.stop() == 0
