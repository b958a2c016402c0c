"""Unprivileged mode: mayflyd started without root still serves, with the walls
an ordinary user can build, and says exactly which walls are missing."""
from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.daemon_harness import UnprivilegedDaemon, as_unprivileged
from tests.wheels import install_greet

HERE = Path(__file__).resolve().parent
SEED = HERE.parents[1] / "config" / "programs" / "hello_pythran.py"


# A tenant with `root` and `packages`: both shown to it inside its user namespace.
PACKAGED = '''
import greet
import helpers


def on_client_request(request):
    return f"{greet.__version__} {helpers.NAME}"
'''


@pytest.fixture(scope="module")
def unprivileged() -> Iterator[UnprivilegedDaemon]:
    # Readable by the unprivileged user, unlike pytest's own tmp directories.
    workdir = Path(tempfile.mkdtemp(prefix="mayflyd-unprivileged-"))
    workdir.chmod(0o755)
    (workdir / "programs").mkdir(mode=0o755)
    shutil.copy(SEED, workdir / "programs" / "hello.py")
    install_greet(workdir / "deps", "2.0")
    tenants = [{"name": "hello", "hosts": ["hello.localhost"], "default": True, "program": "programs/hello.py"},
               {"name": "attacker", "hosts": ["attacker.localhost"], "program": "programs/attacks.py",
                "limits": {"request_cpu_ms": 1500}},
               {"name": "packaged", "hosts": ["packaged.localhost"], "root": "programs", "program": "packaged.py",
                "packages": "deps"}]
    daemon = UnprivilegedDaemon(workdir, tenants, {"attacks.py": (HERE / "attacks.py").read_text(),
                                                   "packaged.py": PACKAGED, "helpers.py": "NAME = 'sibling'\n"})
    for path in workdir.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    daemon.start()
    try:
        yield daemon
    finally:
        try:
            assert daemon.stop() == 0, daemon.log()[-3000:]
        finally:
            shutil.rmtree(workdir)


def test_it_serves_without_root(unprivileged: UnprivilegedDaemon) -> None:
    reply = unprivileged.get("hello.localhost")
    assert reply.status == 200 and reply.body.startswith(b"\tthis is a very")
    assert 'tenant=hello stream=stdout msg="Hello from Python"' in unprivileged.log()


def test_it_says_which_walls_are_missing(unprivileged: UnprivilegedDaemon) -> None:
    log = unprivileged.log()
    assert ("walls MISSING: a uid/gid of its own per tenant; cgroup limits (memory, cpu, pids) "
            "(mayflyd runs without root)") in log
    present = next(line for line in log.splitlines() if "walls present:" in line)
    assert "a user namespace" in present and "seccomp filters" in present
    assert "cgroup v" not in present


def test_a_tenants_root_and_packages_are_shown_to_it(unprivileged: UnprivilegedDaemon) -> None:
    assert unprivileged.get("packaged.localhost").text == "2.0 sibling"


@pytest.mark.parametrize("path,expected", [
    ("/read/shadow", "FileNotFoundError ENOENT"),
    ("/proc/fork", "PermissionError EPERM"),
    ("/proc/ptrace", "PermissionError EPERM"),
    ("/net/other-port", "PermissionError EPERM"),
    ("/write/root", "OSError EROFS"),
])
def test_the_walls_it_has_hold(unprivileged: UnprivilegedDaemon, path: str, expected: str) -> None:
    reply = unprivileged.get("attacker.localhost", path)
    assert (reply.status, reply.text) == (200, expected)


def test_sandbox_runs_as_the_daemons_user_without_capabilities(unprivileged: UnprivilegedDaemon) -> None:
    environ = json.loads(unprivileged.get("attacker.localhost", "/read/own-environ").text.removeprefix("ok "))
    assert "PATH" in environ
    assert unprivileged.get("attacker.localhost", "/proc/setuid").text == "PermissionError EPERM"
    assert unprivileged.proc is not None and os.geteuid() == 0  # the test itself stays root


def test_its_hosts_outlive_the_zygote(unprivileged: UnprivilegedDaemon) -> None:
    # A host's stub (in the user namespace) is the daemon's child too.
    zygote = unprivileged.status()["zygote"]
    hosts = {name: unprivileged.host_pid(name) for name in ("hello", "packaged")}
    # The status names pids in the daemon's pid namespace; NSpid maps them.
    (outer,) = [p.pid for p in psutil.Process(unprivileged.daemon_pid).children()
                if open(f"/proc/{p.pid}/status").read().split("NSpid:")[1].split("\n")[0].split()[-1]
                == str(zygote["pid"])]
    os.kill(outer, signal.SIGKILL)
    unprivileged.wait_for(lambda: unprivileged.status()["zygote"]["starts"] == zygote["starts"] + 1,
                          what="a new zygote")
    assert {name: unprivileged.host_pid(name) for name in ("hello", "packaged")} == hosts
    assert unprivileged.get("packaged.localhost").text == "2.0 sibling"
    assert unprivileged.get("hello.localhost").status == 200


def test_without_root_the_admin_socket_is_in_the_users_runtime_dir() -> None:
    """No admin_socket in the config: not /run/mayflyd (EACCES without root) but
    $XDG_RUNTIME_DIR/mayflyd, made 0700; `status` run by that user finds it there."""
    workdir = Path(tempfile.mkdtemp(prefix="mayflyd-unprivileged-"))
    runtime = tempfile.mkdtemp(prefix="mfr-")  # the user's XDG_RUNTIME_DIR, 0700
    try:
        workdir.chmod(0o755)
        os.chown(runtime, UnprivilegedDaemon.UID, UnprivilegedDaemon.UID)
        (workdir / "programs").mkdir(mode=0o755)
        shutil.copy(SEED, workdir / "programs" / "hello.py")
        daemon = UnprivilegedDaemon(workdir, [{"name": "hello", "hosts": ["hello.localhost"], "default": True,
                                               "program": "programs/hello.py"}], {})
        daemon.expect_default_admin_socket(f"{runtime}/mayflyd/admin.sock")
        for path in workdir.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {"XDG_RUNTIME_DIR": runtime}
        daemon.start(env=env)
        try:
            st = os.stat(f"{runtime}/mayflyd")
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (UnprivilegedDaemon.UID, 0o700)
            def mayflyd(command: str) -> str:
                result = subprocess.run(["unshare", "--mount", *as_unprivileged(), sys.executable, "-m", "mayflyd",
                                         command], capture_output=True, text=True, timeout=60,
                                        env={**os.environ, **env})
                assert result.returncode == 0, (command, result.stderr)
                return result.stdout

            assert any(line.split()[:2] == ["hello", "ready"] for line in mayflyd("status").splitlines())
            assert mayflyd("reload") == "reloaded\n"
            # A reload reads the config as the start did: the socket is where it was.
            assert "admin_socket changed" not in daemon.log()
        finally:
            assert daemon.stop() == 0, daemon.log()[-3000:]
        assert not os.path.exists(daemon.admin_socket)
    finally:
        shutil.rmtree(workdir)
        shutil.rmtree(runtime)
