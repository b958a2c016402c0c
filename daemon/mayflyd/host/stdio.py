"""A host's fds 0-2, which no other tenant, and no other request, may share.

fd 0: a zygote's hosts would inherit the zygote's /dev/null, one open file
description for every tenant, whose status flags and locks any of them can
set and all of them see: each host opens its own (:func:`own_stdin`).

fds 1 and 2 are the host's pipes to the supervisor (pipes, never
sockets, which cannot be reopened). Each sandbox reopens them through
/proc/self/fd (csrc/walls/private_files.c) for a file description of its
own, which the tenant's uid may do only if the pipe lets it: the
supervisor makes each with :func:`let_sandboxes_reopen`, writable by others
and readable by its owner (the daemon) alone, so that a request can reopen
its write end but never read what another request logged.
"""
from __future__ import annotations

import os
import stat

__all__ = ["STDIO_PIPE_MODE", "let_sandboxes_reopen", "own_stdin"]

STDIO_PIPE_MODE = 0o622  # owner rw (the daemon reads), everyone else write only


def let_sandboxes_reopen(fd: int) -> None:
    """The supervisor's side: a pipe at fd may be reopened for writing (not
    reading) by the tenant's uid; anything else is left as it is."""
    if stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.fchmod(fd, STDIO_PIPE_MODE)


def own_stdin() -> None:
    """fd 0: a /dev/null of this host's own."""
    fd = os.open("/dev/null", os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)
