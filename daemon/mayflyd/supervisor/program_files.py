"""What a tenant's program is made of on disk: its version and its fingerprint.

The version is a hash of the contents (what the status API shows and what
decides whether a change needs a reload); the fingerprint is cheap (stat
only) and is what the watcher polls.
"""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

__all__ = ["program_files", "program_version", "program_fingerprint"]

# A program directory bigger than this is not a program; stop walking there.
_MAX_FILES = 2000
# Of a larger file, only this much is hashed (with its size): the daemon
# reads these files as root and must not be made to read forever.
_MAX_HASHED = 16 * 1024 * 1024


def program_files(program: Path, skip: Path | None = None) -> list[Path]:
    """The program file, or every file of its package directory (or root), sorted.

    Symbolic links inside a package directory are not followed (os.walk's
    default for directories; links to files are listed, and read_for_hash
    refuses them). `skip`: a directory left out, the tenant's packages when
    they lie inside its root (installed, not edited: not watched).
    """
    if not program.is_dir():
        return [program]
    files: list[Path] = []
    for root, dirs, names in os.walk(program):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith(".")
                         and Path(root, d) != skip)
        files.extend(Path(root) / name for name in sorted(names) if not name.endswith(".pyc"))
        if len(files) >= _MAX_FILES:
            break
    return files[:_MAX_FILES]


def program_version(program: Path, skip: Path | None = None) -> str:
    """12 hex digits of a SHA-256 over the files' names and contents."""
    digest = hashlib.sha256()
    for path in program_files(program, skip):
        digest.update(str(path.relative_to(program) if program.is_dir() else path.name).encode())
        digest.update(b"\0")
        digest.update(_read_for_hash(path))
        digest.update(b"\0")
    return digest.hexdigest()[:12]


def _read_for_hash(path: Path) -> bytes:
    """A regular file's contents (capped); never follows a link, never blocks on a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return f"unreadable: {exc.errno}".encode()
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"not a regular file: {stat.S_IFMT(st.st_mode):o}".encode()
        return f.read(_MAX_HASHED) + f"size {st.st_size}".encode()


def program_fingerprint(program: Path, skip: Path | None = None) -> tuple[tuple[str, int, int, int], ...]:
    """(name, mtime_ns, size, inode) of every file: changes whenever an editor saves."""
    result = []
    for path in program_files(program, skip):
        try:
            st = path.stat()
        except OSError:
            result.append((str(path), -1, -1, -1))
            continue
        result.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)
