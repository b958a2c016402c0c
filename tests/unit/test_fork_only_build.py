"""The build without the reset engine: what every machine but x86_64 gets,
and what MAYFLYD_WITHOUT_RESET_ENGINE=1 gives on x86_64 too (setup.py).

Builds the extension into a temporary directory (a minute or so), puts the
package's Python sources beside it, and uses it from subprocesses and a
daemon with PYTHONPATH pointing there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mayflyd import _mayfly
from tests.daemon_harness import Daemon

ROOT = Path(__file__).resolve().parents[2]
# What the module has only with the reset engine built in.
RESET_ENGINE_NAMES = {"serve_reset", "DirtyTracker", "HOT_LEARN_REWINDS"}


@pytest.fixture(scope="module")
def fork_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("fork-only")
    env = {**os.environ, "MAYFLYD_WITHOUT_RESET_ENGINE": "1"}
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out),
                            "--build-temp", str(out / "temp")],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    # The Python side from the source tree, so that `mayflyd` imports from out alone.
    shutil.copytree(ROOT / "daemon" / "mayflyd", out / "mayflyd", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    yield out
    shutil.rmtree(out, ignore_errors=True)


def run_with(build: Path, code: str) -> str:
    """Runs code in a Python that imports mayflyd (and tests) from build; its stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(build), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_module_has_the_fork_engine_and_not_the_reset_engine(fork_only: Path) -> None:
    out = run_with(fork_only, """
        import json
        from mayflyd import _mayfly
        print(json.dumps({"file": _mayfly.__file__, "names": dir(_mayfly)}))
    """)
    seen = json.loads(out)
    assert seen["file"].startswith(str(fork_only))
    names = set(seen["names"])
    assert {"serve_fork", "zygote_fork", "ENGINE_FORK", "ENGINE_RESET", "MSG_WORKER_READY"} <= names
    assert not names & RESET_ENGINE_NAMES
    if hasattr(_mayfly, "serve_reset"):  # the installed build has it: the difference is exactly that
        assert set(dir(_mayfly)) - names == RESET_ENGINE_NAMES


def test_the_fork_engine_serves(fork_only: Path) -> None:
    out = run_with(fork_only, """
        from tests.unit.test_c_helper import M, Host, read_response
        assert not hasattr(M, "serve_reset")
        host = Host()
        status, headers, body = read_response(host.request(11, path=b"/p", body=b"abc"), 11)
        assert (status, headers["x-path"], body) == (200, "/p", b"cba"), (status, headers, body)
        host.child_exit(11)
        assert host.close() == 0
        print("served")
    """)
    assert out.strip() == "served"


def test_engine_auto_means_fork_and_engine_reset_says_why_not(fork_only: Path, tmp_path: Path) -> None:
    tenants = [{"name": "auto", "hosts": ["auto.localhost"], "program": "programs/p.py", "engine": "auto"},
               {"name": "reset", "hosts": ["reset.localhost"], "program": "programs/p.py", "engine": "reset"}]
    program = "def on_client_request(request):\n    return 'hello'\n"
    daemon = Daemon(tmp_path, tenants, {"p.py": program})
    daemon.start(env={"PYTHONPATH": str(fork_only)})
    try:
        assert daemon.get("auto.localhost").status == 200
        status = daemon.status()["tenants"]
        assert status["auto"]["engine"] == "fork"
        assert "engine auto means fork here: this build of mayflyd has no reset engine" in daemon.log()
        daemon.wait_for(lambda: daemon.status()["tenants"]["reset"]["error"], what="the reset tenant's error")
        error = daemon.status()["tenants"]["reset"]["error"]
        assert "engine: reset cannot run here: this build of mayflyd has no reset engine" in error
        assert "use engine: fork" in error
        assert daemon.get("reset.localhost").status == 503
    finally:
        daemon.stop()
