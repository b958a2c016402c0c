"""The seal's check for shared memory (host/shared_memory.py), in a forked child of its own."""
from __future__ import annotations

import mmap
import os
from collections.abc import Callable

from mayflyd.host.shared_memory import shared_memory_left


def _in_child(setup: Callable[[], object]) -> str:
    """What shared_memory_left() says in a child after setup() (kept alive until then)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            kept = setup()
            os.write(w, str(shared_memory_left()).encode())
            del kept
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as out:
        text = out.read().decode()
    os.waitpid(pid, 0)
    return text


def test_private_and_read_only_shared_memory_pass() -> None:
    def setup() -> object:
        with open(__file__, "rb") as f:
            return (mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE),
                    mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ))
    assert _in_child(setup) == "None"


def test_anonymous_shared_memory_is_named() -> None:
    said = _in_child(lambda: mmap.mmap(-1, 4096, flags=mmap.MAP_SHARED))
    assert said.startswith("on_init() left shared memory, which every request would share: "
                           "anonymous shared memory at "), said


def test_a_memfd_is_named_with_its_fd() -> None:
    said = _in_child(lambda: os.memfd_create("left-open"))
    assert "memfd 'left-open' (fd " in said, said
