"""Tests of the C helper mayflyd._mayfly (csrc/).

Protocol tests build and parse packets by hand with struct, independently of
daemon/mayflyd/protocol.py. Privilege, mount and cgroup tests need root; the
ones that change the process run in a forked child and report back through
its exit status and a pipe.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import faulthandler
import glob
import json
import os
import random
import resource
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mayflyd import _mayfly as M

FRAME = struct.Struct("=IHHQII")
REQ_HEAD = struct.Struct("=IIIIIIQ")
RESP_HEAD = struct.Struct("=IIQ")
ENTRY = struct.Struct("=II")
CHILD_EXIT = struct.Struct("=iiIIII")
READY = struct.Struct("=iI")
REQUEST_FAILED = struct.Struct("=iI")

is_root = os.geteuid() == 0
needs_root = pytest.mark.skipif(not is_root, reason="needs root")


# ---------------------------------------------------------------- helpers

def frame(msg_type: int, req_id: int, payload: bytes = b"", *, magic: int = M.MAGIC,
          version: int = M.PROTOCOL_VERSION, payload_len: int | None = None, reserved: int = 0) -> bytes:
    plen = len(payload) if payload_len is None else payload_len
    return FRAME.pack(magic, msg_type, version, req_id, plen, reserved) + payload


def req_head_payload(method: bytes, path: bytes, query: bytes, client: bytes,
                     headers: list[tuple[bytes, bytes]], body_len: int, *,
                     header_count: int | None = None) -> bytes:
    count = len(headers) if header_count is None else header_count
    out = REQ_HEAD.pack(len(method), len(path), len(query), len(client), count, 0, body_len)
    out += method + path + query + client
    for name, value in headers:
        out += ENTRY.pack(len(name), len(value)) + name + value
    return out


def request_packets(req_id: int, *, method: bytes = b"GET", path: bytes = b"/", query: bytes = b"",
                    client: bytes = b"192.0.2.1:5000", headers: list[tuple[bytes, bytes]] | None = None,
                    body: bytes = b"", chunks: list[int] | None = None) -> list[bytes]:
    headers = headers or []
    pkts = [frame(M.MSG_REQ_HEAD, req_id, req_head_payload(method, path, query, client, headers, len(body)))]
    sizes = chunks if chunks is not None else [M.MAX_PAYLOAD] * (len(body) // M.MAX_PAYLOAD + 1)
    off = 0
    for size in sizes:
        if off >= len(body):
            break
        pkts.append(frame(M.MSG_REQ_BODY, req_id, body[off:off + size]))
        off += size
    pkts.append(frame(M.MSG_REQ_END, req_id))
    return pkts


def parse_frame(pkt: bytes) -> tuple[int, int, bytes]:
    magic, msg_type, version, req_id, plen, reserved = FRAME.unpack_from(pkt)
    assert (magic, version, reserved) == (M.MAGIC, M.PROTOCOL_VERSION, 0)
    assert plen == len(pkt) - FRAME.size
    return msg_type, req_id, pkt[FRAME.size:]


def parse_response(pkts: list[bytes], req_id: int) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """RESP_WHOLE alone when the response fits one packet, else RESP_HEAD,
    RESP_BODY chunks, RESP_END."""
    msg_type, rid, payload = parse_frame(pkts[0])
    assert rid == req_id and msg_type in (M.MSG_RESP_HEAD, M.MSG_RESP_WHOLE)
    status, count, body_len = RESP_HEAD.unpack_from(payload)
    whole = msg_type == M.MSG_RESP_WHOLE
    off = RESP_HEAD.size
    headers = []
    for _ in range(count):
        nlen, vlen = ENTRY.unpack_from(payload, off)
        off += ENTRY.size
        headers.append((payload[off:off + nlen], payload[off + nlen:off + nlen + vlen]))
        off += nlen + vlen
    if whole:
        assert len(pkts) == 1 and off + body_len == len(payload)
        return status, headers, payload[off:]
    assert off == len(payload) and off + body_len > M.MAX_PAYLOAD, "fits one packet: should be RESP_WHOLE"
    body = b""
    for pkt in pkts[1:-1]:
        msg_type, rid, chunk = parse_frame(pkt)
        assert (msg_type, rid) == (M.MSG_RESP_BODY, req_id)
        assert 0 < len(chunk) <= M.MAX_PAYLOAD
        body += chunk
    assert parse_frame(pkts[-1]) == (M.MSG_RESP_END, req_id, b"")
    assert len(body) == body_len
    return status, headers, body


def run_in_child(fn: Callable[[], Any]) -> Any:
    """Runs fn in a forked child; returns its JSON-able result or fails with its traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            data = json.dumps({"ok": fn()}).encode()
        except BaseException:  # noqa: BLE001 - everything goes back to the parent
            data = json.dumps({"error": traceback.format_exc()}).encode()
            code = 1
        try:
            os.write(w, data)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    result = json.loads(data) if data else {"error": f"child died, wait status {status:#x}"}
    if "error" in result:
        pytest.fail(result["error"])
    return result["ok"]


# ---------------------------------------------------------------- layout

def test_struct_layout_matches_native_struct_formats() -> None:
    layout = M.struct_layout()
    expected = {"mf_frame_header": FRAME, "mf_req_head": REQ_HEAD, "mf_resp_head": RESP_HEAD,
                "mf_header_entry": ENTRY, "mf_child_exit": CHILD_EXIT, "mf_ready": READY,
                "mf_request_failed": REQUEST_FAILED, "mf_request_ctl": struct.Struct("=II"),
                "mf_worker_ready": struct.Struct("=IIII"), "mf_request_done": struct.Struct("=IIIIII"),
                "mf_data_channel": struct.Struct("=II"), "mf_worker_slot": struct.Struct("=II"),
                "mf_worker_request": struct.Struct("=II")}
    assert set(layout) == set(expected)
    for name, st in expected.items():
        size, fields = layout[name]
        assert size == st.size, name
        assert sum(fsize for _, fsize in fields.values()) == size, name
    assert layout["mf_frame_header"][1]["req_id"] == (8, 8)
    assert layout["mf_req_head"][1]["body_len"] == (24, 8)
    assert M.FRAME_HEADER_SIZE == FRAME.size == 24


# ---------------------------------------------------------------- decode_request

def test_decode_request_round_trip_with_binary_body_in_chunks() -> None:
    body = bytes(random.Random(1).getrandbits(8) for _ in range(150_000))
    headers = [(b"Host", b"example.org"), (b"X-Bin", b"caf\xe9\xff"), (b"Empty", b"")]
    pkts = request_packets(7, method=b"POST", path=b"/a/b", query=b"x=1&y=%20", headers=headers,
                           body=body, chunks=[1, 65536, 3, 65536, 65536])
    method, path, query, hdrs, got_body, client = M.decode_request(7, pkts)
    assert (method, path, query, client) == ("POST", "/a/b", "x=1&y=%20", "192.0.2.1:5000")
    assert hdrs == [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    assert got_body == body


def test_decode_request_empty_body_and_empty_chunk() -> None:
    pkts = request_packets(1)
    assert M.decode_request(1, pkts) == ("GET", "/", "", [], b"", "192.0.2.1:5000")
    pkts.insert(1, frame(M.MSG_REQ_BODY, 1))
    assert M.decode_request(1, pkts)[4] == b""


def test_decode_request_whole_in_one_packet() -> None:
    headers = [(b"Host", b"h"), (b"X-Bin", b"\xff")]
    body = b"payload \x00 bytes"
    pkt = frame(M.MSG_REQ_WHOLE, 3, req_head_payload(b"PUT", b"/w", b"q=1", b"c", headers, len(body)) + body)
    assert M.decode_request(3, [pkt]) == ("PUT", "/w", "q=1", [("Host", "h"), ("X-Bin", "\xff")], body, "c")
    empty = frame(M.MSG_REQ_WHOLE, 3, req_head_payload(b"GET", b"/", b"", b"c", [], 0))
    assert M.decode_request(3, [empty])[4] == b""


def _head(req_id: int = 5, **kw: Any) -> bytes:
    return frame(M.MSG_REQ_HEAD, req_id, req_head_payload(b"GET", b"/", b"", b"c", [], 0, **kw))


BAD_REQUESTS = {
    "bad magic": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0),
                        magic=0x12345678), frame(M.MSG_REQ_END, 5)],
    "bad version": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0),
                          version=2), frame(M.MSG_REQ_END, 5)],
    "reserved set": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0),
                           reserved=1), frame(M.MSG_REQ_END, 5)],
    "end before head": [frame(M.MSG_REQ_END, 5)],
    "body before head": [frame(M.MSG_REQ_BODY, 5, b"x"), _head(), frame(M.MSG_REQ_END, 5)],
    "head twice": [_head(), _head(), frame(M.MSG_REQ_END, 5)],
    "response type": [_head(), frame(M.MSG_RESP_END, 5)],
    "packet after end": [_head(), frame(M.MSG_REQ_END, 5), frame(M.MSG_REQ_END, 5)],
    "no end": [_head()],
    "short frame": [_head()[:20]],
    "truncated payload": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0),
                                payload_len=100), frame(M.MSG_REQ_END, 5)],
    "payload shorter than head struct": [frame(M.MSG_REQ_HEAD, 5, b"\0" * 16), frame(M.MSG_REQ_END, 5)],
    "string past payload": [frame(M.MSG_REQ_HEAD, 5, REQ_HEAD.pack(3, 100, 0, 0, 0, 0, 0) + b"GET/"),
                            frame(M.MSG_REQ_END, 5)],
    "header past payload": [frame(M.MSG_REQ_HEAD, 5, REQ_HEAD.pack(0, 0, 0, 0, 1, 0, 0) + ENTRY.pack(4, 4)
                                  + b"Host"), frame(M.MSG_REQ_END, 5)],
    "trailing bytes": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0) + b"!"),
                       frame(M.MSG_REQ_END, 5)],
    "header_count too big": [_head(header_count=M.MAX_HEADERS + 1), frame(M.MSG_REQ_END, 5)],
    "body shorter than body_len": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 10)),
                                   frame(M.MSG_REQ_BODY, 5, b"12345"), frame(M.MSG_REQ_END, 5)],
    "body longer than body_len": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 4)),
                                  frame(M.MSG_REQ_BODY, 5, b"12345"), frame(M.MSG_REQ_END, 5)],
    "body over cap": [frame(M.MSG_REQ_HEAD, 5, req_head_payload(b"GET", b"/", b"", b"c", [],
                                                                M.REQUEST_BODY_CAP + 1)),
                      frame(M.MSG_REQ_END, 5)],
    "end with payload": [_head(), frame(M.MSG_REQ_END, 5, b"x")],
    "wrong req_id in head": [_head(req_id=6), frame(M.MSG_REQ_END, 5)],
    "wrong req_id in end": [_head(), frame(M.MSG_REQ_END, 6)],
    "whole: body_len past the payload": [frame(M.MSG_REQ_WHOLE, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 9)
                                               + b"12345")],
    "whole: shorter than the head struct": [frame(M.MSG_REQ_WHOLE, 5, b"\0" * 16)],
    "whole: headers past the head": [frame(M.MSG_REQ_WHOLE, 5, REQ_HEAD.pack(0, 0, 0, 0, 1, 0, 4) + b"body")],
    "whole, then an end": [frame(M.MSG_REQ_WHOLE, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0)),
                           frame(M.MSG_REQ_END, 5)],
    "whole after a head": [_head(), frame(M.MSG_REQ_WHOLE, 5, req_head_payload(b"GET", b"/", b"", b"c", [], 0))],
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_decode_request_rejects(case: str) -> None:
    with pytest.raises(ValueError) as info:
        M.decode_request(5, BAD_REQUESTS[case])
    assert str(info.value)  # a message saying what was wrong


def test_decode_request_messages_name_the_problem() -> None:
    with pytest.raises(ValueError, match="magic"):
        M.decode_request(5, BAD_REQUESTS["bad magic"])
    with pytest.raises(ValueError, match="header_count 257"):
        M.decode_request(5, BAD_REQUESTS["header_count too big"])
    with pytest.raises(ValueError, match="req_id 6"):
        M.decode_request(5, BAD_REQUESTS["wrong req_id in head"])
    with pytest.raises(ValueError, match="body_len"):
        M.decode_request(5, BAD_REQUESTS["body shorter than body_len"])


# ---------------------------------------------------------------- encode_response

@pytest.mark.parametrize("extra, packets", [(0, 1), (1, 3)])
def test_a_response_that_fits_one_packet_is_one_resp_whole(extra: int, packets: int) -> None:
    headers = [("Content-Type", "text/plain")]
    head_len = RESP_HEAD.size + ENTRY.size + len("Content-Type") + len("text/plain")
    body = os.urandom(M.MAX_PAYLOAD - head_len + extra)
    pkts = M.encode_response(4, 200, headers, body)
    assert len(pkts) == packets
    assert parse_response(pkts, 4) == (200, [(b"Content-Type", b"text/plain")], body)


def test_encode_response_packets() -> None:
    body = os.urandom(2 * M.MAX_PAYLOAD + 17)
    pkts = M.encode_response(9, 201, [("Content-Type", "text/plain"), ("X-L1", "caf\xe9"),
                                      ("X-Utf8", "\u20ac")], body)
    assert len(pkts) == 1 + 3 + 1
    status, headers, got = parse_response(pkts, 9)
    assert status == 201
    assert headers == [(b"Content-Type", b"text/plain"), (b"X-L1", b"caf\xe9"),
                       (b"X-Utf8", "\u20ac".encode())]
    assert got == body


def test_encode_response_empty_body_and_limits() -> None:
    pkts = M.encode_response(1, 204, [], b"")
    assert len(pkts) == 1 and FRAME.unpack_from(pkts[0])[1] == M.MSG_RESP_WHOLE
    assert parse_response(pkts, 1) == (204, [], b"")
    with pytest.raises(ValueError):
        M.encode_response(1, 200, [("a", "b")] * (M.MAX_HEADERS + 1), b"")
    with pytest.raises(OSError) as info:
        M.encode_response(1, 200, [("a", "b" * M.MAX_PAYLOAD)], b"")
    assert info.value.errno == errno.E2BIG
    with pytest.raises(TypeError):
        M.encode_response(1, 200, [("a",)], b"")
    with pytest.raises(TypeError):
        M.encode_response(1, 200, [], "not bytes")


# ---------------------------------------------------------------- cgroups

def test_cgroup_detect(tmp_path: Path) -> None:
    assert M.cgroup_detect(str(tmp_path)) == 0
    assert M.cgroup_detect(str(tmp_path / "missing")) == 0
    if os.path.ismount("/sys/fs/cgroup/unified"):
        assert M.cgroup_detect("/sys/fs/cgroup/unified") == 2
    if os.path.ismount("/sys/fs/cgroup/memory"):
        assert M.cgroup_detect("/sys/fs/cgroup") == 1


def _fake_v2_tree(base: Path, group: str, controllers: str = "cpu memory pids") -> Path:
    """The documented fake contract: every directory and interface file pre-exists."""
    d = base
    for part in [""] + group.split("/"):
        d = d / part if part else d
        d.mkdir(exist_ok=True)
        (d / "cgroup.controllers").write_text(controllers + "\n")
        (d / "cgroup.subtree_control").write_text("")
        (d / "cgroup.procs").write_text("")
    for name, text in {"memory.max": "max\n", "memory.swap.max": "max\n", "memory.current": "12345\n",
                       "memory.events": "low 0\nhigh 0\nmax 3\noom 2\noom_kill 7\n"}.items():
        (d / name).write_text(text)
    return d


def test_cgroup_v2_fake_tree(tmp_path: Path) -> None:
    base = tmp_path / "cg"
    leaf = _fake_v2_tree(base, "mayflyd/hello")
    M.cgroup_setup(2, str(base), "mayflyd/hello", 128 << 20)
    assert (leaf / "memory.max").read_text() == str(128 << 20)
    assert (leaf / "memory.swap.max").read_text() == "0"
    # One write per controller; the fake file keeps the last one.
    assert (base / "cgroup.subtree_control").read_text() == "+cpu"
    assert (base / "mayflyd" / "cgroup.subtree_control").read_text() == "+cpu"
    assert (leaf / "cgroup.subtree_control").read_text() == ""  # the leaf enables nothing
    M.cgroup_join(2, str(base), "mayflyd/hello", os.getpid())
    assert (leaf / "cgroup.procs").read_text() == str(os.getpid())
    assert M.cgroup_stats(2, str(base), "mayflyd/hello") == {"oom_kill": 7, "memory_current": 12345}
    M.cgroup_setup(2, str(base), "mayflyd/hello", 0)
    assert (leaf / "memory.max").read_text() == "max"

    # A directory with files is not empty: rmdir fails and says so.
    with pytest.raises(OSError) as info:
        M.cgroup_remove(2, str(base), "mayflyd/hello")
    assert info.value.errno == errno.ENOTEMPTY and "hello" in str(info.value)
    for f in leaf.iterdir():
        f.unlink()
    M.cgroup_remove(2, str(base), "mayflyd/hello")
    assert not leaf.exists() and (base / "mayflyd").exists()  # parent not empty: kept
    M.cgroup_remove(2, str(base), "mayflyd/hello")  # already gone: fine
    for f in (base / "mayflyd").iterdir():
        f.unlink()
    (base / "mayflyd" / "other").mkdir()
    (base / "mayflyd" / "other").rmdir()
    M.cgroup_remove(2, str(base), "mayflyd/gone")
    assert not (base / "mayflyd").exists() and base.exists()


def test_cgroup_v2_fake_tree_controller_subset_and_errors(tmp_path: Path) -> None:
    base = tmp_path / "cg"
    leaf = _fake_v2_tree(base, "t", controllers="memory")
    M.cgroup_setup(2, str(base), "t", 1 << 20)
    assert (base / "cgroup.subtree_control").read_text() == "+memory"
    (leaf / "memory.max").unlink()
    with pytest.raises(FileNotFoundError, match="memory.max"):
        M.cgroup_setup(2, str(base), "t", 1 << 20)
    M.cgroup_setup(2, str(base), "t", 0)  # no limit asked: a missing memory.max is fine
    (base / "cgroup.controllers").unlink()
    with pytest.raises(FileNotFoundError, match="cgroup.controllers"):
        M.cgroup_setup(2, str(base), "t", 0)
    for bad in ["/abs", "a/../b", "", "a//b", "a/", "."]:
        with pytest.raises(OSError):
            M.cgroup_setup(2, str(base), bad, 0)
    with pytest.raises(OSError):
        M.cgroup_setup(3, str(base), "t", 0)
    with pytest.raises(OverflowError):
        M.cgroup_setup(2, str(base), "t", -1)


def test_cgroup_v2_fake_tree_pids_and_cpu(tmp_path: Path) -> None:
    base = tmp_path / "cg"
    leaf = _fake_v2_tree(base, "mayflyd/t")
    M.cgroup_setup(2, str(base), "mayflyd/t", 0)  # no pids/cpu limit: their files may be missing
    assert not (leaf / "pids.max").exists() and not (leaf / "cpu.max").exists()
    with pytest.raises(FileNotFoundError, match="pids.max"):
        M.cgroup_setup(2, str(base), "mayflyd/t", 0, 50)
    with pytest.raises(FileNotFoundError, match="cpu.max"):
        M.cgroup_setup(2, str(base), "mayflyd/t", 0, cpu_quota_us=50_000)
    for name in ("pids.max", "cpu.max"):
        (leaf / name).write_text("max\n")
    (leaf / "pids.current").write_text("3\n")
    M.cgroup_setup(2, str(base), "mayflyd/t", 1 << 20, 50, 25_000, 50_000)
    assert (leaf / "pids.max").read_text() == "50"
    assert (leaf / "cpu.max").read_text() == "25000 50000"
    M.cgroup_setup(2, str(base), "mayflyd/t", 1 << 20, pids_max=0, cpu_quota_us=0)
    assert (leaf / "pids.max").read_text() == "max"
    assert (leaf / "cpu.max").read_text() == "max 100000"
    assert M.cgroup_stats(2, str(base), "mayflyd/t") == {"oom_kill": 7, "memory_current": 12345,
                                                         "pids_current": 3}
    # The kernel's bounds, refused before anything is written.
    for quota, period in [(50_000, 999), (50_000, 1_000_001), (999, 100_000)]:
        with pytest.raises(OSError) as info:
            M.cgroup_setup(2, str(base), "mayflyd/t", 0, 0, quota, period)
        assert info.value.errno == errno.EINVAL
    assert (leaf / "cpu.max").read_text() == "max 100000"


@pytest.fixture
def sleeper() -> Any:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


@needs_root
@pytest.mark.skipif(not os.path.ismount("/sys/fs/cgroup/memory") or M.cgroup_detect("/sys/fs/cgroup") != 1,
                    reason="/sys/fs/cgroup/memory is not a cgroup v1 mount")
def test_cgroup_v1_real(sleeper: subprocess.Popen[bytes]) -> None:
    base = "/sys/fs/cgroup"
    top = f"mayflyd-test-{secrets.token_hex(4)}"
    group = f"{top}/t"
    have_pids = os.path.isdir(os.path.join(base, "pids"))
    have_cpu = os.path.isdir(os.path.join(base, "cpu"))
    try:
        M.cgroup_setup(1, base, group, 64 << 20, 64 if have_pids else 0, 50_000 if have_cpu else 0, 200_000)
        mem = Path(base, "memory", group)
        pids = Path(base, "pids", group)
        cpu = Path(base, "cpu", group)
        assert int((mem / "memory.limit_in_bytes").read_text()) == 64 << 20
        if have_pids:
            assert (pids / "pids.max").read_text().strip() == "64"
        if have_cpu:
            assert int((cpu / "cpu.cfs_period_us").read_text()) == 200_000
            assert int((cpu / "cpu.cfs_quota_us").read_text()) == 50_000
        M.cgroup_join(1, base, group, sleeper.pid)
        for ctrl in ("memory", "pids", "cpu"):
            if os.path.isdir(os.path.join(base, ctrl)):
                procs = Path(base, ctrl, group, "cgroup.procs").read_text().split()
                assert str(sleeper.pid) in procs, ctrl
        stats = M.cgroup_stats(1, base, group)
        assert stats["oom_kill"] == 0 and stats["memory_current"] >= 0
        if have_pids:
            assert stats["pids_current"] == 1
        M.cgroup_setup(1, base, group, 0)  # idempotent; 0 lifts the limits
        assert int((mem / "memory.limit_in_bytes").read_text()) > 1 << 60
        if have_pids:
            assert (pids / "pids.max").read_text().strip() == "max"
        if have_cpu:
            assert int((cpu / "cpu.cfs_period_us").read_text()) == 100_000
            assert int((cpu / "cpu.cfs_quota_us").read_text()) == -1
        # Busy: remove kills the sleeper, then removes the group and its parent.
        M.cgroup_remove(1, base, group)
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        for ctrl in ("memory", "pids", "cpu"):
            assert not os.path.exists(os.path.join(base, ctrl, top)), ctrl
    finally:
        for ctrl in ("memory", "pids", "cpu"):
            for d in (os.path.join(base, ctrl, group), os.path.join(base, ctrl, top)):
                if os.path.isdir(d):
                    os.rmdir(d)


@needs_root
@pytest.mark.skipif(M.cgroup_detect("/sys/fs/cgroup/unified") != 2, reason="no cgroup2 mount")
def test_cgroup_v2_real_without_controllers(sleeper: subprocess.Popen[bytes]) -> None:
    base = "/sys/fs/cgroup/unified"
    top = f"mayflyd-test-{secrets.token_hex(4)}"
    group = f"{top}/t"
    try:
        controllers = Path(base, "cgroup.controllers").read_text().split()
        M.cgroup_setup(2, base, group, 0 if "memory" not in controllers else 64 << 20)
        M.cgroup_join(2, base, group, sleeper.pid)
        assert Path(base, group, "cgroup.procs").read_text().split() == [str(sleeper.pid)]
        M.cgroup_remove(2, base, group)  # busy: cgroup.kill, then rmdir
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
        assert not os.path.exists(os.path.join(base, top))
    finally:
        for d in (os.path.join(base, group), os.path.join(base, top)):
            if os.path.isdir(d):
                os.rmdir(d)


# ---------------------------------------------------------------- identity

def _prctl_get_dumpable() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(3, 0, 0, 0, 0))  # PR_GET_DUMPABLE


def _has_cap(cap: int) -> bool:
    return bool(int(_status_fields()["CapEff"], 16) >> cap & 1)


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


@needs_root
def test_drop_privileges_in_child() -> None:
    def child() -> dict[str, Any]:
        if _has_cap(24):  # CAP_SYS_RESOURCE; missing in some containers (this CI VM)
            M.set_oom_score_adj(-500)  # as the host does while still root
        M.drop_privileges(65534, 65534)
        out: dict[str, Any] = {"ids": [os.getresuid(), os.getresgid(), os.getgroups()]}
        try:
            open("/root/mayflyd-should-not-exist", "w")
            out["root_write"] = "succeeded"
        except PermissionError:
            out["root_write"] = "denied"
        try:
            os.setuid(0)
            out["setuid"] = "succeeded"
        except PermissionError:
            out["setuid"] = "denied"
        st = _status_fields()
        out["caps"] = [st["CapInh"], st["CapPrm"], st["CapEff"], st["CapBnd"], st["CapAmb"]]
        out["nnp"] = st["NoNewPrivs"]
        out["dumpable"] = _prctl_get_dumpable()
        M.set_oom_score_adj(1000)  # raising works unprivileged, even while not dumpable
        out["oom"] = Path("/proc/self/oom_score_adj").read_text().strip()
        out["dumpable_after"] = _prctl_get_dumpable()
        try:
            M.set_oom_score_adj(-900)
            out["lower"] = "succeeded"
        except PermissionError as exc:
            out["lower"] = f"denied: {exc}"
        return out

    out = run_in_child(child)
    assert out["ids"] == [[65534] * 3, [65534] * 3, [65534]]
    assert out["root_write"] == "denied" and out["setuid"] == "denied"
    assert out["caps"] == ["0000000000000000"] * 5
    assert out["nnp"] == "1" and out["dumpable"] == 0 and out["dumpable_after"] == 0
    assert out["oom"] == "1000"
    assert out["lower"].startswith("denied: ") and "oom_score_adj" in out["lower"]


@needs_root
def test_drop_privileges_keeps_the_parent_death_signal_and_groups_option() -> None:
    """The kernel clears the parent-death signal on a uid change; the drop arms it again."""
    def child() -> list[Any]:
        os.setgroups([0, 65533])
        M.set_parent_death_signal(signal.SIGKILL, os.getppid())
        M.drop_privileges(65534, 65534, set_groups=False)
        libc = ctypes.CDLL(None, use_errno=True)
        sig = ctypes.c_int(-1)
        assert libc.prctl(2, ctypes.byref(sig), 0, 0, 0) == 0  # PR_GET_PDEATHSIG
        return [sig.value, sorted(os.getgroups())]

    assert run_in_child(child) == [signal.SIGKILL, [0, 65533]]  # groups left as they were


def test_drop_privileges_refuses_root_and_parent_check() -> None:
    with pytest.raises(OSError):
        M.drop_privileges(0, 0)

    def child() -> str:
        M.set_parent_death_signal(signal.SIGKILL, os.getppid())
        try:
            M.set_parent_death_signal(signal.SIGKILL, os.getppid() + 100000)
        except ProcessLookupError as exc:
            return str(exc)
        return "no error"

    assert "is gone" in run_in_child(child)


# ---------------------------------------------------------------- mounts

@needs_root
def test_enter_minimal_root_in_child(tmp_path: Path) -> None:
    hidden = Path(f"/root/mayflyd-test-{secrets.token_hex(4)}")
    hidden.mkdir(mode=0o700)
    (hidden / "prog.py").write_text("ANSWER = 42\n")
    (hidden / "secret.txt").write_text("not listed\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("data\n")
    pkg_dir = os.path.dirname(M.__file__)
    paths = [sys.prefix, sys.base_prefix, "/usr", "/lib", "/lib64", "/bin", pkg_dir, str(hidden / "prog.py"),
             str(tmp_path / "data"), str(tmp_path / "data" / "f.txt"), "/nonexistent-mayflyd", "/proc"]
    before = set(glob.glob("/tmp/mayflyd-root-*"))

    tests_dir = str(Path(__file__).resolve().parent)
    assert os.path.isdir(tests_dir)

    def child() -> dict[str, Any]:
        out: dict[str, Any] = {"skipped": M.enter_minimal_root(paths)}
        out["top"] = sorted(os.listdir("/"))
        out["root"] = sorted(os.listdir("/root"))
        out["hidden"] = sorted(os.listdir(str(hidden)))
        errors = {}
        for target in ["/usr/mayflyd-x", "/mayflyd-x", str(hidden / "prog.py"), str(tmp_path / "data" / "n")]:
            try:
                open(target, "a").close()
                errors[target] = 0
            except OSError as exc:
                errors[target] = exc.errno
        out["errors"] = errors
        with open("/dev/null", "w") as f:
            f.write("x")
        with open("/dev/urandom", "rb") as f:
            out["urandom"] = len(f.read(16))
        import decimal  # noqa: F401 - the stdlib is reachable
        M.drop_privileges(65534, 65534)
        out["prog"] = (hidden / "prog.py").read_text()
        try:
            os.listdir(tests_dir)
            out["tests"] = "visible"
        except FileNotFoundError:
            out["tests"] = "absent"
        return out

    try:
        out = run_in_child(child)
    finally:
        shutil.rmtree(hidden)
    assert out["skipped"] == ["/nonexistent-mayflyd"]
    expected_top = {p.split("/")[1] for p in paths if os.path.exists(p)} | {"dev"}
    assert set(out["top"]) == expected_top
    pythons_under_root = {Path(p).relative_to("/root").parts[0]
                          for p in (sys.prefix, sys.base_prefix) if p.startswith("/root/")}
    assert out["root"] == sorted(pythons_under_root | {hidden.name})
    assert out["hidden"] == ["prog.py"]
    assert set(out["errors"].values()) == {errno.EROFS}
    assert out["urandom"] == 16 and out["prog"] == "ANSWER = 42\n" and out["tests"] == "absent"
    assert set(glob.glob("/tmp/mayflyd-root-*")) == before  # no directory left in the host's /tmp


def test_enter_minimal_root_rejects_relative_paths() -> None:
    def child() -> str:
        try:
            M.enter_minimal_root(["usr"])
        except OSError as exc:
            return str(exc)
        return "accepted"

    assert "not absolute" in run_in_child(child)


# ---------------------------------------------------------------- namespaces

def _wait_exit(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} did not exit")


def _host_of_stub(stub: int, timeout: float = 10) -> int:
    """The pid, as we see it, of the host (pid 1 inside) that a stub forked."""
    children = Path(f"/proc/{stub}/task/{stub}/children")
    deadline = time.monotonic() + timeout
    while not children.read_text().split():
        assert time.monotonic() < deadline, "the stub has no child"
        time.sleep(0.01)
    return int(children.read_text().split()[0])


def test_enter_namespaces_rejects_unknown_network() -> None:
    with pytest.raises(ValueError, match="wifi"):
        M.enter_namespaces("wifi", "x")  # refused before anything is unshared


@needs_root
@pytest.mark.parametrize("network,reach_outside", [("none", "ENETUNREACH"), ("loopback", "ECONNREFUSED"),
                                                   ("full", "connected")])
def test_enter_namespaces(network: str, reach_outside: str) -> None:
    outside = socket.create_server(("127.0.0.1", 0))
    port = outside.getsockname()[1]
    ipc_before = os.stat("/proc/self/ns/ipc").st_ino
    r, w = os.pipe()
    stub = os.fork()
    if stub == 0:
        code = 40
        try:
            os.close(r)
            outside.close()
            M.enter_namespaces(network, f"box-{network}")
            out: dict[str, Any] = {"pid": os.getpid(), "ppid": os.getppid(), "hostname": socket.gethostname(),
                                   "ipc_new": os.stat("/proc/self/ns/ipc").st_ino != ipc_before}
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                out["outside"] = "connected"
            except OSError as exc:
                out["outside"] = errno.errorcode.get(exc.errno or 0, str(exc))
            if network == "loopback":
                inside = socket.create_server(("127.0.0.1", 0))
                socket.create_connection(inside.getsockname(), timeout=5).close()
                out["inside"] = "connected"
            data = json.dumps(out).encode()
        except BaseException:  # noqa: BLE001 - everything goes back to the test
            data = json.dumps({"error": traceback.format_exc()}).encode()
            code = 1
        try:
            os.write(w, data)
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = json.loads(f.read() or b'{"error": "no output"}')
    outside.close()
    status = _wait_exit(stub)
    assert "error" not in out, out["error"]
    assert os.waitstatus_to_exitcode(status) == 40  # the stub ends with the host's exit code
    assert (out["pid"], out["ppid"], out["hostname"]) == (1, 0, f"box-{network}")
    assert socket.gethostname() != f"box-{network}"
    assert out["ipc_new"] and out["outside"] == reach_outside
    if network == "loopback":
        assert out["inside"] == "connected"


@needs_root
@pytest.mark.parametrize("how,sig", [("killed from outside", signal.SIGKILL), ("crashed", signal.SIGSEGV)])
def test_namespace_stub_ends_with_the_hosts_signal(how: str, sig: int) -> None:
    stub = os.fork()
    if stub == 0:
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the stub re-raises SIGSEGV: no core file
            faulthandler.disable()
            M.enter_namespaces("none", "x")
            if how == "crashed":
                ctypes.string_at(0)
            time.sleep(60)
        finally:
            os._exit(3)
    if how == "killed from outside":
        os.kill(_host_of_stub(stub), signal.SIGKILL)
    status = _wait_exit(stub)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == sig


@needs_root
def test_namespace_host_dies_with_its_stub() -> None:
    """Also after the walls: the uid change would have cleared the parent-death signal."""
    r, w = os.pipe()
    stub = os.fork()
    if stub == 0:
        try:
            os.close(r)
            M.enter_namespaces("none", "x")
            M.enter_minimal_root(["/usr", "/proc"])
            M.drop_privileges(65534, 65534)
            os.write(w, b"ready")
            time.sleep(60)
        finally:
            os._exit(3)
    os.close(w)
    try:
        assert os.read(r, 5) == b"ready"
        pidfd = os.pidfd_open(_host_of_stub(stub))
        try:
            os.kill(stub, signal.SIGKILL)
            assert os.WTERMSIG(_wait_exit(stub)) == signal.SIGKILL
            assert select.select([pidfd], [], [], 5)[0] == [pidfd], "the host outlived its stub"
        finally:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)  # leave nothing behind if it did
            os.close(pidfd)
    finally:
        os.close(r)


# ---------------------------------------------------------------- seccomp

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
AUDIT_ARCH_X86_64 = 0xC000003E
NR_GETPPID = 110


def bpf_deny(nr: int, err: int) -> bytes:
    """A filter failing syscall nr with err on x86_64 and allowing everything else."""
    insn = struct.Struct("HBBI")
    ld_abs, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    return b"".join([
        insn.pack(ld_abs, 0, 0, 4),                      # seccomp_data.arch
        insn.pack(jeq, 1, 0, AUDIT_ARCH_X86_64),
        insn.pack(ret, 0, 0, SECCOMP_RET_ALLOW),
        insn.pack(ld_abs, 0, 0, 0),                      # seccomp_data.nr
        insn.pack(jeq, 0, 1, nr),
        insn.pack(ret, 0, 0, SECCOMP_RET_ERRNO | err),
        insn.pack(ret, 0, 0, SECCOMP_RET_ALLOW),
    ])


def _raw_getppid() -> tuple[int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.set_errno(0)
    return int(libc.syscall(NR_GETPPID)), ctypes.get_errno()


def _seccomp_status() -> str:
    return _status_fields()["Seccomp"]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the test filter is for x86_64")
def test_seccomp_load() -> None:
    for bad in (b"", b"\0" * 7, b"\0" * 12, bpf_deny(NR_GETPPID, errno.EPERM) * 600):
        with pytest.raises(ValueError, match="instruction"):
            M.seccomp_load(bad)

    def child() -> list[Any]:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
        M.seccomp_load(bpf_deny(NR_GETPPID, errno.EPERM))
        return [_raw_getppid(), _seccomp_status()]

    assert run_in_child(child) == [[-1, errno.EPERM], "2"]
    assert _raw_getppid()[0] == os.getppid() and _seccomp_status() == "0"

    def unprivileged_child() -> str:
        if is_root:
            os.setgid(65534)
            os.setuid(65534)
        try:
            M.seccomp_load(bpf_deny(NR_GETPPID, errno.EPERM))
        except PermissionError as exc:
            return str(exc)
        return "loaded"

    assert "no_new_privs" in run_in_child(unprivileged_child)


# ---------------------------------------------------------------- serve_fork

def echo_runner(req_id: int, method: str, path: str, query: str, headers: list[tuple[str, str]],
                body: bytes, client: str) -> Any:
    if path == "/sleep":
        Path(query).write_text(str(os.getpid()))
        time.sleep(60)
    if path == "/exit3":
        os._exit(3)
    if path == "/raise":
        raise RuntimeError("boom from the runner")
    if path == "/shape":
        return "not a triple"
    if path == "/slow":
        time.sleep(0.3)
    if path == "/inodes":
        return 200, [], json.dumps(open_inodes()).encode()
    hdrs = [("x-req-id", str(req_id)), ("x-method", method), ("x-path", path), ("x-query", query),
            ("x-client", client), ("x-pid", str(os.getpid())), ("x-random", repr(random.random())),
            ("x-oom", Path("/proc/self/oom_score_adj").read_text().strip()), ("x-uid", str(os.getuid()))]
    return 200, hdrs + [("x-in-" + n, v) for n, v in headers], body[::-1]


def open_inodes() -> list[int]:
    """The inodes of this process's open fds (sockets included)."""
    inodes = []
    for name in os.listdir("/proc/self/fd"):
        try:
            inodes.append(os.stat(f"/proc/self/fd/{name}").st_ino)
        except OSError:
            pass  # the directory's own fd, closed by now
    return inodes


class Host:
    """serve_fork in a forked child; the test plays the supervisor on the
    control channel and the front end on the data channel it attaches
    (`data`; attach() for more)."""

    def __init__(self, runner: Callable[..., Any] = echo_runner, setup: Callable[[], None] | None = None, *,
                 ready_pid: int | None = None, **serve_kw: Any) -> None:
        self.ctrl, ctrl_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            code = 0
            try:
                self.ctrl.close()
                if setup is not None:
                    setup()
                self.serve(ctrl_end.fileno(), runner, serve_kw)
            except BaseException:  # noqa: BLE001 - reported through the exit status
                traceback.print_exc()
                code = 2
            os._exit(code)
        # What no sandbox or worker may hold: the host's ends of its channels.
        self.host_ends = {os.fstat(ctrl_end.fileno()).st_ino}
        ctrl_end.close()
        self.ctrl.settimeout(10)
        msg_type, req_id, payload = parse_frame(self.ctrl.recv(4096))
        assert (msg_type, req_id) == (M.MSG_READY, 0), payload
        # A host in its own pid namespace (enter_namespaces) is pid 1 there.
        assert READY.unpack(payload) == (ready_pid or self.pid, self.ENGINE)
        self.data = self.attach()

    ENGINE = M.ENGINE_FORK

    def serve(self, ctrl_fd: int, runner: Callable[..., Any], serve_kw: dict[str, Any]) -> None:
        """In the forked host: the engine's serve loop."""
        M.serve_fork(ctrl_fd, runner, [], **serve_kw)

    def attach(self) -> socket.socket:
        """A new data channel: its host end sent with DATA_CHANNEL, ours returned."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socket.send_fds(self.ctrl, [frame(M.MSG_DATA_CHANNEL, 0)], [theirs.fileno()])
        self.host_ends.add(os.fstat(theirs.fileno()).st_ino)
        theirs.close()
        ours.settimeout(10)
        return ours

    def request(self, req_id: int, *, timeout_ms: int = 10_000, on: socket.socket | None = None,
                **kw: Any) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socket.send_fds(on or self.data, [frame(M.MSG_REQUEST, req_id, struct.pack("=II", timeout_ms, 0))],
                        [theirs.fileno()])
        theirs.close()
        mine.settimeout(10)
        for pkt in request_packets(req_id, **kw):
            mine.send(pkt)
        return mine

    def bare_request(self, req_id: int) -> Any:
        """A REQUEST with nothing sent for it: for one the host refuses."""
        return bare_request(self.data, req_id)

    def ctrl_message(self) -> tuple[int, int, bytes]:
        return parse_frame(self.ctrl.recv(4096))

    def data_message(self, on: socket.socket | None = None) -> tuple[int, int, bytes]:
        return parse_frame((on or self.data).recv(4096))

    def any_message(self) -> tuple[int, int, bytes]:
        """The next message on either channel, checked to be on its own."""
        ready, _, _ = select.select([self.ctrl, self.data], [], [], 10)
        assert ready, "no message from the host"
        msg_type, rid, payload = parse_frame(ready[0].recv(4096))
        assert (msg_type in (M.MSG_CHILD_EXIT, M.MSG_REQUEST_FAILED)) == (ready[0] is self.data), msg_type
        return msg_type, rid, payload

    def child_exit(self, req_id: int, on: socket.socket | None = None) -> tuple[int, int, int]:
        msg_type, rid, payload = self.data_message(on)
        assert (msg_type, rid) == (M.MSG_CHILD_EXIT, req_id), (msg_type, payload)
        pid, status, flags, cost_us, pages, _ = CHILD_EXIT.unpack(payload)
        assert pages == 0  # the fork engine rewinds nothing
        # The fork's cost: something, and less than a second on any machine.
        assert 0 < cost_us < 1_000_000
        return pid, status, flags

    def inodes_in_a_child(self, req_id: int) -> set[int]:
        """What a sandbox (or worker) holds open, from its runner's /inodes."""
        sock = self.request(req_id, path=b"/inodes")
        inodes = set(json.loads(read_response(sock, req_id)[2]))
        self.child_exit(req_id)
        return inodes

    def close(self, channel: str = "both") -> int:
        """Close the control channel, the data channel or both, and wait
        for the host's exit code (only the control channel's end ends it)."""
        if channel in ("control", "both"):
            self.ctrl.close()
        if channel in ("data", "both"):
            self.data.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.01)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        raise AssertionError(f"the host did not return after closing {channel} channel(s)")


@pytest.fixture
def host() -> Any:
    h = Host()
    yield h
    if h.ctrl.fileno() >= 0:
        h.close()


def read_response(sock: socket.socket, req_id: int) -> tuple[int, dict[str, str], bytes]:
    pkts = []
    while True:
        pkt = sock.recv(M.FRAME_HEADER_SIZE + M.MAX_PAYLOAD)
        assert pkt, "EOF before the response's last packet"
        pkts.append(pkt)
        if FRAME.unpack_from(pkt)[1] in (M.MSG_RESP_END, M.MSG_RESP_WHOLE):
            break
    status, headers, body = parse_response(pkts, req_id)
    return status, {n.decode(): v.decode("latin-1") for n, v in headers}, body


def test_serve_fork_echo(host: Host) -> None:
    body = os.urandom(100_000)
    sock = host.request(11, method=b"PUT", path=b"/p", query=b"q=1", headers=[(b"X-A", b"\xe9")], body=body)
    status, headers, got = read_response(sock, 11)
    assert status == 200 and got == body[::-1]
    assert headers["x-req-id"] == "11" and headers["x-method"] == "PUT" and headers["x-path"] == "/p"
    assert headers["x-query"] == "q=1" and headers["x-client"] == "192.0.2.1:5000"
    assert headers["x-in-X-A"] == "\xe9" and headers["x-oom"] == "1000"
    assert sock.recv(100) == b""  # the sandbox exited
    pid, status, flags = host.child_exit(11)
    assert pid == int(headers["x-pid"]) and pid != host.pid
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and flags == 0

    # Each sandbox starts from the host's state with a fresh random seed.
    sock = host.request(12)
    _, headers2, _ = read_response(sock, 12)
    host.child_exit(12)
    assert headers2["x-random"] != headers["x-random"]
    assert host.close() == 0


def test_serve_fork_cancel(host: Host, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    sock = host.request(21, path=b"/sleep", query=str(pid_file).encode())
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    host.data.send(frame(M.MSG_CANCEL, 21))
    pid, status, flags = host.child_exit(21)
    assert pid == int(pid_file.read_text())
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert flags == M.EXIT_CANCELLED
    assert sock.recv(100) == b""
    host.data.send(frame(M.MSG_CANCEL, 999))  # unknown: ignored
    assert host.close() == 0


def test_serve_fork_timeout(host: Host) -> None:
    sock = host.request(22, timeout_ms=0, path=b"/sleep", query=b"/dev/null")
    start = time.monotonic()
    _, status, flags = host.child_exit(22)
    assert 0.9 < time.monotonic() - start < 5  # timeout 0 + the host's grace
    assert os.WIFSIGNALED(status) and flags == M.EXIT_TIMED_OUT
    assert sock.recv(100) == b""


@pytest.mark.parametrize("path,code", [(b"/exit3", 3), (b"/raise", M.CHILD_EXIT_HANDLER),
                                       (b"/shape", M.CHILD_EXIT_HANDLER)])
def test_serve_fork_sandbox_without_answer(host: Host, path: bytes, code: int) -> None:
    sock = host.request(31, path=path)
    assert sock.recv(100) == b""
    _, status, flags = host.child_exit(31)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == code and flags == 0


def test_serve_fork_bad_request_frames(host: Host) -> None:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(host.data, [frame(M.MSG_REQUEST, 41, struct.pack("=II", 10_000, 0))], [theirs.fileno()])
    theirs.close()
    mine.send(frame(M.MSG_REQ_END, 41))
    _, status, _ = host.child_exit(41)
    assert os.WEXITSTATUS(status) == M.CHILD_EXIT_BAD_REQUEST
    mine.close()


def test_serve_fork_concurrent(host: Host) -> None:
    a = host.request(51, path=b"/slow", body=b"abc")
    b = host.request(52, path=b"/slow", body=b"xyz")
    assert read_response(b, 52)[2] == b"zyx"
    assert read_response(a, 51)[2] == b"cba"
    seen = set()
    for _ in range(2):
        msg_type, rid, payload = host.data_message()
        assert msg_type == M.MSG_CHILD_EXIT
        assert os.WEXITSTATUS(CHILD_EXIT.unpack(payload)[1]) == 0
        seen.add(rid)
    assert seen == {51, 52}


def test_serve_fork_rejects_bad_data_messages(host: Host) -> None:
    host.data.send(frame(M.MSG_REQUEST, 61, struct.pack("=II", 1000, 0)))  # no fd
    msg_type, rid, payload = host.data_message()
    assert (msg_type, rid) == (M.MSG_REQUEST_FAILED, 61)
    assert REQUEST_FAILED.unpack(payload)[0] == errno.EBADMSG
    r, w = os.pipe()  # not a SEQPACKET socket
    socket.send_fds(host.data, [frame(M.MSG_REQUEST, 62, struct.pack("=II", 1000, 0))], [r])
    os.close(r)
    os.close(w)
    msg_type, rid, payload = host.data_message()
    assert (msg_type, rid) == (M.MSG_REQUEST_FAILED, 62)
    assert REQUEST_FAILED.unpack(payload)[0] == errno.ENOTSOCK
    stream_a, stream_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    socket.send_fds(host.data, [frame(M.MSG_REQUEST, 64, struct.pack("=II", 1000, 0))], [stream_b.fileno()])
    stream_a.close()
    stream_b.close()
    msg_type, rid, payload = host.data_message()
    assert (msg_type, rid) == (M.MSG_REQUEST_FAILED, 64)
    assert REQUEST_FAILED.unpack(payload)[0] == errno.EPROTOTYPE
    host.data.send(b"garbage that is not a frame at all")  # logged, ignored
    host.ctrl.send(b"garbage on the control channel too")
    sock = host.request(63)
    assert read_response(sock, 63)[0] == 200
    host.child_exit(63)


def wait_for_pid_file(pid_file: Path) -> int:
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return int(pid_file.read_text())


def test_serve_fork_shutdown_and_close_kill_sandboxes(tmp_path: Path) -> None:
    """SHUTDOWN, or the end of the control channel, ends the host: a host
    without its supervisor cannot serve."""
    for how in ("shutdown", "close", "close control"):
        h = Host()
        sock = h.request(71, path=b"/sleep", query=str(tmp_path / f"pid-{how}").encode())
        sandbox = wait_for_pid_file(tmp_path / f"pid-{how}")
        if how == "shutdown":
            h.ctrl.send(frame(M.MSG_SHUTDOWN, 0))
        assert h.close(how.removeprefix("close ") if how.startswith("close ") else "both") == 0
        assert sock.recv(100) == b""
        with pytest.raises(ProcessLookupError):
            os.kill(sandbox, 0)  # killed and reaped by the host
        h.ctrl.close()
        h.data.close()


def test_serve_fork_refuses_requests_on_the_control_channel(host: Host, tmp_path: Path) -> None:
    refused, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(host.ctrl, [frame(M.MSG_REQUEST, 101, struct.pack("=II", 10_000, 0))], [theirs.fileno()])
    theirs.close()
    refused.settimeout(10)
    assert refused.recv(100) == b"", "the host closed the request's socket unanswered"
    sock = host.request(102, path=b"/sleep", query=str(tmp_path / "pid").encode())
    sandbox = wait_for_pid_file(tmp_path / "pid")
    host.ctrl.send(frame(M.MSG_CANCEL, 102))  # refused: the sandbox keeps running
    host.data.send(frame(M.MSG_CANCEL, 102))
    # The first message on either channel: nothing about request 101.
    msg_type, rid, payload = host.any_message()
    assert (msg_type, rid) == (M.MSG_CHILD_EXIT, 102)
    pid, _, flags, *_ = CHILD_EXIT.unpack(payload)
    assert (pid, flags) == (sandbox, M.EXIT_CANCELLED)
    assert sock.recv(100) == b""
    sock = host.request(103, body=b"still serving")
    assert read_response(sock, 103)[2] == b"gnivres llits"
    host.child_exit(103)
    assert select.select([host.ctrl], [], [], 0)[0] == [], "nothing was said on the control channel"
    assert host.close() == 0


def test_serve_fork_refuses_shutdown_on_the_data_channel(host: Host) -> None:
    host.data.send(frame(M.MSG_SHUTDOWN, 0))
    sock = host.request(111, body=b"on")
    assert read_response(sock, 111)[2] == b"no"
    host.child_exit(111)
    assert os.waitpid(host.pid, os.WNOHANG) == (0, 0)
    assert host.close() == 0


def test_serve_fork_sandboxes_hold_neither_channel(host: Host) -> None:
    host.attach()  # a second data channel, which no sandbox may hold either
    inodes = host.inodes_in_a_child(121)
    assert inodes and not inodes & host.host_ends


# ---------------------------------------------------------------- data channels, queue

def queued_end(msg: tuple[int, int, bytes], req_id: int) -> int:
    """The flags of a queued request's end: it never ran (pid 0, read as a kill)."""
    msg_type, rid, payload = msg
    assert (msg_type, rid) == (M.MSG_CHILD_EXIT, req_id), (msg_type, rid)
    pid, status, flags, cost_us, pages, _ = CHILD_EXIT.unpack(payload)
    assert (pid, status, cost_us, pages) == (0, signal.SIGKILL, 0, 0)
    return flags


def request_failed(msg: tuple[int, int, bytes], req_id: int) -> int:
    msg_type, rid, payload = msg
    assert (msg_type, rid) == (M.MSG_REQUEST_FAILED, req_id), (msg_type, rid)
    return int(REQUEST_FAILED.unpack(payload)[0])


def bare_request(channel: socket.socket, req_id: int) -> socket.socket:
    """A REQUEST with its socket but nothing sent on it: for one the host refuses."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    socket.send_fds(channel, [frame(M.MSG_REQUEST, req_id, struct.pack("=II", 10_000, 0))], [theirs.fileno()])
    theirs.close()
    mine.settimeout(10)
    return mine


def peer_closed(sock: socket.socket) -> bool:
    """The other end was closed (with our request unread in it: a reset)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def nothing_on(*channels: socket.socket) -> bool:
    return select.select(list(channels), [], [], 0.2)[0] == []


def test_serve_fork_reports_each_request_on_the_channel_it_came_on(host: Host) -> None:
    second = host.attach()
    a = host.request(1, path=b"/slow", body=b"abc")
    b = host.request(2, path=b"/slow", body=b"xyz", on=second)
    assert read_response(a, 1)[2] == b"cba" and read_response(b, 2)[2] == b"zyx"
    assert os.WEXITSTATUS(host.child_exit(2, on=second)[1]) == 0
    assert os.WEXITSTATUS(host.child_exit(1)[1]) == 0
    # A request id is unique per host, not per channel.
    c = host.request(3, path=b"/slow", body=b"one")
    dup = bare_request(second, 3)
    assert request_failed(host.data_message(second), 3) == errno.EEXIST
    assert peer_closed(dup)
    assert read_response(c, 3)[2] == b"eno"
    host.child_exit(3)
    assert nothing_on(host.data, second, host.ctrl)
    assert host.close() == 0


def test_serve_fork_end_of_a_data_channel_cancels_its_requests_only(host: Host, tmp_path: Path) -> None:
    second = host.attach()
    sock = host.request(1, path=b"/sleep", query=str(tmp_path / "pid").encode(), on=second)
    sandbox = wait_for_pid_file(tmp_path / "pid")
    other = host.request(2, path=b"/slow", body=b"on", on=host.data)
    second.close()
    assert sock.recv(100) == b""  # killed
    deadline = time.monotonic() + 10
    while True:  # and reaped by the host
        try:
            os.kill(sandbox, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert read_response(other, 2)[2] == b"no"
    host.child_exit(2)
    # No report of request 1 anywhere; the host serves on.
    assert nothing_on(host.data, host.ctrl)
    third = host.attach()
    sock = host.request(1, body=b"again", on=third)
    assert read_response(sock, 1)[2] == b"niaga"
    host.child_exit(1, on=third)
    assert host.close() == 0


def test_serve_fork_refuses_a_bad_data_channel(host: Host) -> None:
    ends: list[socket.socket] = []

    def pair() -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.settimeout(10)
        ends.append(ours)
        return theirs

    host.ctrl.send(frame(M.MSG_DATA_CHANNEL, 0))  # no fd
    two = [pair(), pair()]
    socket.send_fds(host.ctrl, [frame(M.MSG_DATA_CHANNEL, 0)], [t.fileno() for t in two])
    with_payload = pair()
    socket.send_fds(host.ctrl, [frame(M.MSG_DATA_CHANNEL, 0, b"x")], [with_payload.fileno()])
    stream_a, stream_b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    socket.send_fds(host.ctrl, [frame(M.MSG_DATA_CHANNEL, 0)], [stream_b.fileno()])
    for sock in [*two, with_payload, stream_b]:
        sock.close()
    stream_a.settimeout(10)
    # Each refused fd was closed by the host: our ends read EOF.
    for ours in ends:
        assert ours.recv(100) == b""
    assert stream_a.recv(100) == b""
    # 64 channels at most: the first attached one and 63 more; the 65th is refused.
    more = [host.attach() for _ in range(M.MAX_DATA_CHANNELS - 1)]
    refused = host.attach()
    assert refused.recv(100) == b""
    sock = host.request(1, body=b"serving", on=more[-1])
    assert read_response(sock, 1)[2] == b"gnivres"
    host.child_exit(1, on=more[-1])
    assert os.waitpid(host.pid, os.WNOHANG) == (0, 0)
    assert host.close() == 0


def check_the_queue_is_bounded(h: Host, tmp_path: Path) -> int:
    """A host at concurrency 1 and queue 1: the second request waits its
    turn, the third is refused with EAGAIN. The sandbox (or worker) of the
    first; the second's end is left to the caller."""
    h.request(1, path=b"/sleep", query=str(tmp_path / "pid").encode())
    first = wait_for_pid_file(tmp_path / "pid")
    waiting = h.request(2, body=b"my turn")
    refused = h.bare_request(3)
    assert request_failed(h.any_message(), 3) == errno.EAGAIN
    assert peer_closed(refused)
    h.data.send(frame(M.MSG_CANCEL, 1))
    assert h.child_exit(1)[2] == M.EXIT_CANCELLED
    assert read_response(waiting, 2)[2] == b"nrut ym"
    return first


def check_queued_requests_end(h: Host, tmp_path: Path) -> None:
    """A host at concurrency 1, queue 2 or more: a queued request ends at its
    deadline or on CANCEL, never having run."""
    h.request(1, path=b"/sleep", query=str(tmp_path / "pid").encode())
    wait_for_pid_file(tmp_path / "pid")
    start = time.monotonic()
    late = h.request(2, timeout_ms=0)
    cancelled = h.request(3)
    h.data.send(frame(M.MSG_CANCEL, 3))
    assert queued_end(h.any_message(), 3) == M.EXIT_CANCELLED
    assert peer_closed(cancelled)
    assert queued_end(h.any_message(), 2) == M.EXIT_TIMED_OUT
    assert 0.9 < time.monotonic() - start < 5  # timeout 0 + the host's grace
    assert peer_closed(late)
    h.data.send(frame(M.MSG_CANCEL, 1))
    assert h.child_exit(1)[2] == M.EXIT_CANCELLED


def test_serve_fork_queues_beyond_concurrency_and_refuses_beyond_the_queue(tmp_path: Path) -> None:
    h = Host(concurrency=1, queue=1)
    try:
        check_the_queue_is_bounded(h, tmp_path)
        assert h.child_exit(2)[1:] == (0, 0)
    finally:
        assert h.close() == 0


def test_serve_fork_queued_requests_time_out_or_are_cancelled(tmp_path: Path) -> None:
    h = Host(concurrency=1, queue=2)
    try:
        check_queued_requests_end(h, tmp_path)
    finally:
        assert h.close() == 0


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[tuple[Callable[[], None], int]]:
    """A memory cgroup of `limit` bytes (or a skip): a setup that moves the
    calling process into it, and its memory events file's fd."""
    if not is_root:
        pytest.skip("needs root")
    base = "/sys/fs/cgroup"
    version = M.cgroup_detect(base)
    if version == 1 and os.path.isdir(f"{base}/memory"):
        memory_dir, events = f"{base}/memory", "memory.oom_control"
    elif version == 2 and "memory" in Path(f"{base}/cgroup.controllers").read_text().split():
        memory_dir, events = base, "memory.events"
    else:
        pytest.skip("no cgroup with a memory controller")
    group = f"mayflyd-test-{secrets.token_hex(4)}"
    M.cgroup_setup(version, base, group, limit)
    try:
        oom_fd = os.open(os.path.join(memory_dir, group, events), os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield (lambda: M.cgroup_join(version, base, group, os.getpid())), oom_fd
        finally:
            os.close(oom_fd)  # a host forked meanwhile has its own
    finally:
        M.cgroup_remove(version, base, group)


def test_serve_fork_flags_a_sandbox_the_oom_killer_took() -> None:
    with memory_cgroup(64 << 20) as (join, oom_fd):
        h = Host(limits_runner, join, oom_fd=oom_fd)
        try:
            sock = h.request(1, path=b"/fill", query=str(256 << 20).encode())
            assert peer_closed(sock)
            _, status, flags = h.child_exit(1)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            assert flags == M.EXIT_OUT_OF_MEMORY
            # A sandbox the host kills is not the OOM killer's.
            h.request(2, path=b"/sleep", query=b"/dev/null", timeout_ms=0)
            assert h.child_exit(2)[2] == M.EXIT_TIMED_OUT
        finally:
            assert h.close() == 0


def limits_runner(req_id: int, method: str, path: str, query: str, headers: list[tuple[str, str]],
                  body: bytes, client: str) -> Any:
    if path == "/alloc":
        try:
            block = bytearray(int(query))
            return 200, [], b"allocated %d" % len(block)
        except MemoryError:
            return 200, [], b"MemoryError"
    if path == "/spin":
        while True:
            pass
    if path == "/fill":  # written, not just reserved: charged to the cgroup
        block = b"\1" * int(query)
        return 200, [], b"filled %d" % len(block)
    if path == "/files":
        files = []
        try:
            for _ in range(20):
                files.append(open("/dev/null", "rb"))
            return 200, [], b"opened 20"
        except OSError as exc:
            return 200, [], errno.errorcode[exc.errno or 0].encode()
        finally:
            for f in files:
                f.close()
    if path == "/getppid":
        return 200, [("x-seccomp", _seccomp_status())], json.dumps(_raw_getppid()).encode()
    return echo_runner(req_id, method, path, query, headers, body, client)


def test_serve_fork_memory_limit() -> None:
    h = Host(limits_runner, memory_bytes=64 << 20)
    try:
        for req_id, size, expected in [(1, 128 << 20, b"MemoryError"), (2, 16 << 20, b"allocated %d" % (16 << 20))]:
            sock = h.request(req_id, path=b"/alloc", query=str(size).encode())
            assert read_response(sock, req_id)[2] == expected
            assert h.child_exit(req_id)[1:] == (0, 0)
    finally:
        assert h.close() == 0


def test_serve_fork_cpu_limit(tmp_path: Path) -> None:
    h = Host(limits_runner, cpu_ms=200)
    try:
        start = time.monotonic()
        sock = h.request(1, timeout_ms=30_000, path=b"/spin")
        _, status, flags = h.child_exit(1)
        assert time.monotonic() - start < 10  # the CPU budget killed it, not the deadline (31 s)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert flags == M.EXIT_CPU_EXCEEDED
        assert sock.recv(100) == b""
        # A request within its budget, and a cancelled one, carry no CPU flag.
        sock = h.request(2, body=b"ok")
        assert read_response(sock, 2)[2] == b"ko"
        assert h.child_exit(2)[1:] == (0, 0)
        pid_file = tmp_path / "pid"
        h.request(3, path=b"/sleep", query=str(pid_file).encode())
        deadline = time.monotonic() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        h.data.send(frame(M.MSG_CANCEL, 3))
        assert h.child_exit(3)[2] == M.EXIT_CANCELLED
    finally:
        assert h.close() == 0


def test_serve_fork_nofile_limit() -> None:
    h = Host(limits_runner, nofile=16)
    try:
        sock = h.request(1, path=b"/files")
        assert read_response(sock, 1)[2] == b"EMFILE"
        h.child_exit(1)
    finally:
        assert h.close() == 0
    h = Host(limits_runner)
    try:
        sock = h.request(2, path=b"/files")
        assert read_response(sock, 2)[2] == b"opened 20"
        h.child_exit(2)
    finally:
        assert h.close() == 0


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the test filter is for x86_64")
def test_serve_fork_request_filter() -> None:
    with pytest.raises(ValueError, match="request_filter"):
        M.serve_fork(-1, limits_runner, [], request_filter=b"1234567")
    h = Host(limits_runner, request_filter=bpf_deny(NR_GETPPID, errno.EPERM))
    try:
        sock = h.request(1, path=b"/getppid")
        _, headers, body = read_response(sock, 1)
        assert json.loads(body) == [-1, errno.EPERM] and headers["x-seccomp"] == "2"
        assert h.child_exit(1)[1:] == (0, 0)
        host_status = {k: v.strip() for k, _, v in
                       (line.partition(":") for line in Path(f"/proc/{h.pid}/status").read_text().splitlines())}
        assert host_status["Seccomp"] == "0"  # the host itself is not filtered
    finally:
        assert h.close() == 0
