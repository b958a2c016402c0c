from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import HOST_VARIANTS, IsolatedDaemon, host_variant, skip_without_reset_engine

REPO = Path(__file__).resolve().parents[2]
ATTACKS = Path(__file__).resolve().parent / "attacks.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the escape suite runs as root, in namespaces")


class HealthProbe:
    """Requests the hello tenant throughout the attacks; every answer must be a 200."""

    def __init__(self, daemon: IsolatedDaemon) -> None:
        self.daemon = daemon
        self.results: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status = self.daemon.get("hello.localhost", timeout=10).status
            except OSError:
                status = 0
            self.results.append((status, time.monotonic() - started))
            time.sleep(0.02)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _limits(**overrides: object) -> dict[str, object]:
    return {"memory": "512MiB", "request_memory": "256MiB", "request_timeout_ms": 5000,
            "request_cpu_ms": 1500, "max_response": "16MiB", "concurrency": 16, **overrides}


@pytest.fixture(scope="package", params=HOST_VARIANTS)
def isolated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedDaemon]:
    engine, zygote = host_variant(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("isolation")
    (workdir / "programs").mkdir()
    shutil.copy(REPO / "config" / "programs" / "hello_pythran.py", workdir / "programs" / "hello.py")
    (workdir / "programs" / "secret").mkdir()
    (workdir / "programs" / "secret" / "__init__.py").write_text(
        "SECRET = 'tenant-b-secret'\ndef on_client_request(request):\n    return SECRET\n")
    tenants = [
        {"name": "hello", "hosts": ["hello.localhost"], "program": "programs/hello.py"},
        {"name": "attacker", "hosts": ["attacker.localhost"], "program": "programs/attacks.py",
         "limits": _limits()},
        {"name": "killer", "hosts": ["killer.localhost"], "program": "programs/attacks.py",
         "seccomp_action": "kill", "limits": _limits()},
        {"name": "looper", "hosts": ["looper.localhost"], "program": "programs/attacks.py",
         "network": "loopback", "limits": _limits()},
        {"name": "secret", "hosts": ["secret.localhost"], "program": "programs/secret"},
    ]
    for tenant in tenants:
        tenant["engine"] = engine
    # A short header timeout: the slow-body attack is cut at it (the body gets as long as the head).
    daemon = IsolatedDaemon(workdir, tenants, {"attacks.py": ATTACKS.read_text()}, zygote=zygote,
                            header_timeout_ms=3000)
    daemon.engine = engine
    os.environ["MAYFLYD_TEST_SECRET"] = "daemon-environment-secret"
    try:
        daemon.start()
    finally:
        del os.environ["MAYFLYD_TEST_SECRET"]
    probe = HealthProbe(daemon)
    probe.start()
    daemon.health = probe  # type: ignore[attr-defined]
    try:
        yield daemon
    finally:
        probe.stop()
        code = daemon.stop()
        assert code == 0, daemon.log()[-5000:]
        assert daemon.cgroup_dirs() == [], "cgroups left behind"
        statuses = {status for status, _ in probe.results}
        slowest = max(elapsed for _, elapsed in probe.results)
        assert statuses == {200}, f"the health tenant answered {statuses} during the attacks"
        # Generous: a starved or stuck daemon fails this, a noisy machine does not.
        assert slowest < 3.0, f"a health request took {slowest:.2f}s during the attacks"
