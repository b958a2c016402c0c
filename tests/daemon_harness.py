"""Runs the real mayflyd as a subprocess on a free port, for integration tests."""
from __future__ import annotations

import concurrent.futures
import ctypes
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Daemon", "DaemonProcess", "IsolatedDaemon", "Reply", "UnprivilegedDaemon", "free_port", "HOST_VARIANTS",
           "host_variant", "as_unprivileged"]

# How the suites that run once per way of serving run their daemon: the
# engine, and whether hosts are forked from the zygote (the default) or
# started as fresh interpreters (zygote: false).
HOST_VARIANTS = ("fork", "reset", "fork-fresh")


def host_variant(param: str) -> tuple[str, bool]:
    """(engine, zygote) of one of HOST_VARIANTS."""
    engine, _, fresh = param.partition("-")
    return engine, fresh != "fresh"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class DaemonProcess:
    """A running mayflyd: its port, its log, and a client for it."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.cgroup_prefix = "mayflyd"
        self.engine = "fork"  # what the fixture configured its tenants with
        self.zygote = True     # whether hosts are forked from the zygote
        self.listen_host = "127.0.0.1"  # what its "listening on" line names: it is up

    def idle_processes(self) -> int:
        """Processes of an idle tenant: the host; the stub a fresh host leaves outside its pid
        namespace (a zygote's host has none); the reset engine's first worker (its pool grows
        only while requests wait)."""
        return 1 + (0 if self.zygote else 1) + self.worker_processes()

    def worker_processes(self) -> int:
        """Processes of one reset worker: the worker and the template holding its snapshot."""
        return 2 if self.engine == "reset" else 0

    def spawn(self, args: list[str], timeout: float = 30.0, prefix: list[str] | None = None,
              env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "mayflyd", *args],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})}, pass_fds=pass_fds)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mayflyd exited with {self.proc.returncode}:\n{self.log()}")
            if f"listening on {self.listen_host}" in self.log():
                return
            time.sleep(0.05)
        self.stop()  # leave no daemon behind a failed test
        raise RuntimeError(f"mayflyd did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str = "GET", path: str = "/", *, host: str | None = None,
                body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 30.0) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.sock = self.connect(timeout)
        try:
            all_headers = dict(headers or {})
            if host is not None:
                all_headers["Host"] = host
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def connect(self, timeout: float) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def get(self, host: str, path: str = "/", **kwargs: Any) -> Reply:
        return self.request("GET", path, host=host, **kwargs)

    def wait_for(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log()[-4000:]}")

    def host_pid(self, tenant: str) -> int:
        """The pid of a tenant's host process as the daemon sees it (its stub, in the daemon's pid namespace)."""
        (host,) = self.status()["tenants"][tenant]["hosts"]
        return int(host["pid"])

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            os.kill(self._signal_target(), signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"mayflyd did not stop on SIGTERM within {timeout}s\n{self.log()}") from None
        return self.proc.returncode

    def _signal_target(self) -> int:
        """The process that gets SIGTERM: the daemon itself."""
        assert self.proc is not None
        return self.proc.pid

    def cgroup_dirs(self) -> list[str]:
        """Any cgroup directories of this daemon still present."""
        base = Path("/sys/fs/cgroup")
        return [str(p) for p in base.glob(f"*/{self.cgroup_prefix}") if p.is_dir()]

    def tenant_processes(self) -> list[int]:
        """Every process in this daemon's cgroups now."""
        pids: set[int] = set()
        for top in self.cgroup_dirs():
            for procs in Path(top).rglob("cgroup.procs"):
                pids.update(int(pid) for pid in procs.read_text().split())
        return sorted(pids)


class Daemon(DaemonProcess):
    """A mayflyd serving `tenants`; programs are given as source text."""

    def __init__(self, workdir: Path, tenants: list[dict[str, Any]], programs: dict[str, str],
                 **top: Any) -> None:
        super().__init__(free_port(), workdir / "daemon.log")
        self.workdir = workdir
        self.cgroup_prefix = f"mayflyd-test-{uuid.uuid4().hex[:10]}"
        programs_dir = workdir / "programs"
        programs_dir.mkdir(parents=True, exist_ok=True)
        for name, source in programs.items():
            (programs_dir / name).write_text(textwrap.dedent(source))
        # A socket path must stay short (108 bytes): not below pytest's tmp dirs.
        socket_dir = tempfile.mkdtemp(prefix="mfa-")
        # Removed when the test lets go of the daemon, not at its stop: some
        # tests start the same daemon again.
        weakref.finalize(self, shutil.rmtree, socket_dir, True)
        self.admin_socket = os.path.join(socket_dir, "admin.sock")
        self.socket_in_config = True
        self.config_path = workdir / "mayflyd.yaml"
        self.write_config(tenants, **top)
        self.zygote = bool(top.get("zygote", True))

    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> Daemon:
        self.spawn(["serve", "--config", str(self.config_path)], timeout, env=env)
        return self

    def write_config(self, tenants: list[dict[str, Any]], **top: Any) -> None:
        """Rewrite the config file (for reload tests); the daemon's own settings stay."""
        config = {"listen": f"127.0.0.1:{self.port}", "cgroup_prefix": self.cgroup_prefix,
                  **({"admin_socket": self.admin_socket} if self.socket_in_config else {}),
                  **top, "tenants": tenants}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def expect_default_admin_socket(self, path: str) -> None:
        """Leave admin_socket out of the config: the daemon must pick `path` by itself."""
        config = yaml.safe_load(self.config_path.read_text())
        del config["admin_socket"]
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.admin_socket, self.socket_in_config = path, False

    def status(self) -> dict[str, Any]:
        from mayflyd.cli.admin_client import admin_request
        code, body = admin_request(self.admin_socket, "GET", "/status")
        assert code == 200, body
        return body

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_root() -> bool:
    return os.geteuid() == 0


def reset_engine_missing() -> str:
    """Why this kernel cannot run the reset engine ("" if it can): tests
    of that engine skip for this capability only, never for a failure."""
    import errno

    from mayflyd import _mayfly
    if not hasattr(_mayfly, "DirtyTracker"):
        return "this build of mayflyd has no reset engine"
    try:
        _mayfly.DirtyTracker().close()
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTTY, errno.ENOSYS):
            return str(exc)
        raise
    return ""


def skip_without_reset_engine(engine: str) -> None:
    missing = reset_engine_missing() if engine == "reset" else ""
    if missing:
        import pytest
        pytest.skip(f"the kernel cannot run the reset engine: {missing}")


class IsolatedDaemon(Daemon):
    """A Daemon inside a pid and network namespace of its own.

    For hostile programs: one that gets past a wall reaches only what lives
    in there (kill(-1) kills the test daemon, not the machine). The test
    reaches the daemon's 127.0.0.1 through a thread that joined its network
    namespace.
    """

    def start(self, timeout: float = 30.0) -> IsolatedDaemon:
        prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--kill-child",
                  sys.executable, "-m", "tests.netns_exec"]
        self._netns: concurrent.futures.ThreadPoolExecutor | None = None
        self.spawn(["serve", "--config", str(self.config_path)], timeout, prefix=prefix)
        return self

    @property
    def daemon_pid(self) -> int:
        """The daemon's pid outside its namespace: the child of unshare."""
        import psutil
        assert self.proc is not None
        (child,) = psutil.Process(self.proc.pid).children()
        return int(child.pid)

    def _join_netns(self) -> None:
        with open(f"/proc/{self.daemon_pid}/ns/net", "rb") as ns:
            if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(CLONE_NEWNET)")

    def connect(self, timeout: float) -> socket.socket:
        if self._netns is None:
            self._netns = concurrent.futures.ThreadPoolExecutor(1, initializer=self._join_netns)
        return self._netns.submit(socket.create_connection, ("127.0.0.1", self.port), timeout).result()

    def _signal_target(self) -> int:
        return self.daemon_pid  # not unshare, which would only pass it on as SIGKILL

    def stop(self, timeout: float = 20.0) -> int:
        try:
            return super().stop(timeout)
        finally:
            if self._netns is not None:
                self._netns.shutdown()


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


UNPRIVILEGED_UID = 65534


def as_unprivileged(uid: int = UNPRIVILEGED_UID) -> list[str]:
    """The command prefix that runs what follows as `uid`, in the mount
    namespace the caller must have made (see tests/unprivileged_exec.py)."""
    import mayflyd
    needed = [sys.prefix, sys.base_prefix, str(Path(mayflyd.__file__).resolve().parents[1]),
              str(Path(__file__).resolve().parents[1])]
    return [sys.executable, "-m", "tests.unprivileged_exec", str(uid), *needed, "--"]


class UnprivilegedDaemon(IsolatedDaemon):
    """An IsolatedDaemon started as an ordinary user (uid 65534), as on a laptop."""

    UID = UNPRIVILEGED_UID

    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> UnprivilegedDaemon:
        prefix = ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--kill-child",
                  sys.executable, "-m", "tests.netns_exec", *as_unprivileged(self.UID)]
        self._netns = None
        if self.socket_in_config:
            os.chown(os.path.dirname(self.admin_socket), self.UID, self.UID)
        self.spawn(["serve", "--config", str(self.config_path)], timeout, prefix=prefix, env=env)
        return self
