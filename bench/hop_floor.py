"""f. The floor of mayflyd's shape: its front end, one hop, no sandbox.

    python -m bench.hop_floor PROGRAM PORT

mayflyd's front end as it is (uvloop, aiohttp's low-level server, mayflyd's
own request and response frames), but every request goes over one
persistent socket to one plain worker process that runs the program's
handler and nothing else: no socket per request, no host in between, no
fork, no rewind, no walls. Whatever a sandbox costs comes on top of this,
so its throughput is the most any design with a Python front end and the
tenant's code in another process can reach on the same cores.
"""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from mayflyd import protocol
from mayflyd.host.program import load_program

_RECV_SIZE = protocol.FRAME_HEADER_SIZE + protocol.MAX_PAYLOAD
_REQ_ID = struct.Struct("=8xQ")  # the frame header's req_id


def _worker(sock: socket.socket, program_path: str) -> None:
    """Answers each request's frames with the handler's response, in order."""
    program = load_program(Path(program_path)).module
    program.on_init()
    while True:
        packet = sock.recv(_RECV_SIZE)
        if not packet:
            return
        frame = protocol.parse_frame(packet)
        if frame.type not in (protocol.MsgType.REQ_WHOLE, protocol.MsgType.REQ_END):
            continue  # a head or body of a larger request: the seed's handler reads neither
        content_type, page = program.on_client_request()()
        body = page.encode()
        headers = [(b"Content-Type", content_type.encode())]
        head = protocol.RESP_HEAD.pack(200, len(headers), len(body)) + protocol._encode_headers(headers)
        sock.send(protocol.pack_frame(protocol.MsgType.RESP_WHOLE, frame.req_id, head + body))


class _Hop:
    """The front end's side of the one persistent socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._ids = 0
        self._pending: dict[int, tuple[protocol.ResponseDecoder, asyncio.Future[protocol.Response]]] = {}
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    async def run(self, request: web.BaseRequest) -> protocol.Response:
        self._ids += 1
        req_id = self._ids
        packets = protocol.encode_request(
            req_id, method=request.method, path=request.raw_path.partition("?")[0],
            query=request.rel_url.raw_query_string,
            headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.raw_headers],
            body=b"", client=request.remote or "")
        future: asyncio.Future[protocol.Response] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = (protocol.ResponseDecoder(req_id, 1 << 20), future)
        for packet in packets:
            await asyncio.get_running_loop().sock_sendall(self._sock, packet)
        return await future

    def _readable(self) -> None:
        while True:
            try:
                packet = self._sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            if not packet:
                raise SystemExit("hop_floor: the worker exited")
            (req_id,) = _REQ_ID.unpack_from(packet)
            decoder, future = self._pending[req_id]
            decoder.feed(packet)
            if decoder.done:
                del self._pending[req_id]
                future.set_result(decoder.response())


async def _serve(sock: socket.socket, port: int) -> None:
    hop = _Hop(sock)

    async def handle(request: web.BaseRequest) -> web.Response:
        answer = await hop.run(request)
        response = web.Response(status=answer.status, body=answer.body)
        for name, value in answer.headers:
            response.headers.add(name, value)
        return response

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> None:
    program_path, port = sys.argv[1], int(sys.argv[2])
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        front.close()
        _worker(back, program_path)
        os._exit(0)
    back.close()
    front.setblocking(False)
    try:
        uvloop.run(_serve(front, port))
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
