"""What on_init() may not leave behind: memory that every request would share.

A sandbox is a fork of the sealed host (or a worker rewound to it), so
private memory is copied on write, but shared memory is one object for the
host and every request: what one request writes there, or a seal it adds
to a memfd, the next (and a concurrent) one sees. The rule is the same for
both engines: the seal refuses to serve, with an error naming what it
found, when the host holds any of

* a shared mapping that may be made writable (``VmFlags`` ``sh`` and ``mw``
  in smaps: anonymous ``MAP_SHARED``, a shared mapping of ``/dev/zero``, of a
  memfd, of ``/dev/shm``, or an attached SysV segment);
* a memfd, or a POSIX shared memory file (``/dev/shm/...``), open as an fd:
  a sandbox's private copy of an inherited file is a new open file
  description of the same inode, whose contents and seals stay shared.

A shared mapping that can never be written (a file opened read-only, as
glibc maps ``gconv-modules.cache``) is kept: no request can change it.
Requests themselves cannot make these for later requests: the request
filter denies shmget/shmat, and a memfd a request makes goes with its
sandbox (or is closed, and unmapped, by the rewind).
"""
from __future__ import annotations

import os

__all__ = ["shared_memory_left"]

_MEMFD_PREFIX = "/memfd:"
_POSIX_SHM_PREFIX = "/dev/shm/"


def _kind(path: str) -> str:
    path = path.removesuffix(" (deleted)")
    if path.startswith(_MEMFD_PREFIX):
        return f"memfd {path.removeprefix(_MEMFD_PREFIX)!r}"
    if path.startswith("/SYSV"):
        return f"SysV shared memory segment {path.removeprefix('/SYSV')}"
    if path.startswith("/dev/zero") or not path:
        return "anonymous shared memory"
    if path.startswith(_POSIX_SHM_PREFIX):
        return f"POSIX shared memory {path.removeprefix(_POSIX_SHM_PREFIX)!r}"
    return path


def _writable_shared_mappings() -> list[str]:
    """Each shared mapping that may be made writable, as 'what at start-end'."""
    with open("/proc/self/maps") as maps:
        # Most hosts have no shared mapping but read-only ones (or none):
        # smaps, which walks every page of the heap, only when one is there.
        if not any(line.split(maxsplit=2)[1][3] == "s" for line in maps):
            return []
    found: list[str] = []
    header: list[str] = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            if line.startswith("VmFlags:"):
                flags = line.split()[1:]
                if "sh" in flags and "mw" in flags:
                    path = header[5] if len(header) > 5 else ""
                    found.append(f"{_kind(path)} at {header[0]}")
            elif not line[:1].isupper():  # a mapping's first line: "start-end perms offset dev inode path"
                header = line.rstrip("\n").split(maxsplit=5)
    return found


def _shared_files() -> list[str]:
    """Each memfd or POSIX shared memory file held open, as 'what (fd N)'."""
    found: list[str] = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the listing's own fd, closed already
        if target.startswith((_MEMFD_PREFIX, _POSIX_SHM_PREFIX)):
            found.append(f"{_kind(target)} (fd {name})")
    return found


def shared_memory_left() -> str | None:
    """An error text naming every piece of shared memory the host holds, or None."""
    if not os.path.isdir("/proc/self/fd"):
        return None  # no procfs in view (no walls at all): nothing to look through
    found = _writable_shared_mappings() + _shared_files()
    if not found:
        return None
    return ("on_init() left shared memory, which every request would share: " + "; ".join(found)
            + ". Use private memory (MAP_PRIVATE, no memfd, no SysV or POSIX shm), "
            "or unmap and close it before on_init() returns")
