"""f. The floor of mayflyd's shape: its front end, one hop, no sandbox.

    python -m bench.hop_floor PROGRAM PORT

mayflyd-front as the daemon runs it with a reset host (the same executable,
control channel, data channels and persistent request channels: per loop
one worker slot, DISPATCHED per request, the answer on the worker's
channel, CHILD_EXIT after; one loop per core of this process's affinity),
but the "host" on the other end is one plain process that runs the
program's handler in place: no fork, no rewind, no walls. Whatever a sandbox costs comes on top of this, so its
throughput is the most the daemon's present shape can reach on the same
cores. HOP_FLOOR_FILTER=1 confines the front end with the daemon's seccomp
filter, to measure what the filter costs.
"""
from __future__ import annotations

import argparse
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
_SLOT = protocol.WORKER_SLOT.pack(0, 0)


def _answer(handler: Any, sock: socket.socket) -> None:
    """Reads one request's frames from the worker's channel and answers it there."""
    while True:
        frame = protocol.parse_frame(sock.recv(_RECV_SIZE))
        if frame.type in (protocol.MsgType.REQ_WHOLE, protocol.MsgType.REQ_END):
            break  # the seed's handler reads neither the head nor the body
    content_type, page = handler()()
    body = page.encode()
    headers = [(b"Content-Type", content_type.encode())]
    head = protocol.RESP_HEAD.pack(200, len(headers), len(body)) + protocol._encode_headers(headers)
    sock.send(protocol.pack_frame(protocol.MsgType.RESP_WHOLE, frame.req_id, head + body))


def _plain_host(channels: list[tuple[socket.socket, socket.socket]], program_path: str) -> None:
    """The host's side of every (data channel, worker channel) pair, serving in
    place: one request at a time per loop, so one worker slot (0) each."""
    program = load_program(Path(program_path)).module
    program.on_init()
    handler = program.on_client_request
    selector = selectors.DefaultSelector()
    for data_channel, worker in channels:
        selector.register(data_channel, selectors.EVENT_READ, worker)
    while True:
        for key, _ in selector.select():
            channel: socket.socket = key.fileobj  # type: ignore[assignment]
            packet = channel.recv(4096)
            if not packet:
                return
            frame = protocol.parse_frame(packet)
            if frame.type != protocol.MsgType.REQUEST:
                continue  # CANCEL: the answer is already out
            channel.send(protocol.pack_frame(protocol.MsgType.DISPATCHED, frame.req_id, _SLOT))
            _answer(handler, key.data)
            channel.send(protocol.pack_frame(protocol.MsgType.CHILD_EXIT, frame.req_id, _EXIT))


async def _drive(link: FrontLink, channels: list[socket.socket]) -> None:
    limits = RouteLimits(max_body=1 << 20, max_response=16 << 20, request_timeout_ms=30_000, concurrency=1024,
                         queue=0, request_cpu_ms=30_000)
    await link.send_routes([TenantRoute("t0", ("x",), True, limits, slot=0)])
    for thread, channel in enumerate(channels):
        link.attach_host(1, thread, "t0", channel.fileno(), protocol.ENGINE_RESET)
        channel.close()


def _worker_channel(data_channel: socket.socket) -> socket.socket:
    """Worker slot 0's request channel for one loop: the front end's end goes
    with WORKER_CHANNEL on the loop's data channel; ours is returned."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with theirs:
        socket.send_fds(data_channel, [protocol.pack_frame(protocol.MsgType.WORKER_CHANNEL, 0, _SLOT)],
                        [theirs.fileno()])
    return ours


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hop_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("program", help="the tenant program the plain process serves")
    parser.add_argument("port", type=int, help="the port mayflyd-front listens on, on 127.0.0.1")
    args = parser.parse_args()
    program_path, port = args.program, args.port
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
        _plain_host([(host_end, _worker_channel(host_end)) for _, host_end in pairs], program_path)
    finally:
        front.kill()  # its requests in flight wait for this host, which is gone: no drain
        front.wait()


if __name__ == "__main__":
    main()
