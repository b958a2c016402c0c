"""Bring up the loopback of a fresh network namespace, then exec the command.

Used as `unshare --pid --fork --mount-proc --net -- python -m tests.netns_exec CMD...`
so that the daemon under test listens on a 127.0.0.1 of its own.
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


if __name__ == "__main__":
    loopback_up()
    os.execv(sys.argv[1], sys.argv[1:])
