"""systemd/mayflyd.service and mayflyd.socket: systemd itself accepts every line of them.

`systemd-analyze verify` needs no running systemd, but it checks that the
ExecStart= binary exists; the test points it at a stand-in in a temporary
directory. The CI installs systemd (for systemd-analyze) with apt.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "mayflyd.service"
SOCKET_UNIT = UNIT.with_suffix(".socket")
INSTALLED_BINARY = "/opt/mayflyd/bin/mayflyd"

systemd_analyze = shutil.which("systemd-analyze") or (
    "/usr/bin/systemd-analyze" if Path("/usr/bin/systemd-analyze").exists() else None)
needs_systemd_analyze = pytest.mark.skipif(systemd_analyze is None, reason="systemd-analyze is not installed")


def unit_settings(unit: Path = UNIT) -> dict[str, list[str]]:
    """Every Key=value of the unit, in order; a key may repeat."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_is_what_docs_and_daemon_expect() -> None:
    settings = unit_settings()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecReload": "/bin/kill -HUP $MAINPID",
        "Delegate": "yes", "KillMode": "mixed", "Restart": "on-failure", "RestartSec": "1",
        "WatchdogSec": "30", "TimeoutStopSec": "30", "LimitNOFILE": "65536",
        "RuntimeDirectory": "mayflyd", "RuntimeDirectoryMode": "0700",
    }
    for key, value in expected.items():
        assert settings.get(key) == [value], key
    assert settings["ExecStart"] == [f"{INSTALLED_BINARY} serve --config /etc/mayflyd/mayflyd.yaml"]
    # What would stop mayflyd from building its walls.
    for forbidden in ("RestrictNamespaces", "ProtectControlGroups", "ProtectHostname", "PrivateUsers",
                      "MemoryDenyWriteExecute", "User", "DynamicUser", "UMask"):
        assert forbidden not in settings, forbidden
    caps = set(settings["CapabilityBoundingSet"][0].split())
    assert {"CAP_SYS_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_SYS_RESOURCE", "CAP_KILL",
            "CAP_NET_ADMIN"} <= caps
    denied = settings["SystemCallFilter"][0]
    assert denied.startswith("~")
    for group in ("@mount", "@privileged", "@system-service"):
        assert group not in denied


def test_the_socket_unit_listens_where_the_bundled_config_does() -> None:
    from mayflyd.config import load_config

    settings = unit_settings(SOCKET_UNIT)
    config = load_config(UNIT.parents[1] / "config" / "mayflyd.yaml")
    assert settings["ListenStream"] == [f"{config.listen_host}:{config.listen_port}"]
    assert settings["Service"] == [UNIT.name]
    assert settings["WantedBy"] == ["sockets.target"]
    # The socket is optional: the service must start without it.
    service = unit_settings()
    for key in ("Requires", "BindsTo", "Sockets"):
        assert all("mayflyd.socket" not in value for value in service.get(key, [])), key


@needs_systemd_analyze
def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    assert systemd_analyze is not None
    binary = tmp_path / "bin" / "mayflyd"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    unit = tmp_path / "mayflyd.service"
    unit.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={binary} "))
    socket_unit = tmp_path / SOCKET_UNIT.name
    socket_unit.write_text(SOCKET_UNIT.read_text())

    result = subprocess.run([systemd_analyze, "verify", "--man=no", str(socket_unit), str(unit)],
                            capture_output=True, text=True, timeout=120)
    # verify exits 0 even for unknown keys and bad values, which it only logs,
    # naming the file: any line about our files is a failure.
    about_unit = [line for line in result.stderr.splitlines()
                  if any(str(u) in line or u.name in line for u in (unit, socket_unit))]
    assert result.returncode == 0, result.stderr
    assert about_unit == [], result.stderr
    assert not re.search(r"Unknown (key|section)|Failed to parse", result.stderr), result.stderr


@needs_systemd_analyze
def test_verify_would_catch_a_misspelt_key(tmp_path: Path) -> None:
    """The check above is not vacuous: systemd-analyze does report a bad line."""
    assert systemd_analyze is not None
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nType=notify\nExecStart=/bin/true\nDelegte=yes\n")
    result = subprocess.run([systemd_analyze, "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=120)
    assert "Delegte" in result.stderr, result.stderr
