"""mayflyd-front's walls: an unprivileged user, and its own seccomp filter.

The front end (the echo test build, and the real one) runs as uid 65534 with
no capabilities and the filter of seccomp_policy.build_front_filter() given
with --seccomp-fd. The echo build's test-only paths try what the filter
forbids: /__try_open answers open()'s errno (EPERM, though nobody may read
/etc/passwd), /__try_unshare gets the process killed (SIGSYS).
"""
from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mayflyd.supervisor.seccomp_policy import build_front_filter
from tests.unit.test_front_http import EXTRA, REPO, _build, pytestmark  # noqa: F401  (skips without llhttp)

NOBODY = 65534
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="starts the front end as another user")
# A sanitizer's runtime makes calls of its own (its threads, /proc reads) that the filter refuses.
unsanitized = pytest.mark.skipif(any(flag.startswith("-fsanitize") for flag in EXTRA),
                                 reason="the filter is for the front end, not a sanitizer's runtime")


@pytest.fixture(scope="module")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    out = tmp_path_factory.mktemp("front-walls")
    (out / "echo").mkdir()
    (out / "main").mkdir()
    built = {"echo": _build(out / "echo", REPO / "tests" / "front" / "echo_backend.c"),
             "main": _build(out / "main", REPO / "csrc" / "front" / "main.c")}
    # pytest's directories are root's alone: nobody could not exec from there.
    with tempfile.TemporaryDirectory(prefix="mayflyd-front-walls-") as shared:
        os.chmod(shared, 0o755)
        yield {name: Path(shutil.copy(path, shared + "/" + name)) for name, path in built.items()}


def filter_fd(bpf: bytes) -> int:
    fd = os.memfd_create("front-filter")
    os.write(fd, bpf)
    return fd


@contextmanager
def running(binary: Path, *options: str, fds: tuple[int, ...] = (), user: int | None = NOBODY,
            ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    # No capabilities survive the change of uid (no keep-caps), and no supplementary group.
    proc = subprocess.Popen([str(binary), "--listen", "127.0.0.1:0", "--threads", "2", *options],
                            pass_fds=fds, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            user=user, group=user, extra_groups=[] if user is not None else None)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = proc.stdout.readline().decode()
        assert "listening on" in line, proc.stderr.read().decode()
        yield proc, int(line.split(" port ")[1].split()[0])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@contextmanager
def confined(binary: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The front end as nobody, with the filter of build_front_filter()."""
    fd = filter_fd(build_front_filter())
    try:
        with running(binary, "--seccomp-fd", str(fd), fds=(fd,)) as started:
            yield started
    finally:
        os.close(fd)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {key: value.strip() for key, _, value in (line.partition(":") for line in f)}


@root_only
@unsanitized
def test_the_front_end_runs_confined(binaries: dict[str, Path]) -> None:
    with confined(binaries["echo"]) as (proc, port):
        status = status_fields(proc.pid)
        assert status["Uid"].split() == [str(NOBODY)] * 4
        assert status["Gid"].split() == [str(NOBODY)] * 4 and status["Groups"] == ""
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
        assert status["Threads"] == "3"  # the loops started after the filter
        # The filter's fd is closed once read.
        assert all("front-filter" not in os.readlink(f"/proc/{proc.pid}/fd/{n}")
                   for n in os.listdir(f"/proc/{proc.pid}/fd"))

        code, body = get(port, "/delay/20/x")
        assert code == 200 and b'"/delay/20/x"' in body
        assert get(port, "/big/300000") == (200, b"x" * 300000)
        # Refused with EPERM: no file opens once the filter is in.
        assert get(port, "/__try_open") == (200, b"1")
        # A namespace: the process dies at once.
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            get(port, "/__try_unshare")
        assert proc.wait(5) == -signal.SIGSYS


@root_only
def test_without_the_filter_the_same_user_could_open_files(binaries: dict[str, Path]) -> None:
    """The control for the test above: EPERM comes from the filter, not the user."""
    with running(binaries["echo"]) as (_proc, port):
        assert get(port, "/__try_open") == (200, b"0")


@root_only
@unsanitized
def test_the_real_front_end_serves_confined(binaries: dict[str, Path]) -> None:
    with confined(binaries["main"]) as (proc, port):
        code, body = get(port, "/")
        assert code == 503 and b"no tenant is connected" in body
        assert status_fields(proc.pid)["Seccomp"] == "2"
        proc.terminate()
        assert proc.wait(5) == 0


@root_only
def test_root_without_a_filter_is_refused(binaries: dict[str, Path]) -> None:
    done = subprocess.run([str(binaries["main"]), "--listen", "127.0.0.1:0"], capture_output=True, timeout=10)
    assert done.returncode == 2
    assert b"refusing to run as root without --seccomp-fd" in done.stderr


@pytest.mark.parametrize("bpf", [b"", b"12345", b"\0" * 8 * 4097])
def test_a_filter_that_is_no_bpf_program_is_refused(binaries: dict[str, Path], bpf: bytes) -> None:
    fd = filter_fd(bpf)
    try:
        done = subprocess.run([str(binaries["main"]), "--listen", "127.0.0.1:0", "--seccomp-fd", str(fd)],
                              pass_fds=(fd,), capture_output=True, timeout=10)
        assert done.returncode == 2
        assert b"is not a BPF program of 1..4096 instructions" in done.stderr
    finally:
        os.close(fd)
