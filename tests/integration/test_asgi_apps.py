"""ASGI apps (tenant key `app`, interface asgi) through the daemon, under both
engines: plain ASGI callables for the protocol's corners, FastAPI for a
real framework."""
from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest

from tests.daemon_harness import Daemon, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root, serving

pytestmark = needs_root

PLAIN = '''
import asyncio
import json
import threading

calls = 0
started = []


async def read_body(receive):
    chunks = []
    while True:
        message = await receive()
        assert message["type"] == "http.request", message
        chunks.append(message["body"])
        if not message.get("more_body"):
            return chunks


async def respond(send, status, body, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    global calls
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                started.append("startup")
                scope["state"]["db"] = "opened at startup"
                await send({"type": "lifespan.startup.complete"})
            else:
                print("lifespan shutdown ran", flush=True)
                await send({"type": "lifespan.shutdown.complete"})
                return
    calls += 1
    chunks = await read_body(receive)
    main = threading.get_ident()
    in_executor = await asyncio.get_running_loop().run_in_executor(None, threading.get_ident)
    in_to_thread = await asyncio.to_thread(threading.get_ident)
    body = json.dumps({
        "calls": calls, "started": started, "state": scope["state"], "method": scope["method"],
        "path": scope["path"], "raw_path": scope["raw_path"].decode(), "query": scope["query_string"].decode(),
        "headers": [[n.decode(), v.decode()] for n, v in scope["headers"] if n in (b"x-custom", b"host")],
        "client": scope["client"], "server": scope["server"], "http_version": scope["http_version"],
        "asgi": scope["asgi"], "chunks": len(chunks), "body_len": sum(map(len, chunks)),
        "inline": [in_executor == main, in_to_thread == main], "threads": threading.active_count(),
    }).encode()
    await respond(send, 200, body, [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")])


async def pieces(scope, receive, send):
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"text/plain")]})
    for part in (b"one ", b"two ", b"three"):
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def no_lifespan(scope, receive, send):
    assert scope["type"] == "http", "this app speaks no lifespan"
    await respond(send, 200, b"{}")


async def failed_startup(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "the database is unreachable"})
        return
    await respond(send, 200, b"{}")


async def body_first(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.body", "body": b"too early"})


async def silent(scope, receive, send):
    if scope["type"] == "http":
        await receive()


async def unfinished(scope, receive, send):
    if scope["type"] == "http":
        # A length given: the parts are collected, so the failure can still be a 500.
        headers = [] if scope["path"] == "/stream" else [(b"content-length", b"8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})


async def raises_after(scope, receive, send):
    if scope["type"] == "http":
        await respond(send, 200, b"{}")
        raise RuntimeError("after the answer")
'''

FASTAPI_SITE = '''
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse

hits = 0
events = []


@asynccontextmanager
async def lifespan(app):
    events.append("startup")
    yield {"pool": "ready"}
    print("fastapi shutdown ran", flush=True)


app = FastAPI(lifespan=lifespan)


@app.get("/")
async def root():
    global hits
    hits += 1
    return {"hits": hits, "events": events}


@app.get("/sync/{n}")
def sync_route(n: int):
    # Starlette runs a plain def in a worker thread; here it runs inline.
    return {"n": n, "main": threading.current_thread() is threading.main_thread()}


@app.get("/items/{item_id}")
async def item(item_id: int, q: str | None = None, limit: int = 10):
    if item_id == 0:
        raise HTTPException(status_code=404, detail="no item 0")
    return {"item_id": item_id, "q": q, "limit": limit}


@app.get("/state")
async def state(request: Request):
    return {"pool": request.state.pool}


@app.get("/stream")
def stream():
    def numbers():
        for i in range(5):
            yield f"{i}\\n"
    return StreamingResponse(numbers(), media_type="text/plain")
'''


@pytest.fixture(scope="module", params=("fork", "reset"))
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    engine = str(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("mayflyd-asgi")

    def tenant(name: str, app: str, **extra: object) -> dict[str, object]:
        return {"name": name, "hosts": [f"{name}.localhost"], "app": app, "engine": engine,
                "limits": limits(max_body="4MiB"), **extra}

    tenants = [
        tenant("plain", "programs.plain:app"),
        tenant("pieces", "programs.plain:pieces", interface="asgi"),
        tenant("nolife", "programs.plain:no_lifespan"),
        tenant("failed", "programs.plain:failed_startup"),
        tenant("bodyfirst", "programs.plain:body_first"),
        tenant("silent", "programs.plain:silent", limits=limits(request_timeout_ms=1000)),
        tenant("unfinished", "programs.plain:unfinished"),
        tenant("raises", "programs.plain:raises_after"),
        tenant("fastapi", "programs.fastapi_site:app"),
        tenant("warm", "programs.fastapi_site:app", warm_up=["/", "/items/1?q=x"]),
    ]
    sources = {"__init__.py": "", "plain.py": PLAIN, "fastapi_site.py": FASTAPI_SITE}
    yield from serving(Daemon(workdir, tenants, sources), engine)


def test_an_asgi_app_gets_a_complete_scope_and_every_request_starts_from_the_seal(daemon: Daemon) -> None:
    body = b"x" * (200 * 1024)
    for i in range(5):
        reply = daemon.request("POST", f"/caf%C3%A9/{i}?x=1&y=%20", host="plain.localhost:8080", body=body,
                               headers={"X-Custom": "yes"})
        assert reply.status == 200, reply.text
        seen = json.loads(reply.body)
        # A module-level counter never carries one request's change to the next.
        assert seen["calls"] == 1
        assert seen["started"] == ["startup"] and seen["state"] == {"db": "opened at startup"}
        assert (seen["method"], seen["path"], seen["raw_path"]) == ("POST", f"/café/{i}", f"/caf%C3%A9/{i}")
        assert seen["query"] == "x=1&y=%20"
        assert sorted(seen["headers"]) == [["host", "plain.localhost:8080"], ["x-custom", "yes"]]
        assert seen["client"] == ["127.0.0.1", 0] and seen["server"] == ["plain.localhost", 8080]
        assert seen["http_version"] == "1.1" and seen["asgi"]["version"] == "3.0"
        # The body arrives as several http.request messages, whole.
        assert seen["chunks"] > 1 and seen["body_len"] == len(body)
        # Work pushed to a thread ran inline, and no thread was started.
        assert seen["inline"] == [True, True] and seen["threads"] == 1
        assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]


def test_a_body_in_pieces_is_streamed_to_the_client(daemon: Daemon) -> None:
    reply = daemon.get("pieces.localhost")
    assert (reply.status, reply.body) == (201, b"one two three")
    # No length known: chunked, each part as the app sent it.
    assert reply.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in reply.headers
    assert reply.headers["Content-Type"] == "text/plain"


def test_a_stream_cut_by_the_app_never_looks_whole(daemon: Daemon) -> None:
    # The app returns after a part with more_body: the head is out, so the
    # client's body is cut (no last chunk), not a complete 200.
    with pytest.raises(http.client.IncompleteRead):
        daemon.get("unfinished.localhost", "/stream")
    daemon.wait_for(lambda: "the app returned before its response was complete" in daemon.log(),
                    what="the reason in the log")
    assert daemon.get("plain.localhost").status == 200


def test_the_lifespan_shutdown_runs_when_the_host_stops(daemon: Daemon) -> None:
    # A reload replaces the host: the old one's stop sandbox sends the shutdown.
    assert daemon.get("plain.localhost").status == 200
    before = daemon.log().count("lifespan shutdown ran")
    (daemon.workdir / "programs" / "plain.py").write_text(PLAIN + "\n# version 2\n")
    daemon.wait_for(lambda: daemon.log().count("lifespan shutdown ran") > before,
                    what="the old host's lifespan shutdown in the log")
    assert daemon.get("plain.localhost").status == 200


def test_warm_up_requests_run_before_the_seal_and_what_they_change_stays(daemon: Daemon) -> None:
    # 16 GETs of each target ran in the host: the counter they raised is in every request's start.
    for _ in range(2):
        reply = daemon.get("warm.localhost")
        assert (reply.status, json.loads(reply.body)) == (200, {"hits": 17, "events": ["startup"]})
    log = daemon.log()
    assert "warm-up: GET / answered 200 (16 requests)" in log
    assert "warm-up: GET /items/1?q=x answered 200 (16 requests)" in log


def test_an_app_without_lifespan_is_served_and_says_so_once(daemon: Daemon) -> None:
    assert daemon.get("nolife.localhost").status == 200
    assert "lifespan: the app does not support it (AssertionError: this app speaks no lifespan)" in daemon.log()


def test_a_failed_startup_fails_the_load_and_the_others_keep_serving(daemon: Daemon) -> None:
    reply = daemon.get("failed.localhost")
    assert reply.status == 503
    daemon.wait_for(lambda: "the app's lifespan startup failed: the database is unreachable" in daemon.log(),
                    what="the startup's failure in the log")
    assert daemon.get("plain.localhost").status == 200


@pytest.mark.parametrize(("tenant", "message"), [
    ("bodyfirst", "the app sent http.response.body before http.response.start"),
    ("silent", "the app returned without sending http.response.start"),
    ("unfinished", "the app returned before its response was complete"),
])
def test_a_protocol_error_is_a_500_with_its_reason_in_the_log(daemon: Daemon, tenant: str, message: str) -> None:
    reply = daemon.get(f"{tenant}.localhost")
    assert reply.status == 500 and b"too early" not in reply.body and b"half" not in reply.body
    daemon.wait_for(lambda: message in daemon.log(), what=f"{message!r} in the log")
    assert daemon.get("plain.localhost").status == 200


def test_an_error_after_the_answer_is_logged_and_the_answer_stands(daemon: Daemon) -> None:
    reply = daemon.get("raises.localhost")
    assert (reply.status, reply.body) == (200, b"{}")
    daemon.wait_for(lambda: "RuntimeError: after the answer" in daemon.log(), what="the traceback in the log")


def test_a_websocket_upgrade_is_a_501_with_a_log_line(daemon: Daemon) -> None:
    reply = daemon.get("plain.localhost", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                   "Sec-WebSocket-Version": "13"})
    assert reply.status == 501
    daemon.wait_for(lambda: "a WebSocket upgrade; mayflyd serves HTTP only" in daemon.log(),
                    what="the refusal in the log")


def test_fastapi_async_and_sync_routes_validation_and_lifespan(daemon: Daemon) -> None:
    for _ in range(3):
        reply = daemon.get("fastapi.localhost")
        assert reply.status == 200, reply.text
        assert json.loads(reply.body) == {"hits": 1, "events": ["startup"]}
    reply = daemon.get("fastapi.localhost", "/sync/7")
    assert (reply.status, json.loads(reply.body)) == (200, {"n": 7, "main": True})
    reply = daemon.get("fastapi.localhost", "/items/3?q=abc&limit=2")
    assert json.loads(reply.body) == {"item_id": 3, "q": "abc", "limit": 2}
    reply = daemon.get("fastapi.localhost", "/items/three")
    assert reply.status == 422 and json.loads(reply.body)["detail"][0]["loc"] == ["path", "item_id"]
    assert daemon.get("fastapi.localhost", "/items/3?limit=many").status == 422
    reply = daemon.get("fastapi.localhost", "/items/0")
    assert (reply.status, json.loads(reply.body)) == (404, {"detail": "no item 0"})
    reply = daemon.get("fastapi.localhost", "/state")
    assert (reply.status, json.loads(reply.body)) == (200, {"pool": "ready"})
    reply = daemon.get("fastapi.localhost", "/stream")
    assert (reply.status, reply.body) == (200, b"0\n1\n2\n3\n4\n")
    assert reply.headers["Transfer-Encoding"] == "chunked"

