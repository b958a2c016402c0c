"""The sanitizer run tests the instrumented extension, not the installed one.

scripts/sanitized_c_tests.sh builds mayflyd with -fsanitize=... into a
directory of its own, puts it first on PYTHONPATH and names it (and the
sanitizers) in the environment; a stale PYTHONPATH or a build that lost its
flags would otherwise pass silently against the installed extension.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mayflyd import _mayfly

SANITIZED_LIB = os.environ.get("MAYFLYD_SANITIZED_LIB", "")
SANITIZERS = [s for s in os.environ.get("MAYFLYD_SANITIZERS", "").split(",") if s]
# Per sanitizer: a symbol only its instrumentation calls, and its runtime library.
INSTRUMENTATION = {"address": (b"__asan_report_load", "libasan.so"),
                   "undefined": (b"__ubsan_handle_", "libubsan.so")}

pytestmark = pytest.mark.skipif(not SANITIZED_LIB, reason="not the sanitizer run (MAYFLYD_SANITIZED_LIB unset)")


def test_the_loaded_extension_is_the_sanitized_build() -> None:
    assert Path(_mayfly.__file__).resolve().is_relative_to(Path(SANITIZED_LIB).resolve()), _mayfly.__file__


@pytest.mark.parametrize("sanitizer", SANITIZERS or ["none named"])
def test_the_extension_is_instrumented(sanitizer: str) -> None:
    assert sanitizer in INSTRUMENTATION, f"MAYFLYD_SANITIZERS names an unknown sanitizer: {sanitizer}"
    symbol, runtime = INSTRUMENTATION[sanitizer]
    assert symbol in Path(_mayfly.__file__).read_bytes()
    assert runtime in Path("/proc/self/maps").read_text()
