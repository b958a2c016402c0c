"""Run a command as an unprivileged user that can still read the Python it needs.

    python -m tests.unprivileged_exec UID PATH... -- CMD...

Must start as root in a mount namespace of its own. This machine's Python may
live below a directory only root can traverse (/root is 0700); each such
directory is covered, in this mount namespace only, by a tmpfs holding bind
mounts of just the PATHs below it. Then the process becomes UID (no groups, no
capabilities) and execs CMD: a daemon started without root, as on a laptop.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile


def _blocking_ancestor(path: str) -> str | None:
    """The topmost ancestor of path that others cannot traverse."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def expose(paths: list[str]) -> None:
    by_ancestor: dict[str, list[str]] = {}
    for path in paths:
        ancestor = _blocking_ancestor(path)
        if ancestor is not None:
            by_ancestor.setdefault(ancestor, []).append(path)
    _mount("--make-rprivate", "/")
    for ancestor, inside in by_ancestor.items():
        stage = tempfile.mkdtemp(prefix="mayflyd-expose-")
        _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", stage)
        for path in inside:
            target = os.path.join(stage, os.path.relpath(path, ancestor))
            if os.path.isdir(path):
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                open(target, "w").close()
            _mount("--bind", path, target)
        _mount("--rbind", stage, ancestor)
        # The bind at the ancestor stands alone now: the staging directory,
        # a real one in /tmp, goes (it would be left behind by every run).
        subprocess.run(["umount", "--lazy", stage], check=True)
        os.rmdir(stage)


def main() -> None:
    uid = int(sys.argv[1])
    split = sys.argv.index("--")
    expose([os.path.realpath(p) for p in sys.argv[2:split]])
    command = sys.argv[split + 1:]
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
