"""The supervisor's watch over in-flight requests' sockets (supervisor/host_handle.py): one
epoll set per host, which the event loop sees as one fd."""
from __future__ import annotations

import _socket
import asyncio
import socket

import pytest

from mayflyd import protocol
from mayflyd.protocol import MsgType, ResponseDecoder, pack_frame
from mayflyd.supervisor import host_handle as host


def _whole(req_id: int, body: bytes) -> bytes:
    return pack_frame(MsgType.RESP_WHOLE, req_id, protocol.RESP_HEAD.pack(200, 0, len(body)) + body)


def _pair() -> tuple[_socket.socket, _socket.socket]:
    ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return ours, theirs


def test_responses_on_several_sockets_reach_their_own_requests() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sockets = host._ResponseSockets(loop)
        pairs = [_pair() for _ in range(3)]
        readers = [host._ResponseReader(sockets, ours, ResponseDecoder(i + 1, 100))
                   for i, (ours, _) in enumerate(pairs)]
        for i, (_, theirs) in enumerate(reversed(pairs)):
            theirs.send(_whole(3 - i, f"answer {3 - i}".encode()))
        bodies = [(await asyncio.wait_for(r.future, 5)).body for r in readers]
        assert bodies == [b"answer 1", b"answer 2", b"answer 3"]
        assert sockets._readers == {}  # each finished reader left the set
        sockets.close()
        assert sockets._epoll.closed
        for ours, theirs in pairs:
            ours.close()
            theirs.close()
    asyncio.run(main())


def test_closing_waits_for_the_requests_in_flight_which_a_dead_sandbox_ends() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sockets = host._ResponseSockets(loop)
        ours, theirs = _pair()
        reader = host._ResponseReader(sockets, ours, ResponseDecoder(7, 100))
        sockets.close()  # the host is going away with a request still on it
        assert not sockets._epoll.closed
        theirs.close()  # its sandbox dies with it
        with pytest.raises(host.SandboxCrashed):
            await asyncio.wait_for(reader.future, 5)
        assert sockets._epoll.closed  # the last reader out closed it
        ours.close()
    asyncio.run(main())


def test_a_reader_that_timed_out_is_not_called_for_late_data() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sockets = host._ResponseSockets(loop)
        ours, theirs = _pair()
        reader = host._ResponseReader(sockets, ours, ResponseDecoder(9, 100))
        reader.time_out()
        theirs.send(_whole(9, b"late"))
        await asyncio.sleep(0.05)
        with pytest.raises(TimeoutError):
            reader.future.result()
        assert ours.recv(1000)  # still there: nobody read it
        sockets.close()
        ours.close()
        theirs.close()
    asyncio.run(main())


def test_a_stale_reader_does_not_unregister_the_socket_that_reused_its_fd() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sockets = host._ResponseSockets(loop)
        ours, theirs = _pair()
        stale = host._ResponseReader(sockets, ours, ResponseDecoder(1, 100))
        fd = ours.fileno()
        ours.close()  # closing took it out of the epoll set
        theirs.close()
        ours2, theirs2 = _pair()
        assert fd in (ours2.fileno(), theirs2.fileno())  # the lowest free numbers: reused
        if ours2.fileno() != fd:
            ours2, theirs2 = theirs2, ours2
            ours2.setblocking(False)
        fresh = host._ResponseReader(sockets, ours2, ResponseDecoder(2, 100))
        stale.close()
        theirs2.send(_whole(2, b"mine"))
        assert (await asyncio.wait_for(fresh.future, 5)).body == b"mine"
        sockets.close()
        ours2.close()
        theirs2.close()
    asyncio.run(main())


def test_attach_data_channel_sends_one_end_to_the_host_and_keeps_the_other() -> None:
    handle = object.__new__(host.SandboxHost)  # only its control channel matters here
    handle._ctrl, host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ours = handle.attach_data_channel()
        packet, fds, _, _ = socket.recv_fds(host_end, 1024, 2)
        assert protocol.parse_frame(packet).type == MsgType.DATA_CHANNEL and len(packet) == protocol.FRAME_HEADER_SIZE
        (fd,) = fds
        theirs = socket.socket(fileno=fd)
        assert theirs.type == socket.SOCK_SEQPACKET and not ours.getblocking()
        theirs.send(b"from the host")
        assert ours.recv(100) == b"from the host"
        ours.close()
        theirs.close()
        handle._ctrl.close()
        handle._ctrl = None
        with pytest.raises(OSError):
            handle.attach_data_channel()  # no host
    finally:
        host_end.close()
