"""Where `mayflyd status` and `reload` find the admin socket: only the config's
admin_socket key is read, so a broken config does not hide a running daemon."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mayflyd.cli.admin_socket import (
    AdminSocketUnknown,
    configured_admin_socket,
    default_admin_socket,
    user_runtime_dir,
)
from mayflyd.config import DEFAULT_ADMIN_SOCKET


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mayflyd.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [
    "admin_socket: /run/x/admin.sock\ntenants: []\nbogus_key: 1\n",              # invalid, but YAML
    "listen: [\nadmin_socket: '/run/x/admin.sock'  # ours\ntenants:\n - {name\n",  # not even YAML
    "tenants:\n  - name: a\n\tprogram: x\nadmin_socket: /run/x/admin.sock\n",     # a tab, before the key
])
def test_the_key_is_read_from_a_broken_config(tmp_path: Path, text: str) -> None:
    assert configured_admin_socket(config(tmp_path, text)) == "/run/x/admin.sock"


@pytest.mark.parametrize("text", ["", "tenants: [\n", "- a list\n", "listen: 1.2.3.4:80\n",
                                  "tenants:\n  - admin_socket: /nested/is/not/it\n"])
def test_no_key_is_none(tmp_path: Path, text: str) -> None:
    assert configured_admin_socket(config(tmp_path, text)) is None


@pytest.mark.parametrize("text", ["admin_socket: run/admin.sock\n", "admin_socket: [1]\n",
                                  "x: [\nadmin_socket: 'unterminated\n"])
def test_a_key_that_is_no_path_is_an_error(tmp_path: Path, text: str) -> None:
    path = config(tmp_path, text)
    with pytest.raises(AdminSocketUnknown, match=f"{path}: admin_socket: "):
        configured_admin_socket(path)


def test_an_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AdminSocketUnknown, match="nope.yaml: cannot read: No such file"):
        configured_admin_socket(tmp_path / "nope.yaml")


def test_root_uses_run_mayflyd() -> None:
    assert default_admin_socket(0, {"XDG_RUNTIME_DIR": "/run/user/0"}) == DEFAULT_ADMIN_SOCKET


def test_a_user_uses_its_runtime_dir(tmp_path: Path) -> None:
    ours = os.geteuid()
    assert user_runtime_dir(ours, {"XDG_RUNTIME_DIR": str(tmp_path)}) == str(tmp_path / "mayflyd")
    assert default_admin_socket(4242, {}) == "/tmp/mayflyd-4242/admin.sock"
    # Not the user's own (inherited through sudo, say), relative, or missing: the fallback.
    for runtime in (str(tmp_path), "run/user/4242", str(tmp_path / "missing")):
        assert user_runtime_dir(4242, {"XDG_RUNTIME_DIR": runtime}) == "/tmp/mayflyd-4242"
