"""The host's modules import nothing of the supervisor's.

Every tenant's host (and its zygote) is a Python process of its own; what it
imports stays resident in it for the tenant's life, so the supervisor's
libraries (aiohttp, PyYAML, prometheus_client) and packages would be paid
once per idle tenant. Checked in a fresh interpreter started the way the
supervisor starts hosts (-E -s, the package's parent first on sys.path).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import mayflyd

FORBIDDEN = ("aiohttp", "yaml", "prometheus_client", "mayflyd.supervisor", "mayflyd.config")
PACKAGE_PARENT = str(Path(mayflyd.__file__).resolve().parents[1])


def modules_after_import(module: str) -> set[str]:
    script = (f"import json, sys; sys.path.insert(0, {PACKAGE_PARENT!r}); import {module}; "
              "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-E", "-s", "-c", script], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    return set(json.loads(out))


def forbidden_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


@pytest.mark.parametrize("module", ["mayflyd.host.sandbox_host", "mayflyd.host.zygote"])
def test_host_modules_import_nothing_of_the_supervisor(module: str) -> None:
    modules = modules_after_import(module)
    assert module in modules
    assert forbidden_in(modules) == []


def test_the_check_sees_a_forbidden_import() -> None:
    """Guards the test itself: the supervisor's daemon module pulls all of them in."""
    found = forbidden_in(modules_after_import("mayflyd.supervisor.daemon"))
    assert {"aiohttp", "yaml", "prometheus_client", "mayflyd.supervisor", "mayflyd.config"} <= set(found)
