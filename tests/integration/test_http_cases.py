"""The HTTP cases of the front end and the status each gets, against the real daemon.

One list (CASES) is both the tests and the table of docs/http.md: each case is
raw bytes sent over a TCP socket (malformed requests need that), the statuses
of the answers read back in order, whether the connection then closes, and a
check of what the program saw where the status alone says too little.

    python -m tests.integration.test_http_cases --write docs/http.md   # regenerate the table
    python -m tests.integration.test_http_cases --check docs/http.md   # exit 1 if stale
"""
from __future__ import annotations

import base64
import gzip
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pytest

from mayflyd.config import docs
from tests.daemon_harness import Daemon
from tests.http_answers import Answer, Reader

BEGIN: Final = "<!-- BEGIN generated: http cases -->"
END: Final = "<!-- END generated: http cases -->"
COMMAND: Final = "python -m tests.integration.test_http_cases --write docs/http.md"

# The daemons' timeouts, short so that the timeout cases end fast.
HEADER_TIMEOUT_MS: Final = 1500
IDLE_TIMEOUT_MS: Final = 1500
MAX_BODY: Final = 64 * 1024  # the echo tenant's max_body

# Returns the request as JSON; a few paths answer otherwise, for the cases of the answer.
ECHO = '''
import base64
import json


def on_client_request(request):
    if request.path == "/__hop":
        return 200, {"Connection": "close", "Keep-Alive": "timeout=1", "Transfer-Encoding": "chunked",
                     "Upgrade": "h2c", "Content-Length": "999", "X-Kept": "1"}, "hop"
    if request.path == "/__bad-value":
        return 200, {"X-A": "a\\r\\nSet-Cookie: pwned=1"}, "x"
    if request.path == "/__bad-name":
        return 200, {"Bad Name": "v"}, "x"
    if request.path == "/__no-content":
        return 204, {}, ""
    return 200, {"Content-Type": "application/json"}, json.dumps({
        "tenant": "echo",
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "query": request.query,
        "headers": request.headers.raw(),
        "body": base64.b64encode(request.body).decode("ascii"),
        "body_length": len(request.body),
    })
'''

DEFAULT = '''
def on_client_request(request):
    return "the default tenant"
'''


# ---- the client side --------------------------------------------------------

def seen(answer: Answer) -> dict[str, Any]:
    """What the echo tenant's program saw, from its answer."""
    request = answer.json()
    assert request.get("tenant") == "echo", f"not the echo tenant: {answer.body!r}"
    return request


def body_seen(answer: Answer) -> bytes:
    return base64.b64decode(seen(answer)["body"])


@dataclass
class Exchange:
    """What a case got: its answers in order, the reader for more, and when the last byte was sent."""
    answers: list[Answer]
    reader: Reader
    sent_at: float


# ---- the cases --------------------------------------------------------------

@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Case:
    name: str
    send: tuple[bytes | Pause, ...]  # raw bytes, with pauses between the pieces
    statuses: tuple[int, ...]        # of the answers, in order
    what: str                        # what is sent, in a few words (the table's column)
    closes: bool = False             # the connection ends after the last answer
    check: Callable[[Exchange], None] | None = None
    head_only: frozenset[int] = frozenset()  # answers to HEAD: no body follows
    daemon: str = "default"          # "default": has a default tenant; "no-default": has none

    def status_text(self) -> str:
        """The table's Status cell."""
        if not self.statuses:
            return "no answer, close" if self.closes else "no answer"
        if len(self.statuses) > 3 and len(set(self.statuses)) == 1:
            text = f"{self.statuses[0]} (each of {len(self.statuses)})"
        else:
            text = ", ".join(str(s) for s in self.statuses)
        return f"{text}, then close" if self.closes else text


def req(method: str = "GET", target: str = "/", *headers: str, host: str | None = "echo.localhost",
        body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}", *([f"Host: {host}"] if host is not None else []), *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw(text: bytes) -> tuple[bytes | Pause, ...]:
    return (text,)


def chunked(*chunks: bytes, trailer: bytes = b"", ext: bytes = b"") -> bytes:
    return b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks) + b"0\r\n" + trailer + b"\r\n"


# Checks of what the program saw, for cases where the status says too little.

def echoed(**expected: Any) -> Callable[[Exchange], None]:
    def check(exchange: Exchange) -> None:
        request = seen(exchange.answers[-1])
        for key, value in expected.items():
            assert request[key] == value, f"{key}: {request[key]!r} != {value!r}"
    return check


def body_is(body: bytes) -> Callable[[Exchange], None]:
    def check(exchange: Exchange) -> None:
        answer = exchange.answers[-1]
        assert body_seen(answer) == body and seen(answer)["body_length"] == len(body)
    return check


def has_header(name: str, value: str) -> Callable[[Exchange], None]:
    def check(exchange: Exchange) -> None:
        assert [name, value] in seen(exchange.answers[-1])["headers"], seen(exchange.answers[-1])["headers"]
    return check


def paths_in_order(*paths: str) -> Callable[[Exchange], None]:
    def check(exchange: Exchange) -> None:
        assert [seen(a)["path"] for a in exchange.answers] == list(paths)
    return check


def served_by_default(exchange: Exchange) -> None:
    assert exchange.answers[-1].body == b"the default tenant"


def echo_served(exchange: Exchange) -> None:
    assert seen(exchange.answers[-1])["tenant"] == "echo"


def not_a_tenant(exchange: Exchange) -> None:
    assert b"default tenant" not in exchange.answers[-1].body and b'"tenant"' not in exchange.answers[-1].body


def closed_after(low: float, high: float) -> Callable[[Exchange], None]:
    """The connection ends between low and high seconds after the last byte sent."""
    def check(exchange: Exchange) -> None:
        if not exchange.answers:
            assert exchange.reader.closed(within=high + 2)
        elapsed = time.monotonic() - exchange.sent_at
        assert low <= elapsed <= high, f"closed after {elapsed:.2f}s, not within {low}..{high}s"
    return check


def idle_close(exchange: Exchange) -> None:
    assert exchange.answers[0].header("Connection") != "close"
    answered = time.monotonic()
    assert exchange.reader.closed(within=IDLE_TIMEOUT_MS / 1000 + 3), "an idle connection stays open"
    elapsed = time.monotonic() - answered
    assert IDLE_TIMEOUT_MS / 1000 - 0.5 <= elapsed <= IDLE_TIMEOUT_MS / 1000 + 2, elapsed


def keep_alive_said(exchange: Exchange) -> None:
    first, second = exchange.answers
    assert first.header("Connection") == "keep-alive" and second.header("Connection") == "close"


def hop_by_hop_dropped(exchange: Exchange) -> None:
    hop, after = exchange.answers
    assert hop.body == b"hop" and hop.header("X-Kept") == "1" and hop.header("Content-Length") == "3"
    assert not hop.names() & {"keep-alive", "transfer-encoding", "upgrade"}
    assert hop.header("Connection") is None
    assert seen(after)["path"] == "/after"  # the program's Connection: close closed nothing


def head_has_no_body(exchange: Exchange) -> None:
    head, after = exchange.answers
    assert int(head.header("Content-Length") or 0) > 0 and head.body == b""
    assert seen(after)["path"] == "/after"  # no body bytes came between


def no_injection(exchange: Exchange) -> None:
    assert "set-cookie" not in exchange.answers[0].names() and seen(exchange.answers[1])["path"] == "/after"


def no_content(exchange: Exchange) -> None:
    empty, after = exchange.answers
    assert empty.header("Content-Length") is None and empty.body == b""
    assert seen(after)["path"] == "/after"  # no body bytes came between


def allow_said(exchange: Exchange) -> None:
    assert exchange.answers[0].header("Allow") is not None


def trailer_dropped(exchange: Exchange) -> None:
    assert body_seen(exchange.answers[-1]) == b"hello world"
    assert not [h for h in seen(exchange.answers[-1])["headers"] if h[0].lower() == "x-trailer"]


def long_value(exchange: Exchange) -> None:
    assert ["X-Long", "v" * 60_000] in seen(exchange.answers[-1])["headers"]


def many_headers(exchange: Exchange) -> None:
    names = [h[0] for h in seen(exchange.answers[-1])["headers"]]
    assert [f"X-H{i}" for i in range(200)] == [n for n in names if n.startswith("X-H")]


GZIPPED = gzip.compress(b"hello " * 50)
NOT_GZIP = b"this is not gzip \x00\xff\x1f\x8b"
H2C = ("Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
OVER = MAX_BODY + 1

CASES: Final[tuple[Case, ...]] = (
    # -- requests served as sent
    Case("get", raw(req()), (200,), "a plain `GET /`", check=echoed(method="GET", path="/")),
    Case("gzip body not gzip", raw(req("POST", "/", "Content-Encoding: gzip", f"Content-Length: {len(NOT_GZIP)}",
                                       body=NOT_GZIP)),
         (200,), "`Content-Encoding: gzip` and a body that is not gzip: the program sees the bytes sent",
         check=body_is(NOT_GZIP)),
    Case("gzip body", raw(req("POST", "/", "Content-Encoding: gzip", f"Content-Length: {len(GZIPPED)}",
                              body=GZIPPED)),
         (200,), "a gzip body: never decompressed", check=body_is(GZIPPED)),
    Case("percent-encoded path", raw(req("GET", "/a%20b/%2F%2e%2E/x")), (200,),
         "`/a%20b/%2F%2e%2E/x`: the program's raw_path is the target as sent",
         check=echoed(raw_path="/a%20b/%2F%2e%2E/x")),
    Case("dot segments", raw(req("GET", "/a/../b/./c")), (200,), "`/a/../b/./c`: not normalised",
         check=echoed(raw_path="/a/../b/./c")),
    Case("query as sent", raw(req("GET", "/q?b=2&a=1&a=&c=%26&d")), (200,),
         "`/q?b=2&a=1&a=&c=%26&d`: the query as sent", check=echoed(query="b=2&a=1&a=&c=%26&d")),
    Case("options asterisk", raw(req("OPTIONS", "*")), (200,), "`OPTIONS *`", check=echoed(method="OPTIONS")),
    Case("delete", raw(req("DELETE", "/x")), (200,), "`DELETE /x`", check=echoed(method="DELETE")),
    Case("patch with body", raw(req("PATCH", "/x", "Content-Length: 2", body=b"{}")), (200,),
         "`PATCH` with a body", check=body_is(b"{}")),
    Case("zero-length post", raw(req("POST", "/", "Content-Length: 0")), (200,), "`POST` with `Content-Length: 0`",
         check=body_is(b"")),
    Case("post without length", raw(req("POST", "/")), (200,),
         "`POST` with neither Content-Length nor Transfer-Encoding: no body", check=body_is(b"")),
    Case("content-length with spaces", raw(req("POST", "/", "Content-Length:   5  ", body=b"12345")), (200,),
         "`Content-Length:   5  ` (spaces around the value)", check=body_is(b"12345")),
    Case("binary body", raw(req("POST", "/", "Content-Length: 256", body=bytes(range(256)))), (200,),
         "a body of all 256 byte values", check=body_is(bytes(range(256)))),
    Case("chunked body", raw(req("POST", "/", "Transfer-Encoding: chunked", body=chunked(b"hello", b" world"))),
         (200,), "a chunked body: the program sees it de-chunked", check=body_is(b"hello world")),
    Case("chunk extensions", raw(req("POST", "/", "Transfer-Encoding: chunked",
                                     body=chunked(b"hello", b" world", ext=b";name=value"))),
         (200,), "chunks with `;name=value` extensions", check=body_is(b"hello world")),
    Case("chunked with trailers", raw(req("POST", "/", "Transfer-Encoding: chunked",
                                          body=chunked(b"hello", b" world", trailer=b"X-Trailer: t\r\n"))),
         (200,), "a chunked body with a trailer field: the trailer is dropped", check=trailer_dropped),
    Case("chunked capitalised", raw(req("POST", "/", "Transfer-Encoding: Chunked", body=chunked(b"hi"))), (200,),
         "`Transfer-Encoding: Chunked`: codings are case-insensitive", check=body_is(b"hi")),
    Case("get with body", raw(req("GET", "/", "Content-Length: 3", body=b"abc")), (200,),
         "`GET` with a body: passed on", check=body_is(b"abc")),
    Case("host with spaces around", raw(req(host=" echo.localhost  ")), (200,),
         "`Host:  echo.localhost  ` (whitespace around the value)", check=echo_served),
    Case("header name with underscore", raw(req("GET", "/", "X_Custom_Header: 1")), (200,),
         "`X_Custom_Header: 1`: passed through", check=has_header("X_Custom_Header", "1")),
    Case("header value with tab", raw(req("GET", "/", "X-Tab: a\tb")), (200,), "a header value with a HTAB",
         check=has_header("X-Tab", "a\tb")),
    Case("header value obs-text", raw(req("GET", "/", "X-Latin: caf\xe9")), (200,),
         "a header value with a byte over 0x7f", check=echo_served),
    Case("long header value", raw(req("GET", "/", "X-Long: " + "v" * 60_000)), (200,),
         "one header value of 60,000 bytes (under the head's 64 KiB)", check=long_value),
    Case("many headers", raw(req("GET", "/", *[f"X-H{i}: {i}" for i in range(200)])), (200,),
         "200 header fields (under the 256 limit)", check=many_headers),
    Case("repeated header", raw(req("GET", "/", "X-Twice: 1", "X-Twice: 2")), (200,),
         "a header field twice: both reach the program", check=has_header("X-Twice", "2")),
    # -- connections
    Case("keep-alive", (req("GET", "/one"), Pause(0.2), req("GET", "/two")), (200, 200),
         "two requests one after the other on one connection", check=paths_in_order("/one", "/two")),
    Case("pipelining", raw(req("GET", "/1") + req("POST", "/2", "Content-Length: 1", body=b"x") + req("GET", "/3")),
         (200, 200, 200), "three requests in one write: answered in order", check=paths_in_order("/1", "/2", "/3")),
    Case("pipelined refusal", raw(req("GET", "/1") + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n" + req("GET", "/3")),
         (200, 400), "a good request, then a malformed one: answered in order, then close", closes=True),
    Case("deep pipeline", raw(b"".join(req("GET", f"/{i}") for i in range(40))), (200,) * 40,
         "40 requests in one write (more than the front end queues): all answered in order",
         check=paths_in_order(*[f"/{i}" for i in range(40)])),
    Case("upgrade h2c pipelined", raw(req("GET", "/up", *H2C) + req("GET", "/after")), (200, 200),
         "`Upgrade: h2c` then a pipelined request: both served in order (no 101)",
         check=paths_in_order("/up", "/after")),
    Case("upgrade websocket", raw(req("GET", "/ws", "Connection: Upgrade", "Upgrade: websocket",
                                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13")
                                  + req("GET", "/after")), (200, 200),
         "`Upgrade: websocket`: served as a plain request", check=paths_in_order("/ws", "/after")),
    Case("connection close", raw(req("GET", "/", "Connection: close") + req("GET", "/ignored")), (200,),
         "`Connection: close`: the answer says so and the connection ends", closes=True),
    Case("http/1.0", raw(req(version="HTTP/1.0")), (200,), "`HTTP/1.0` without keep-alive: one answer, then close",
         closes=True, check=echo_served),
    Case("http/1.0 keep-alive", raw(req("GET", "/a", "Connection: keep-alive", version="HTTP/1.0")
                                    + req("GET", "/b", version="HTTP/1.0")),
         (200, 200), "`HTTP/1.0` with `Connection: keep-alive`, then one without", closes=True, check=keep_alive_said),
    Case("http/1.0 without host", raw(req(host=None, version="HTTP/1.0")), (200,),
         "`HTTP/1.0` without Host: the default tenant", closes=True, check=served_by_default),
    Case("head", raw(req("HEAD", "/h") + req("GET", "/after")), (200, 200),
         "`HEAD` then a `GET`: the HEAD answer has a Content-Length and no body",
         head_only=frozenset({0}), check=head_has_no_body),
    Case("expect 100-continue", (req("POST", "/", "Content-Length: 5", "Expect: 100-continue"), Pause(0.3), b"12345"),
         (100, 200), "`Expect: 100-continue`: `100 Continue`, then the body is sent", check=body_is(b"12345")),
    Case("expect 100-continue without body", raw(req("GET", "/", "Expect: 100-continue")), (200,),
         "`Expect: 100-continue` on a request without a body: no 100"),
    Case("expect 100-continue over max_body",
         raw(req("POST", "/", f"Content-Length: {OVER}", "Expect: 100-continue")), (413,),
         "`Expect: 100-continue` with a Content-Length over max_body: 413, no 100", closes=True),
    Case("expect 100-continue bad host", raw(req("POST", "/", "Content-Length: 5", "Expect: 100-continue",
                                                 host="echo.localhost\xc2\xa0")), (400,),
         "`Expect: 100-continue` with an invalid Host: 400, no 100", closes=True),
    Case("expect 100-continue on http/1.0", (req("POST", "/", "Content-Length: 5", "Expect: 100-continue",
                                                version="HTTP/1.0"), Pause(0.3), b"12345"), (200,),
         "`Expect: 100-continue` from an `HTTP/1.0` client: ignored (RFC 9110 10.1.1)", closes=True,
         check=body_is(b"12345")),
    Case("expect other", raw(req("POST", "/", "Content-Length: 5", "Expect: something-else")), (417,),
         "`Expect: something-else`", closes=True),
    # -- Host and routing
    Case("host field name in capitals", raw(req(host=None) [:-2] + b"HOST: echo.localhost\r\n\r\n"), (200,),
         "`HOST: echo.localhost`: field names are case-insensitive", check=echo_served),
    Case("empty line before the request", raw(b"\r\n" + req()), (200,),
         "a CRLF before the request line: ignored (RFC 9112 2.2)", check=echo_served),
    Case("unknown host twice, no default", raw(req(host="other.localhost") * 2), (404, 404),
         "two pipelined requests for an unknown Host: the connection stays", daemon="no-default"),
    Case("host with port", raw(req(host="echo.localhost:8080")), (200,), "`Host: echo.localhost:8080`",
         check=echo_served),
    Case("host in capitals", raw(req(host="ECHO.Localhost")), (200,), "`Host: ECHO.Localhost`", check=echo_served),
    Case("host with trailing dot", raw(req(host="echo.localhost.")), (200,), "`Host: echo.localhost.`",
         check=echo_served),
    Case("unknown host, default", raw(req(host="other.localhost")), (200,),
         "`Host: other.localhost` to a daemon with a default tenant", check=served_by_default),
    Case("unknown host, no default", raw(req(host="other.localhost")), (404,),
         "`Host: other.localhost` to a daemon without a default tenant", daemon="no-default"),
    Case("ipv4 host, default", raw(req(host="127.0.0.1")), (200,), "`Host: 127.0.0.1`: the default tenant",
         check=served_by_default),
    Case("ipv4 host, no default", raw(req(host="127.0.0.1:80")), (404,),
         "`Host: 127.0.0.1:80` to a daemon without a default tenant", daemon="no-default"),
    Case("ipv6 host", raw(req(host="[::1]:8080")), (200,), "`Host: [::1]:8080`: the default tenant",
         check=served_by_default),
    Case("host nbsp", raw(req(host="other.localhost\xc2\xa0")), (400,),
         "`Host: other.localhost` and `\\xC2\\xA0` (NBSP in UTF-8)", closes=True, check=not_a_tenant),
    Case("host ideographic space", raw(req(host="other.localhost\xe3\x80\x80")), (400,),
         "`Host: other.localhost` and `\\xE3\\x80\\x80` (U+3000)", closes=True, check=not_a_tenant),
    Case("host next line", raw(req(host="other.localhost\xc2\x85")), (400,),
         "`Host: other.localhost` and `\\xC2\\x85` (U+0085)", closes=True, check=not_a_tenant),
    Case("host kelvin sign", raw(req(host="\xe2\x84\xaaiosk.localhost")), (400,),
         "`Host: \\xE2\\x84\\xAAiosk.localhost` (KELVIN SIGN for K)", closes=True, check=not_a_tenant),
    Case("echo host nbsp", raw(req(host="echo.localhost\xc2\xa0")), (400,),
         "`Host: echo.localhost` and a NBSP: no near match", closes=True, check=not_a_tenant),
    Case("duplicate host", raw(req("GET", "/", "Host: other.localhost")), (400,), "two Host fields", closes=True),
    Case("missing host", raw(req(host=None)), (400,), "`HTTP/1.1` without Host", closes=True),
    Case("empty host", raw(req(host="")), (400,), "`Host:` with an empty value", closes=True),
    Case("host with path", raw(req(host="echo.localhost/x")), (400,), "`Host: echo.localhost/x`", closes=True),
    Case("host with userinfo", raw(req(host="user@echo.localhost")), (400,), "`Host: user@echo.localhost`",
         closes=True),
    Case("host with bad port", raw(req(host="echo.localhost:99999")), (400,), "`Host: echo.localhost:99999`",
         closes=True),
    # -- refused before any program sees them
    Case("connect", raw(b"CONNECT echo.localhost:443 HTTP/1.1\r\nHost: echo.localhost:443\r\n\r\n"), (405,),
         "`CONNECT echo.localhost:443`: refused, with Allow", closes=True, check=allow_said),
    Case("absolute-form target", raw(req("GET", "http://echo.localhost/x?q=1", host="other.localhost")), (200,),
         "`GET http://echo.localhost/x?q=1` with `Host: other.localhost`: the target names the tenant",
         check=echoed(raw_path="/x", query="q=1")),
    Case("absolute-form without path", raw(req("GET", "HTTP://echo.localhost:80?q=1")), (200,),
         "`GET HTTP://echo.localhost:80?q=1`: the path is `/`", check=echoed(raw_path="/", query="q=1")),
    Case("absolute-form with userinfo", raw(req("GET", "http://user@echo.localhost/")), (400,),
         "`GET http://user@echo.localhost/`", closes=True),
    Case("absolute-form of another scheme", raw(req("GET", "ftp://echo.localhost/")), (400,),
         "`GET ftp://echo.localhost/`", closes=True),
    Case("absolute-form with a bad host", raw(req("GET", "http://echo.localhost\xc2\xa0/")), (400,),
         "`GET http://echo.localhost\xC2\xA0/`: ASCII only there too", closes=True),
    Case("relative target", raw(req("GET", "x/y")), (400,), "`GET x/y`", closes=True),
    Case("unknown method", raw(req("BREW")), (400,),
         "`BREW /`: a method llhttp does not know (RFC 9110 9.1 would rather have 501)", closes=True),
    Case("lowercase method", raw(req("get")), (400,), "`get /`: methods are case-sensitive", closes=True),
    Case("mixed-case method", raw(req("Get")), (400,), "`Get /`", closes=True),
    Case("http/2 preface", raw(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), (400,),
         "the HTTP/2 connection preface (prior knowledge)", closes=True),
    Case("bad version", raw(req(version="HTTP/1.7")), (400,), "`HTTP/1.7`", closes=True),
    Case("tls client hello", raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), (400,),
         "a TLS ClientHello on the plain port", closes=True),
    Case("space in target", raw(b"GET /a b HTTP/1.1\r\nHost: echo.localhost\r\n\r\n"), (400,),
         "`GET /a b HTTP/1.1`", closes=True),
    Case("nul in target", raw(b"GET /a\x00b HTTP/1.1\r\nHost: echo.localhost\r\n\r\n"), (400,),
         "a NUL in the target", closes=True),
    Case("content-length and transfer-encoding",
         raw(req("POST", "/", "Content-Length: 5", "Transfer-Encoding: chunked", body=b"0\r\n\r\n")), (400,),
         "both Content-Length and `Transfer-Encoding: chunked`", closes=True),
    Case("differing content-lengths", raw(req("POST", "/", "Content-Length: 5", "Content-Length: 6", body=b"123456")),
         (400,), "`Content-Length: 5` and `Content-Length: 6`", closes=True),
    Case("same content-length twice", raw(req("POST", "/", "Content-Length: 5", "Content-Length: 5",
                                              body=b"12345")),
         (400,), "`Content-Length: 5` twice (llhttp refuses any repetition)", closes=True),
    Case("content-length list", raw(req("POST", "/", "Content-Length: 5, 6", body=b"123456")), (400,),
         "`Content-Length: 5, 6`", closes=True),
    Case("content-length plus", raw(req("POST", "/", "Content-Length: +5", body=b"12345")), (400,),
         "`Content-Length: +5`", closes=True),
    Case("content-length negative", raw(req("POST", "/", "Content-Length: -1")), (400,), "`Content-Length: -1`",
         closes=True),
    Case("content-length inner space", raw(req("POST", "/", "Content-Length: 1 2", body=b"12")), (400,),
         "`Content-Length: 1 2`", closes=True),
    Case("content-length overflow", raw(req("POST", "/", "Content-Length: 99999999999999999999999")), (400,),
         "a Content-Length over 2^64", closes=True),
    Case("content-length huge", raw(req("POST", "/", "Content-Length: 1000000000000")), (413,),
         "`Content-Length: 1000000000000` (a valid number over max_body)", closes=True),
    Case("invalid chunk size", raw(req("POST", "/", "Transfer-Encoding: chunked", body=b"zz\r\nhi\r\n0\r\n\r\n")),
         (400,), "a chunk size `zz`", closes=True),
    Case("chunk size overflow", raw(req("POST", "/", "Transfer-Encoding: chunked",
                                        body=b"fffffffffffffffff1\r\nhi\r\n0\r\n\r\n")),
         (400,), "a chunk size over 2^64", closes=True),
    Case("transfer-encoding gzip, chunked",
         raw(req("POST", "/", "Transfer-Encoding: gzip, chunked", body=chunked(GZIPPED))), (501,),
         "`Transfer-Encoding: gzip, chunked`: a transfer coding we do not decode", closes=True),
    Case("transfer-encoding chunked twice", raw(req("POST", "/", "Transfer-Encoding: chunked",
                                                    "Transfer-Encoding: chunked", body=chunked(b"hi"))), (400,),
         "`Transfer-Encoding: chunked` in two fields: chunked applied twice", closes=True),
    Case("transfer-encoding gzip", raw(req("POST", "/", "Transfer-Encoding: gzip", body=GZIPPED)), (400,),
         "`Transfer-Encoding: gzip` (not chunked last: no way to find the body's end)", closes=True),
    Case("transfer-encoding on http/1.0",
         raw(req("POST", "/", "Transfer-Encoding: chunked", body=chunked(b"hi"), version="HTTP/1.0")), (400,),
         "`Transfer-Encoding: chunked` on `HTTP/1.0`", closes=True),
    Case("bare cr", raw(req("GET", "/", "X-A: a\rb")), (400,), "a bare CR in a header value", closes=True),
    Case("bare lf", raw(b"GET / HTTP/1.1\nHost: echo.localhost\n\n"), (400,), "lines ended by LF alone",
         closes=True),
    Case("nul in value", raw(req("GET", "/", "X-A: a\x00b")), (400,), "a NUL in a header value", closes=True),
    Case("control byte in value", raw(req("GET", "/", "X-A: a\x01b")), (400,), "a 0x01 byte in a header value",
         closes=True),
    Case("obs-fold", raw(req("GET", "/", "X-A: a", " b")), (400,), "a header line folded (obs-fold)", closes=True),
    Case("space before colon", raw(req("GET", "/", "X-A : a")), (400,), "`X-A : a`", closes=True),
    Case("header without colon", raw(req("GET", "/", "X-A")), (400,), "a header line without a colon",
         closes=True),
    Case("bad header name", raw(req("GET", "/", "X(A): a")), (400,), "`X(A): a` (not a token)", closes=True),
    # -- limits
    Case("long target", raw(req("GET", "/" + "a" * 9000)), (414,), "a request target of 9,000 bytes (over 8 KiB)",
         closes=True),
    Case("long head", raw(req("GET", "/", "X-Big: " + "b" * (65 * 1024))), (431,), "a head over 64 KiB",
         closes=True),
    Case("too many headers", raw(req("GET", "/", *[f"X-{i}: v" for i in range(300)])), (431,),
         "300 header fields", closes=True),
    Case("body over max_body", raw(req("POST", "/", f"Content-Length: {OVER}") + b"x" * OVER), (413,),
         "a Content-Length over the tenant's max_body (64 KiB here)", closes=True),
    Case("chunked body over max_body",
         raw(req("POST", "/", "Transfer-Encoding: chunked", body=chunked(b"x" * 40_000, b"x" * 40_000))), (413,),
         "a chunked body that grows over the tenant's max_body", closes=True),
    Case("body at max_body", raw(req("POST", "/", f"Content-Length: {MAX_BODY}") + b"x" * MAX_BODY), (200,),
         "a body of exactly max_body", check=body_is(b"x" * MAX_BODY)),
    # -- time
    Case("header timeout", raw(b"GET / HTTP/1.1\r\nHost: echo.localhost\r\n"), (408,),
         f"half a head, then nothing (`header_timeout_ms`: {HEADER_TIMEOUT_MS})", closes=True,
         check=closed_after(HEADER_TIMEOUT_MS / 1000 - 0.3, HEADER_TIMEOUT_MS / 1000 + 2)),
    Case("body timeout", raw(req("POST", "/", "Content-Length: 10", body=b"12345")), (408,),
         "half a body, then nothing (the body has `header_timeout_ms` too)", closes=True,
         check=closed_after(HEADER_TIMEOUT_MS / 1000 - 0.3, HEADER_TIMEOUT_MS / 1000 + 2)),
    Case("silent connection", (), (), "a connection that sends nothing: closed without an answer", closes=True,
         check=closed_after(HEADER_TIMEOUT_MS / 1000 - 0.3, HEADER_TIMEOUT_MS / 1000 + 2)),
    Case("idle keep-alive", raw(req()), (200,),
         f"one request, then nothing: closed silently (`idle_timeout_ms`: {IDLE_TIMEOUT_MS})", check=idle_close),
    # -- the program's answer
    Case("program hop-by-hop headers", raw(req("GET", "/__hop") + req("GET", "/after")), (200, 200),
         "the program sets Connection, Keep-Alive, Transfer-Encoding, Upgrade, Content-Length: dropped",
         check=hop_by_hop_dropped),
    Case("program invalid header value", raw(req("GET", "/__bad-value") + req("GET", "/after")), (502, 200),
         "the program sets a header value with CR LF: 502, the connection stays", check=no_injection),
    Case("program invalid header name", raw(req("GET", "/__bad-name")), (502,),
         "the program sets a header name with a space"),
    Case("program 204", raw(req("GET", "/__no-content") + req("GET", "/after")), (204, 200),
         "the program answers 204: no body, no Content-Length", check=no_content),
)


# ---- running a case ---------------------------------------------------------

def tenants(default: bool) -> list[dict[str, Any]]:
    echo = {"name": "echo", "hosts": ["echo.localhost"], "program": "programs/echo.py",
            "limits": {"max_body": f"{MAX_BODY // 1024}KiB", "init_timeout_ms": 5000}}
    fallback = {"name": "fallback", "hosts": ["fallback.localhost"], "program": "programs/default.py",
                "default": True, "limits": {"init_timeout_ms": 5000}}
    return [echo, fallback] if default else [echo]


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Daemon]]:
    """The daemons the cases need, started on first use."""
    started: dict[str, Daemon] = {}

    class Lazy(dict[str, Daemon]):
        def __missing__(self, name: str) -> Daemon:
            d = Daemon(tmp_path_factory.mktemp(name), tenants(name == "default"),
                       {"echo.py": ECHO, "default.py": DEFAULT},
                       header_timeout_ms=HEADER_TIMEOUT_MS, idle_timeout_ms=IDLE_TIMEOUT_MS)
            started[name] = self[name] = d.start()
            return d

    yield Lazy()
    for d in started.values():
        assert d.stop() == 0, d.log()[-3000:]


def run(sock: socket.socket, case: Case) -> Exchange:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in case.send:
            if isinstance(piece, Pause):
                time.sleep(piece.seconds)
            else:
                sock.sendall(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before all was sent: the answer is waiting
    sent_at = time.monotonic()
    reader = Reader(sock)
    answers = [reader.answer(head_only=i in case.head_only) for i in range(len(case.statuses))]
    return Exchange(answers, reader, sent_at)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_http_case(daemons: dict[str, Daemon], case: Case) -> None:
    with daemons[case.daemon].connect(timeout=10) as sock:
        exchange = run(sock, case)
        assert [a.status for a in exchange.answers] == list(case.statuses), case.what
        ids = [a.header("X-Request-Id") for a in exchange.answers if a.status >= 200]
        assert None not in ids, "every answer carries X-Request-Id"
        assert len(set(ids)) == len(ids), ids
        if case.check is not None:
            case.check(exchange)
        if case.closes:
            if exchange.answers:
                assert exchange.answers[-1].header("Connection") == "close"
            assert exchange.reader.closed(), "the connection stays open"
        elif exchange.answers:
            assert exchange.answers[-1].header("Connection") != "close"


def test_the_cases_have_unique_names() -> None:
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names)


# ---- the table of docs/http.md ----------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The generated table, markers included."""
    lines = [BEGIN, f"<!-- From tests/integration/test_http_cases.py; edit CASES and run `{COMMAND}`. -->", "",
             "| Case | What is sent | Status |", "|---|---|---|"]
    for case in CASES:
        lines.append(f"| {_cell(case.name)} | {_cell(case.what)} | {case.status_text()} |")
    lines += ["", END]
    return "\n".join(lines)


def splice(document: str, section: str) -> str:
    """`document` with its generated table replaced by `section`."""
    return docs.splice(document, section, BEGIN, END)


def main(argv: Sequence[str] | None = None) -> int:
    return docs.section_main(argv, prog="python -m tests.integration.test_http_cases",
                             description="The HTTP cases table of docs/http.md.", section=render(),
                             begin=BEGIN, end=END, command=COMMAND)


if __name__ == "__main__":
    sys.exit(main())
