"""The supervisor's side of the wire protocol; a mirror of csrc/wire/protocol.h.

Each message is one SOCK_SEQPACKET packet: a 24-byte frame header and a
payload. tests/unit/test_protocol.py checks this module against the C
header's layout as compiled into mayflyd._mayfly.

A host has, as in protocol.h, a control channel (lifecycle, supervisor <->
host: CONTROL_TYPES) and up to MAX_DATA_CHANNELS data channels (per request,
front end <-> host: DATA_TYPES), each attached by a DATA_CHANNEL message on
the control channel. Each side refuses a message on the other kind of
channel; the host ends when its control channel ends, and a data channel's
end cancels the requests that came on it.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAGIC", "PROTOCOL_VERSION", "MAX_PAYLOAD", "MAX_HEADERS", "FRAME_HEADER_SIZE", "BODY_STREAMED",
    "MsgType", "ENGINE_FORK", "ENGINE_RESET", "EXIT_TIMED_OUT", "EXIT_CANCELLED",
    "EXIT_CPU_EXCEEDED", "EXIT_OUT_OF_MEMORY", "MAX_DATA_CHANNELS", "MAX_FRONT_LOOPS",
    "ProtocolError", "ResponseTooLarge", "Frame", "STRUCTS", "parse_frame", "pack_frame",
    "encode_request", "ResponseDecoder", "Response", "Ready", "ChildExit", "WorkerReplaced", "ControlMessage",
    "RequestFailed", "LoadFailed", "WorkerChannel", "WorkerGone", "Dispatched", "decode_control", "encode_request_ctl",
    "CONTROL_TYPES", "DATA_TYPES", "DataMessage", "decode_data",
]

MAGIC: Final = 0x594C464D
PROTOCOL_VERSION: Final = 1
MAX_PAYLOAD: Final = 64 * 1024
MAX_HEADERS: Final = 256
FRAME_HEADER_SIZE: Final = 24
# RESP_HEAD's body_len of a streamed response: RESP_BODY chunks of a length
# not known beforehand, until RESP_END (never in RESP_WHOLE).
BODY_STREAMED: Final = 2**64 - 1


class MsgType:
    REQUEST: Final = 1
    CANCEL: Final = 2
    SHUTDOWN: Final = 3
    DATA_CHANNEL: Final = 4  # one fd attached: a new data channel of the host
    READY: Final = 16
    LOAD_FAILED: Final = 17
    CHILD_EXIT: Final = 18
    REQUEST_FAILED: Final = 19
    WORKER_REPLACED: Final = 20
    # data channel of a reset host: its workers' persistent request channels
    WORKER_CHANNEL: Final = 21  # one fd attached: the front end's end of a worker's request channel
    WORKER_GONE: Final = 22
    DISPATCHED: Final = 23  # the request runs on that worker: its frames go on the worker's channel
    REQ_HEAD: Final = 32
    REQ_BODY: Final = 33
    REQ_END: Final = 34
    REQ_WHOLE: Final = 35  # a request that fits one packet: head payload, then the body
    RESP_HEAD: Final = 48
    RESP_BODY: Final = 49
    RESP_END: Final = 50
    RESP_WHOLE: Final = 51  # a response that fits one packet: head payload, then the body
    # worker channel of the reset engine (C side only; listed for the mirror)
    WORKER_READY: Final = 64
    REQUEST_DONE: Final = 65
    WORKER_FAILED: Final = 66


ENGINE_FORK: Final = 1
ENGINE_RESET: Final = 2
EXIT_TIMED_OUT: Final = 1
EXIT_CANCELLED: Final = 2
EXIT_CPU_EXCEEDED: Final = 4
EXIT_OUT_OF_MEMORY: Final = 8

# Data channels one host holds at most; a DATA_CHANNEL beyond is refused.
MAX_DATA_CHANNELS: Final = 64
# Front-end loops a reset host makes request channels for, at most.
MAX_FRONT_LOOPS: Final = 64
# Which kind of a host's channels each message travels on (both directions).
CONTROL_TYPES: Final = frozenset({MsgType.SHUTDOWN, MsgType.DATA_CHANNEL, MsgType.READY, MsgType.LOAD_FAILED,
                                  MsgType.WORKER_REPLACED})
DATA_TYPES: Final = frozenset({MsgType.REQUEST, MsgType.CANCEL, MsgType.CHILD_EXIT, MsgType.REQUEST_FAILED,
                               MsgType.WORKER_CHANNEL, MsgType.WORKER_GONE, MsgType.DISPATCHED})

# Native byte order, standard sizes, no padding: the C structs are laid out
# without holes (checked by _Static_assert there and by the layout test here).
FRAME_HEADER: Final = struct.Struct("=IHHQII")
READY: Final = struct.Struct("=iI")
REQUEST_CTL: Final = struct.Struct("=II")
CHILD_EXIT: Final = struct.Struct("=iiIIII")
DATA_CHANNEL: Final = struct.Struct("=II")
WORKER_SLOT: Final = struct.Struct("=II")
WORKER_REQUEST: Final = struct.Struct("=II")
WORKER_READY: Final = struct.Struct("=IIII")
REQUEST_DONE: Final = struct.Struct("=IIIIII")
REQUEST_FAILED: Final = struct.Struct("=iI")
REQ_HEAD: Final = struct.Struct("=IIIIIIQ")
RESP_HEAD: Final = struct.Struct("=IIQ")
HEADER_ENTRY: Final = struct.Struct("=II")

# struct name -> (struct, field names in order), for the layout test.
STRUCTS: Final[dict[str, tuple[struct.Struct, tuple[str, ...]]]] = {
    "mf_frame_header": (FRAME_HEADER, ("magic", "type", "version", "req_id", "payload_len", "reserved")),
    "mf_ready": (READY, ("pid", "engine")),
    "mf_request_ctl": (REQUEST_CTL, ("timeout_ms", "reserved")),
    "mf_child_exit": (CHILD_EXIT, ("pid", "wait_status", "flags", "cost_us", "pages", "reserved")),
    "mf_data_channel": (DATA_CHANNEL, ("loop", "reserved")),
    "mf_worker_slot": (WORKER_SLOT, ("worker", "reserved")),
    "mf_worker_request": (WORKER_REQUEST, ("nonce", "loop")),
    "mf_worker_ready": (WORKER_READY, ("snapshot_pages", "ranges", "cost_us", "reserved")),
    "mf_request_done": (REQUEST_DONE, ("status", "aborted", "cost_us", "pages", "nonce", "reserved")),
    "mf_request_failed": (REQUEST_FAILED, ("error", "reserved")),
    "mf_req_head": (REQ_HEAD, ("method_len", "path_len", "query_len", "client_len",
                               "header_count", "reserved", "body_len")),
    "mf_resp_head": (RESP_HEAD, ("status", "header_count", "body_len")),
    "mf_header_entry": (HEADER_ENTRY, ("name_len", "value_len")),
}

# RFC 9110 token characters for a header name.
_TOKEN_RE: Final = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_BAD_VALUE_RE: Final = re.compile(rb"[\r\n\x00]")


class ProtocolError(Exception):
    """A frame that breaks the protocol; the request it belongs to gets a 502."""


class ResponseTooLarge(ProtocolError):
    """A response body over the tenant's max_response."""


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    req_id: int
    payload: bytes


def pack_frame(msg_type: int, req_id: int, payload: bytes = b"", *, max_payload: int = MAX_PAYLOAD) -> bytes:
    """One packet; max_payload is the channel's own limit (the front end's
    routing table may be larger than a request frame)."""
    if len(payload) > max_payload:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {max_payload}")
    return FRAME_HEADER.pack(MAGIC, msg_type, PROTOCOL_VERSION, req_id, len(payload), 0) + payload


def parse_frame(packet: bytes) -> Frame:
    if len(packet) < FRAME_HEADER_SIZE:
        raise ProtocolError(f"short packet of {len(packet)} bytes")
    magic, msg_type, version, req_id, payload_len, reserved = FRAME_HEADER.unpack_from(packet)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic:#x}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version}, expected {PROTOCOL_VERSION}")
    if payload_len != len(packet) - FRAME_HEADER_SIZE:
        raise ProtocolError(f"payload_len {payload_len} but packet carries {len(packet) - FRAME_HEADER_SIZE}")
    if payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD}")
    if reserved != 0:
        raise ProtocolError("reserved field is not zero")
    return Frame(msg_type, req_id, packet[FRAME_HEADER_SIZE:])


def _encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(HEADER_ENTRY.pack(len(n), len(v)) + n + v for n, v in headers)


def encode_request_ctl(req_id: int, timeout_ms: int) -> bytes:
    return pack_frame(MsgType.REQUEST, req_id, REQUEST_CTL.pack(timeout_ms, 0))


def encode_request(req_id: int, *, method: str, path: str, query: str,
                   headers: list[tuple[str, str]], body: bytes, client: str) -> list[bytes]:
    """The packets of one request: one REQ_WHOLE when head and body fit in
    one packet, else REQ_HEAD, REQ_BODY chunks, REQ_END.

    Raises ValueError when the head does not fit in one packet (the caller
    answers 431).
    """
    strings = [s.encode("latin-1", "replace") for s in (method, path, query, client)]
    hdrs = [(n.encode("latin-1", "replace"), v.encode("latin-1", "replace")) for n, v in headers]
    if len(hdrs) > MAX_HEADERS:
        raise ValueError(f"{len(hdrs)} headers, at most {MAX_HEADERS}")
    head = REQ_HEAD.pack(*(len(s) for s in strings), len(hdrs), 0, len(body))
    payload = head + b"".join(strings) + _encode_headers(hdrs)
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"request head of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    if len(payload) + len(body) <= MAX_PAYLOAD:
        return [pack_frame(MsgType.REQ_WHOLE, req_id, payload + body)]
    packets = [pack_frame(MsgType.REQ_HEAD, req_id, payload)]
    view = memoryview(body)
    for start in range(0, len(body), MAX_PAYLOAD):
        packets.append(pack_frame(MsgType.REQ_BODY, req_id, bytes(view[start:start + MAX_PAYLOAD])))
    packets.append(pack_frame(MsgType.REQ_END, req_id))
    return packets


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class ResponseDecoder:
    """Validates a sandbox's response packets, one at a time.

    Everything a sandbox sends is hostile until checked: the status range,
    header names (tokens) and values (no CR, LF or NUL), sizes against the
    tenant's limit, frame order and the request id.
    """

    __slots__ = ("_req_id", "_max_body", "_status", "_headers", "_body_len", "_chunks", "_received", "done",
                 "streamed")

    def __init__(self, req_id: int, max_body: int) -> None:
        self._req_id = req_id
        self._max_body = max_body
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body_len = -1
        self._chunks: list[bytes] = []
        self._received = 0
        self.done = False
        self.streamed = False  # the head announced BODY_STREAMED

    def feed(self, packet: bytes) -> None:
        if self.done:
            raise ProtocolError("packet after RESP_END")
        frame = parse_frame(packet)
        if frame.req_id != self._req_id:
            raise ProtocolError(f"frame for request {frame.req_id} on the channel of {self._req_id}")
        if self._body_len < 0:
            if frame.type == MsgType.RESP_WHOLE:
                self._parse_whole(frame.payload)
                return
            if frame.type != MsgType.RESP_HEAD:
                raise ProtocolError(f"expected RESP_HEAD or RESP_WHOLE, got type {frame.type}")
            self._parse_head(frame.payload)
        elif frame.type == MsgType.RESP_BODY:
            self._received += len(frame.payload)
            if self.streamed and self._received > self._max_body:
                raise ResponseTooLarge(f"streamed body exceeds the limit of {self._max_body} bytes")
            if self._received > self._body_len:
                raise ProtocolError(f"body exceeds announced {self._body_len} bytes")
            self._chunks.append(frame.payload)
        elif frame.type == MsgType.RESP_END:
            if frame.payload:
                raise ProtocolError("RESP_END carries a payload")
            if self._received != self._body_len and not self.streamed:
                raise ProtocolError(f"body of {self._received} bytes, announced {self._body_len}")
            self.done = True
        else:
            raise ProtocolError(f"unexpected frame type {frame.type} in a response body")

    def _parse_whole(self, payload: bytes) -> None:
        """RESP_WHOLE: a RESP_HEAD payload, then exactly its body_len bytes."""
        if len(payload) < RESP_HEAD.size:
            raise ProtocolError("RESP_WHOLE too short")
        body_len = RESP_HEAD.unpack_from(payload)[2]
        if body_len == BODY_STREAMED or body_len > len(payload) - RESP_HEAD.size:
            raise ProtocolError(f"RESP_WHOLE announces {body_len} body bytes, carries fewer")
        head_len = len(payload) - body_len
        self._parse_head(payload[:head_len])
        if body_len:
            self._chunks.append(payload[head_len:])
        self._received = body_len
        self.done = True

    def _parse_head(self, payload: bytes) -> None:
        if len(payload) < RESP_HEAD.size:
            raise ProtocolError("RESP_HEAD too short")
        status, count, body_len = RESP_HEAD.unpack_from(payload)
        if not 100 <= status <= 599:
            raise ProtocolError(f"status {status} outside 100-599")
        if count > MAX_HEADERS:
            raise ProtocolError(f"{count} headers, at most {MAX_HEADERS}")
        if body_len != BODY_STREAMED and body_len > self._max_body:
            raise ResponseTooLarge(f"response body of {body_len} bytes exceeds the limit of {self._max_body}")
        offset = RESP_HEAD.size
        for _ in range(count):
            if offset + HEADER_ENTRY.size > len(payload):
                raise ProtocolError("header entry beyond the payload")
            name_len, value_len = HEADER_ENTRY.unpack_from(payload, offset)
            offset += HEADER_ENTRY.size
            end = offset + name_len + value_len
            if end > len(payload):
                raise ProtocolError("header beyond the payload")
            name = payload[offset:offset + name_len]
            value = payload[offset + name_len:end]
            offset = end
            if not _TOKEN_RE.match(name):
                raise ProtocolError(f"invalid header name {name[:40]!r}")
            if _BAD_VALUE_RE.search(value):
                raise ProtocolError(f"header {name.decode('ascii')} carries CR, LF or NUL")
            self._headers.append((name.decode("ascii"), value.decode("latin-1")))
        if offset != len(payload):
            raise ProtocolError("trailing bytes after the headers")
        self._status = status
        self._body_len = body_len
        self.streamed = body_len == BODY_STREAMED

    def response(self) -> Response:
        if not self.done:
            raise ProtocolError("response incomplete")
        return Response(self._status, self._headers, b"".join(self._chunks))


@dataclass(frozen=True, slots=True)
class Ready:
    pid: int
    engine: int


@dataclass(frozen=True, slots=True)
class ChildExit:
    req_id: int
    pid: int
    wait_status: int
    flags: int
    cost_us: int = 0  # the host's own cost of the sandbox (its fork, or its rewind)
    pages: int = 0    # pages rewound after the request (reset engine)


@dataclass(frozen=True, slots=True)
class RequestFailed:
    req_id: int
    error: int


@dataclass(frozen=True, slots=True)
class WorkerChannel:
    """A reset worker's request channel for this loop (its fd came with it)."""

    worker: int


@dataclass(frozen=True, slots=True)
class WorkerGone:
    worker: int


@dataclass(frozen=True, slots=True)
class Dispatched:
    """The request runs on this worker: its frames go on the worker's channel."""

    req_id: int
    worker: int


@dataclass(frozen=True, slots=True)
class WorkerReplaced:
    """A reset-engine worker was replaced: it died, or could not be rewound."""

    reason: str


@dataclass(frozen=True, slots=True)
class LoadFailed:
    message: str


def _unpack_exact(st: struct.Struct, payload: bytes, what: str) -> tuple[int, ...]:
    if len(payload) != st.size:
        raise ProtocolError(f"{what} payload of {len(payload)} bytes, expected {st.size}")
    return st.unpack(payload)


ControlMessage = Ready | LoadFailed | WorkerReplaced
DataMessage = ChildExit | RequestFailed | WorkerChannel | WorkerGone | Dispatched


def decode_control(packet: bytes) -> ControlMessage:
    """A message the host sent on its control channel."""
    frame = parse_frame(packet)
    if frame.type == MsgType.READY:
        pid, engine = _unpack_exact(READY, frame.payload, "READY")
        return Ready(pid, engine)
    if frame.type == MsgType.WORKER_REPLACED:
        return WorkerReplaced(frame.payload.decode("utf-8", "replace"))
    if frame.type == MsgType.LOAD_FAILED:
        return LoadFailed(frame.payload.decode("utf-8", "replace"))
    raise ProtocolError(f"unexpected control message type {frame.type}")


def decode_data(packet: bytes) -> DataMessage:
    """A message the host sent on its data channel."""
    frame = parse_frame(packet)
    if frame.type == MsgType.CHILD_EXIT:
        pid, status, flags, cost_us, pages, _ = _unpack_exact(CHILD_EXIT, frame.payload, "CHILD_EXIT")
        return ChildExit(frame.req_id, pid, status, flags, cost_us, pages)
    if frame.type == MsgType.REQUEST_FAILED:
        error, _ = _unpack_exact(REQUEST_FAILED, frame.payload, "REQUEST_FAILED")
        return RequestFailed(frame.req_id, error)
    if frame.type in (MsgType.WORKER_CHANNEL, MsgType.WORKER_GONE, MsgType.DISPATCHED):
        worker, _ = _unpack_exact(WORKER_SLOT, frame.payload, "WORKER_SLOT")
        if frame.type == MsgType.DISPATCHED:
            return Dispatched(frame.req_id, worker)
        return WorkerChannel(worker) if frame.type == MsgType.WORKER_CHANNEL else WorkerGone(worker)
    raise ProtocolError(f"unexpected data message type {frame.type}")
