"""f. The floor of mayflyd's shape: its front end, one hop, no sandbox.

    python -m bench.hop_floor PROGRAM PORT

mayflyd-front as the daemon runs it (the same executable, control channel,
data channels and per-request socketpair, one loop per core of this
process's affinity), but the "host" on the other end of the data channels
is one plain process that runs the program's handler in place: no fork, no
rewind, no walls. Whatever a sandbox costs comes on top of this, so its
throughput is the most the daemon's present shape can reach on the same
cores. HOP_FLOOR_FILTER=1 confines the front end with the daemon's seccomp
filter, to measure what the filter costs.
"""
from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from mayflyd import protocol
from mayflyd.front_protocol import RouteLimits, TenantRoute
from mayflyd.host.program import load_program
from mayflyd.supervisor.front_link import FrontLink
from mayflyd.supervisor.front_process import front_executable

_RECV_SIZE = protocol.FRAME_HEADER_SIZE + protocol.MAX_PAYLOAD
_EXIT = protocol.CHILD_EXIT.pack(0, 0, 0, 0, 0, 0)


def _answer(handler: Any, sock: socket.socket) -> None:
    """Reads one request's frames from its socket and answers it."""
    while True:
        frame = protocol.parse_frame(sock.recv(_RECV_SIZE))
        if frame.type in (protocol.MsgType.REQ_WHOLE, protocol.MsgType.REQ_END):
            break  # the seed's handler reads neither the head nor the body
    content_type, page = handler()()
    body = page.encode()
    headers = [(b"Content-Type", content_type.encode())]
    head = protocol.RESP_HEAD.pack(200, len(headers), len(body)) + protocol._encode_headers(headers)
    sock.send(protocol.pack_frame(protocol.MsgType.RESP_WHOLE, frame.req_id, head + body))


def _plain_host(channels: list[socket.socket], program_path: str) -> None:
    """The host's side of every data channel, serving in place."""
    program = load_program(Path(program_path)).module
    program.on_init()
    handler = program.on_client_request
    selector = selectors.DefaultSelector()
    for channel in channels:
        selector.register(channel, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            channel: socket.socket = key.fileobj  # type: ignore[assignment]
            packet, fds, _, _ = socket.recv_fds(channel, 4096, 1)
            if not packet:
                return
            frame = protocol.parse_frame(packet)
            if frame.type != protocol.MsgType.REQUEST:
                continue  # CANCEL: the answer is already out
            with socket.socket(fileno=fds[0]) as sock:
                _answer(handler, sock)
            channel.send(protocol.pack_frame(protocol.MsgType.CHILD_EXIT, frame.req_id, _EXIT))


async def _drive(link: FrontLink, channels: list[socket.socket]) -> None:
    limits = RouteLimits(max_body=1 << 20, max_response=16 << 20, request_timeout_ms=30_000, concurrency=1024,
                         queue=0, request_cpu_ms=30_000)
    await link.send_routes([TenantRoute("t0", ("x",), True, limits, slot=0)])
    for thread, channel in enumerate(channels):
        link.attach_host(1, thread, "t0", channel.fileno())
        channel.close()


def main() -> None:
    program_path, port = sys.argv[1], int(sys.argv[2])
    threads = len(os.sched_getaffinity(0))
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    filter_args: list[str] = []
    filter_fds: tuple[int, ...] = ()
    if os.environ.get("HOP_FLOOR_FILTER"):
        from mayflyd.supervisor.seccomp_policy import build_front_filter
        bpf = os.memfd_create("filter")
        os.write(bpf, build_front_filter())
        filter_args, filter_fds = ["--seccomp-fd", str(bpf)], (bpf,)
    front = subprocess.Popen(
        [str(front_executable()), "--listen-fd", str(listener.fileno()), "--control-fd", str(theirs.fileno()),
         "--threads", str(threads), "--allow-root", *filter_args],
        pass_fds=(listener.fileno(), theirs.fileno(), *filter_fds), stdout=subprocess.DEVNULL)
    theirs.close()
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for _ in range(threads)]
    link = FrontLink(ours)
    try:
        asyncio.run(_drive(link, [front_end for front_end, _ in pairs]))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        _plain_host([host_end for _, host_end in pairs], program_path)
    finally:
        front.kill()  # its requests in flight wait for this host, which is gone: no drain
        front.wait()


if __name__ == "__main__":
    main()
