"""The supervisor's side of the wire protocol, and its agreement with the C side."""
from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from mayflyd import protocol
from mayflyd.protocol import MsgType, ProtocolError, ResponseDecoder, pack_frame

_mayfly = pytest.importorskip("mayflyd._mayfly")


def test_struct_layouts_match_the_c_header() -> None:
    layout = _mayfly.struct_layout()
    assert set(layout) == set(protocol.STRUCTS)
    for name, (st, fields) in protocol.STRUCTS.items():
        c_size, c_fields = layout[name]
        assert st.size == c_size, name
        assert list(c_fields) == list(fields), name
        offset = 0
        for field, code in zip(fields, st.format.lstrip("=")):
            size = struct.calcsize("=" + code)
            assert c_fields[field] == (offset, size), f"{name}.{field}"
            offset += size


def test_constants_match_the_c_header() -> None:
    assert _mayfly.MAGIC == protocol.MAGIC
    assert _mayfly.PROTOCOL_VERSION == protocol.PROTOCOL_VERSION
    assert _mayfly.MAX_PAYLOAD == protocol.MAX_PAYLOAD
    assert _mayfly.MAX_HEADERS == protocol.MAX_HEADERS
    assert _mayfly.FRAME_HEADER_SIZE == protocol.FRAME_HEADER_SIZE
    assert _mayfly.MAX_DATA_CHANNELS == protocol.MAX_DATA_CHANNELS
    assert _mayfly.MAX_FRONT_LOOPS == protocol.MAX_FRONT_LOOPS
    for name in ("REQUEST", "CANCEL", "SHUTDOWN", "DATA_CHANNEL",
                 "READY", "LOAD_FAILED", "CHILD_EXIT", "REQUEST_FAILED",
                 "REQ_HEAD", "REQ_BODY", "REQ_END", "REQ_WHOLE", "RESP_HEAD", "RESP_BODY", "RESP_END",
                 "RESP_WHOLE", "WORKER_REPLACED",
                 "WORKER_READY", "REQUEST_DONE", "WORKER_FAILED", "WORKER_CHANNEL", "WORKER_GONE", "DISPATCHED"):
        assert getattr(_mayfly, f"MSG_{name}") == getattr(MsgType, name), name
    assert _mayfly.EXIT_TIMED_OUT == protocol.EXIT_TIMED_OUT
    assert _mayfly.EXIT_CANCELLED == protocol.EXIT_CANCELLED
    assert _mayfly.EXIT_CPU_EXCEEDED == protocol.EXIT_CPU_EXCEEDED
    assert _mayfly.EXIT_OUT_OF_MEMORY == protocol.EXIT_OUT_OF_MEMORY


def test_python_request_decodes_in_c() -> None:
    body = bytes(range(256)) * 600
    packets = protocol.encode_request(7, method="POST", path="/p", query="a=1", headers=[("X-A", "b"), ("X-A", "c")],
                                      body=body, client="127.0.0.1")
    assert len(packets) == 2 + (len(body) + protocol.MAX_PAYLOAD - 1) // protocol.MAX_PAYLOAD
    assert _mayfly.decode_request(7, packets) == ("POST", "/p", "a=1", [("X-A", "b"), ("X-A", "c")], body,
                                                  "127.0.0.1")


def test_a_request_that_fits_one_packet_is_one_req_whole() -> None:
    packets = protocol.encode_request(8, method="GET", path="/s", query="", headers=[("Host", "h")],
                                      body=b"tiny", client="c")
    assert len(packets) == 1 and protocol.parse_frame(packets[0]).type == MsgType.REQ_WHOLE
    assert _mayfly.decode_request(8, packets) == ("GET", "/s", "", [("Host", "h")], b"tiny", "c")


def test_a_small_c_response_decodes_in_python() -> None:
    packets = _mayfly.encode_response(2, 200, [("Content-Type", "text/plain")], b"hello")
    assert len(packets) == 1 and protocol.parse_frame(packets[0]).type == MsgType.RESP_WHOLE
    response = _decode(packets, req_id=2)
    assert (response.status, response.headers, response.body) == (200, [("Content-Type", "text/plain")], b"hello")


def test_c_response_decodes_in_python() -> None:
    body = b"\x00\xff" * 70000
    packets = _mayfly.encode_response(9, 201, [("Content-Type", "text/plain"), ("X-B", "1")], body)
    decoder = ResponseDecoder(9, 1 << 20)
    for packet in packets:
        decoder.feed(packet)
    response = decoder.response()
    assert (response.status, response.headers, response.body) == (
        201, [("Content-Type", "text/plain"), ("X-B", "1")], body)


def _response(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"ok",
              req_id: int = 1, announced: int | None = None) -> list[bytes]:
    hdrs = headers or []
    payload = protocol.RESP_HEAD.pack(status, len(hdrs), len(body) if announced is None else announced)
    payload += b"".join(protocol.HEADER_ENTRY.pack(len(n), len(v)) + n + v for n, v in hdrs)
    return [pack_frame(MsgType.RESP_HEAD, req_id, payload), pack_frame(MsgType.RESP_BODY, req_id, body),
            pack_frame(MsgType.RESP_END, req_id)]


def _whole(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"ok",
           req_id: int = 1, announced: int | None = None) -> list[bytes]:
    head, body_frame, _ = (protocol.parse_frame(p).payload for p in _response(status, headers, body, req_id,
                                                                               announced))
    return [pack_frame(MsgType.RESP_WHOLE, req_id, head + body_frame)]


def _decode(packets: list[bytes], req_id: int = 1, limit: int = 1000) -> protocol.Response:
    decoder = ResponseDecoder(req_id, limit)
    for packet in packets:
        decoder.feed(packet)
    return decoder.response()


@pytest.mark.parametrize("encode", [_response, _whole])
def test_valid_response(encode: Callable[..., list[bytes]]) -> None:
    response = _decode(encode(headers=[(b"X-Ok", b"a b\tc")]))
    assert response.status == 200 and response.headers == [("X-Ok", "a b\tc")] and response.body == b"ok"
    assert _decode(encode(status=204, body=b"")).body == b""


BAD_RESPONSES = [
    ("status below 100", _response(status=99), "outside 100-599"),
    ("status above 599", _response(status=600), "outside 100-599"),
    ("CR in a value", _response(headers=[(b"X-A", b"a\rb")]), "CR, LF or NUL"),
    ("LF in a value", _response(headers=[(b"X-A", b"a\nSet-Cookie: x")]), "CR, LF or NUL"),
    ("NUL in a value", _response(headers=[(b"X-A", b"a\x00")]), "CR, LF or NUL"),
    ("space in a name", _response(headers=[(b"Bad Name", b"v")]), "invalid header name"),
    ("colon in a name", _response(headers=[(b"A:B", b"v")]), "invalid header name"),
    ("empty name", _response(headers=[(b"", b"v")]), "invalid header name"),
    ("over the size limit", _response(body=b"x" * 1001), "exceeds the limit"),
    ("short body", _response(body=b"x", announced=2), "announced 2"),
    ("long body", _response(body=b"xyz", announced=2), "exceeds announced"),
    ("another request's id", _response(req_id=2), "channel of 1"),
    ("body before head", _response()[1:], "expected RESP_HEAD"),
    ("bad magic", [b"\0" * 24] + _response()[1:], "bad magic"),
    ("short packet", [b"abc"], "short packet"),
    ("lying payload_len", [_response()[0][:-1]] + _response()[1:], "payload_len"),
    ("frame after end", _response() + [pack_frame(MsgType.RESP_BODY, 1, b"x")], "after RESP_END"),
    ("request frame on response channel",
     [_response()[0], pack_frame(MsgType.REQ_BODY, 1, b"x")], "unexpected frame type"),
    ("whole: status", _whole(status=600), "outside 100-599"),
    ("whole: LF in a value", _whole(headers=[(b"X-A", b"a\nb")]), "CR, LF or NUL"),
    ("whole: over the size limit", _whole(body=b"x" * 1001), "exceeds the limit"),
    ("whole: body_len past the payload", _whole(body=b"x", announced=2), "carries fewer"),
    ("whole: body_len short of the payload", _whole(body=b"xyz", announced=2), "trailing bytes"),
    ("whole: shorter than its head", [pack_frame(MsgType.RESP_WHOLE, 1, b"\0" * 8)], "too short"),
    ("whole: another request's id", _whole(req_id=2), "channel of 1"),
    ("whole after a head", [_response()[0], *_whole()], "unexpected frame type"),
    ("frame after whole", _whole() + [pack_frame(MsgType.RESP_END, 1)], "after RESP_END"),
]


@pytest.mark.parametrize("name,packets,message", BAD_RESPONSES, ids=[b[0] for b in BAD_RESPONSES])
def test_invalid_responses_are_rejected(name: str, packets: list[bytes], message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        _decode(packets)


def test_incomplete_response_is_not_a_response() -> None:
    decoder = ResponseDecoder(1, 100)
    decoder.feed(_response()[0])
    with pytest.raises(ProtocolError, match="incomplete"):
        decoder.response()


def test_request_head_too_large_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        protocol.encode_request(1, method="GET", path="/" + "a" * protocol.MAX_PAYLOAD, query="",
                                headers=[], body=b"", client="")


def test_control_and_data_messages() -> None:
    ready = protocol.decode_control(pack_frame(MsgType.READY, 0, protocol.READY.pack(42, protocol.ENGINE_FORK)))
    assert ready == protocol.Ready(42, protocol.ENGINE_FORK)
    exit_ = protocol.decode_data(pack_frame(MsgType.CHILD_EXIT, 5, protocol.CHILD_EXIT.pack(9, 11, 1, 0, 7, 0)))
    assert exit_ == protocol.ChildExit(5, 9, 11, 1, 0, 7)
    failed = protocol.decode_data(pack_frame(MsgType.REQUEST_FAILED, 6, protocol.REQUEST_FAILED.pack(11, 0)))
    assert failed == protocol.RequestFailed(6, 11)
    replaced = protocol.decode_control(pack_frame(MsgType.WORKER_REPLACED, 0, b"could not rewind"))
    assert replaced == protocol.WorkerReplaced("could not rewind")
    with pytest.raises(ProtocolError, match="expected 8"):
        protocol.decode_control(pack_frame(MsgType.READY, 0, b"x"))
    with pytest.raises(ProtocolError, match="unexpected control"):
        protocol.decode_control(pack_frame(MsgType.RESP_END, 0))


# The host's messages and the channel each belongs to (protocol.h).
CHANNEL_OF = {
    MsgType.REQUEST: "data", MsgType.CANCEL: "data", MsgType.SHUTDOWN: "control",
    MsgType.DATA_CHANNEL: "control",
    MsgType.READY: "control", MsgType.LOAD_FAILED: "control", MsgType.CHILD_EXIT: "data",
    MsgType.REQUEST_FAILED: "data", MsgType.WORKER_REPLACED: "control",
    MsgType.WORKER_CHANNEL: "data", MsgType.WORKER_GONE: "data", MsgType.DISPATCHED: "data",
}


def test_each_host_message_travels_on_one_channel_and_is_refused_on_the_other() -> None:
    assert protocol.CONTROL_TYPES == {t for t, c in CHANNEL_OF.items() if c == "control"}
    assert protocol.DATA_TYPES == {t for t, c in CHANNEL_OF.items() if c == "data"}
    payloads = {MsgType.READY: protocol.READY.pack(1, 1),
                MsgType.CHILD_EXIT: protocol.CHILD_EXIT.pack(1, 0, 0, 0, 0, 0),
                MsgType.REQUEST_FAILED: protocol.REQUEST_FAILED.pack(1, 0),
                MsgType.WORKER_CHANNEL: protocol.WORKER_SLOT.pack(0, 0),
                MsgType.WORKER_GONE: protocol.WORKER_SLOT.pack(0, 0),
                MsgType.DISPATCHED: protocol.WORKER_SLOT.pack(0, 0)}
    for msg_type, channel in CHANNEL_OF.items():
        if msg_type < MsgType.READY:
            continue  # sent to the host, not decoded here
        packet = pack_frame(msg_type, 1, payloads.get(msg_type, b"text"))
        right, wrong = ((protocol.decode_control, protocol.decode_data) if channel == "control"
                        else (protocol.decode_data, protocol.decode_control))
        right(packet)
        with pytest.raises(ProtocolError, match="unexpected"):
            wrong(packet)


def test_the_streamed_body_sentinel_agrees_with_the_c_header() -> None:
    assert protocol.BODY_STREAMED == _mayfly.BODY_STREAMED == 2**64 - 1


def test_a_streamed_response_is_chunks_until_resp_end() -> None:
    head, _, end = _response(headers=[(b"X-A", b"1")], announced=protocol.BODY_STREAMED)
    decoder = ResponseDecoder(1, 10)
    decoder.feed(head)
    assert decoder.streamed
    for chunk in (b"abc", b"", b"defg"):
        decoder.feed(pack_frame(MsgType.RESP_BODY, 1, chunk))
    decoder.feed(end)
    assert decoder.response() == protocol.Response(200, [("X-A", "1")], b"abcdefg")


def test_a_streamed_response_over_the_limit_or_announced_whole_is_refused() -> None:
    head, _, _ = _response(announced=protocol.BODY_STREAMED)
    decoder = ResponseDecoder(1, 5)
    decoder.feed(head)
    decoder.feed(pack_frame(MsgType.RESP_BODY, 1, b"abc"))
    with pytest.raises(protocol.ResponseTooLarge):
        decoder.feed(pack_frame(MsgType.RESP_BODY, 1, b"abc"))
    with pytest.raises(ProtocolError, match="RESP_WHOLE announces"):
        for packet in _whole(announced=protocol.BODY_STREAMED):
            ResponseDecoder(1, 100).feed(packet)
