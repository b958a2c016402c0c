"""The front end's PROXY header and forwarded-list parsing (csrc/front/proxy.c),
as C unit tests: tests/front/proxy_test.c, built with the front end's flags
(MAYFLYD_FRONT_TEST_CFLAGS adds the sanitizers) and run."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.unit.test_front_http import CFLAGS, REPO, pytestmark  # noqa: F401  (skips without llhttp)


def test_proxy_parsing_in_c(tmp_path: Path) -> None:
    binary = tmp_path / "proxy_test"
    sources = [REPO / "tests" / "front" / "proxy_test.c", REPO / "csrc" / "front" / "proxy.c"]
    subprocess.run(["gcc", *CFLAGS, "-Wall", "-Wextra", "-Werror", *map(str, sources), "-o", str(binary)],
                   check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "all passed"

