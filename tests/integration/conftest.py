from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import HOST_VARIANTS, Daemon, host_variant, skip_without_reset_engine
from tests.integration import programs

SEED_PROGRAM = Path(__file__).resolve().parents[2] / "config" / "programs" / "hello_pythran.py"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox walls need root")


def limits(**overrides: object) -> dict[str, object]:
    return {"memory": "256MiB", "request_timeout_ms": 3000, "max_body": "1MiB", "concurrency": 32, **overrides}


@pytest.fixture(scope="module", params=HOST_VARIANTS)
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon with a tenant per behaviour under test, once per engine (and once with fresh hosts)."""
    engine, zygote = host_variant(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("mayflyd")
    (workdir / "programs").mkdir()
    shutil.copy(SEED_PROGRAM, workdir / "programs" / "hello_pythran.py")
    echo = (Path(__file__).resolve().parents[2] / "config" / "programs" / "echo.py").read_text()
    tenants = [
        {"name": "hello", "hosts": ["hello.localhost"], "default": True,
         "program": "programs/hello_pythran.py", "limits": limits()},
        {"name": "echo", "hosts": ["echo.localhost", "*.echo.test"], "program": "programs/echo.py",
         "limits": limits()},
        {"name": "state", "hosts": ["state.localhost"], "program": "programs/state.py", "limits": limits()},
        {"name": "crashy", "hosts": ["crashy.localhost"], "program": "programs/crashy.py", "limits": limits()},
        {"name": "slow", "hosts": ["slow.localhost"], "program": "programs/slow.py",
         "limits": limits(request_timeout_ms=500)},
        {"name": "small", "hosts": ["small.localhost"], "program": "programs/slow.py",
         "limits": limits(max_body="1KiB", concurrency=1, queue=1)},
        {"name": "badresp", "hosts": ["badresp.localhost"], "program": "programs/badresp.py",
         "limits": limits(max_response="1MiB")},
        {"name": "initfail", "hosts": ["initfail.localhost"], "program": "programs/initfail.py",
         "limits": limits()},
        {"name": "whoami", "hosts": ["whoami.localhost"], "program": "programs/whoami.py", "uid": 201234,
         "limits": limits()},
        # pool 4: the reset engine runs the memory bomb's four requests side by
        # side too (its workers share the snapshot, so two no longer fill 64 MiB).
        {"name": "hog", "hosts": ["hog.localhost"], "program": "programs/hog.py", "pool": 4,
         "limits": limits(memory="64MiB", request_memory="32MiB", request_timeout_ms=10000)},
        {"name": "victim", "hosts": ["victim.localhost"], "program": "programs/victim.py", "limits": limits()},
        {"name": "leftovers", "hosts": ["leftovers.localhost"], "program": "programs/leftovers.py",
         "limits": limits()},
        {"name": "threadleft", "hosts": ["threadleft.localhost"], "program": "programs/threadleft.py",
         "limits": limits()},
    ]
    for tenant in tenants:
        tenant["engine"] = engine
    sources = {
        "echo.py": echo, "state.py": programs.STATE, "crashy.py": programs.CRASHY, "slow.py": programs.SLOW,
        "badresp.py": programs.BAD_RESPONSES, "initfail.py": programs.INIT_FAILS, "whoami.py": programs.WHOAMI,
        "hog.py": programs.MEMORY_HOG, "victim.py": programs.VICTIM, "leftovers.py": programs.LEFTOVERS,
        "threadleft.py": programs.THREAD_LEFT,
    }
    yield from serving(Daemon(workdir, tenants, sources, zygote=zygote), engine)


def serving(d: Daemon, engine: str) -> Iterator[Daemon]:
    """A module fixture's body: `d` started with its tenants on `engine`,
    stopped cleanly after the module's tests, leaving no cgroup."""
    d.engine = engine
    d.start()
    try:
        yield d
    finally:
        code = d.stop()
        assert code == 0, d.log()
        assert d.cgroup_dirs() == [], "cgroups left behind"
