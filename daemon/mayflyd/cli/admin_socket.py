"""Where the admin socket is, found without validating the whole config.

`mayflyd status` and `mayflyd reload` are needed most when the config file is
broken, so they read only its admin_socket key and tolerate everything else.
A daemon started without root cannot create /run/mayflyd: unless its config
names a socket, it puts its socket in a runtime directory of its user, and
the commands run by that user look there too.
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

import yaml

from mayflyd.config import DEFAULT_ADMIN_SOCKET

__all__ = ["AdminSocketUnknown", "configured_admin_socket", "default_admin_socket", "user_runtime_dir"]

_SOCKET_NAME = "admin.sock"
# A top-level key starts a line: found this way even when the YAML around it is broken.
_TOP_LEVEL_KEY = re.compile(r"^admin_socket[ \t]*:(.*)$", re.MULTILINE)


class AdminSocketUnknown(Exception):
    """The config file cannot say where the admin socket is."""


def user_runtime_dir(uid: int, environ: Mapping[str, str]) -> str:
    """The directory a non-root daemon of `uid` puts its admin socket in:
    $XDG_RUNTIME_DIR/mayflyd when XDG_RUNTIME_DIR is a directory of that user
    (not one inherited through sudo), else /tmp/mayflyd-UID. The admin server
    creates it 0700 and refuses it if it belongs to someone else."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                return os.path.join(runtime, "mayflyd")
    return f"/tmp/mayflyd-{uid}"


def default_admin_socket(uid: int | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The admin socket of a daemon whose config names none: /run/mayflyd for
    root, the user's runtime directory for anyone else."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return DEFAULT_ADMIN_SOCKET
    return os.path.join(user_runtime_dir(uid, os.environ if environ is None else environ), _SOCKET_NAME)


def _admin_socket_key(text: str) -> object:
    """The admin_socket value of config `text`, None if absent."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError:
        # Broken YAML elsewhere must not hide the key: read its own line.
        match = _TOP_LEVEL_KEY.search(text)
        if match is None:
            return None
        try:
            return yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            raise AdminSocketUnknown(f"admin_socket: not a YAML value: {match.group(1).strip()!r}") from exc
    return document.get("admin_socket") if isinstance(document, dict) else None


def configured_admin_socket(path: Path) -> str | None:
    """The admin socket the config file at `path` names, None if it names
    none. Only that key is read: the rest of the file may be invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise AdminSocketUnknown(f"{path}: cannot read: {reason}") from exc
    try:
        value = _admin_socket_key(text)
    except AdminSocketUnknown as exc:
        raise AdminSocketUnknown(f"{path}: {exc}") from None
    if value is None:
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise AdminSocketUnknown(f"{path}: admin_socket: must be an absolute path, got {value!r}")
    return value
