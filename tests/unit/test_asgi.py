"""host/asgi.py in process: the scope, the messages, lifespan, threads run inline."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import MutableMapping
from typing import Any

import pytest

from mayflyd.host.asgi import AsgiError, AsgiHandler
from mayflyd.host.program import ProgramError, Request

Scope = MutableMapping[str, Any]


@pytest.fixture(autouse=True)
def stopped_handlers(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every handler a test starts is stopped after it: its lifespan task ends."""
    started: list[AsgiHandler] = []
    original = AsgiHandler.started.__func__  # type: ignore[attr-defined]

    def started_and_kept(cls: type[AsgiHandler], app: Any) -> AsgiHandler:
        handler: AsgiHandler = original(cls, app)
        started.append(handler)
        return handler

    monkeypatch.setattr(AsgiHandler, "started", classmethod(started_and_kept))
    yield
    for handler in started:
        handler.stop()
        handler.loop.close()


def _request(**kw: object) -> Request:
    fields: dict[str, object] = {
        "id": 9, "method": "PUT", "path": "/a%20b/c", "query": "q=%41", "client": "192.0.2.1",
        "headers": [("Host", "example.org:8081"), ("X-Many", "1"), ("x-many", "2")], "body": b"abc" * 50_000}
    fields.update(kw)
    return Request(**fields)  # type: ignore[arg-type]


class Recorder:
    """An ASGI app that records what it saw and answers from its arguments."""

    def __init__(self, *messages: dict[str, Any]) -> None:
        self.messages = messages or ({"type": "http.response.start", "status": 200, "headers": [(b"a", b"1")]},
                                     {"type": "http.response.body", "body": b"ok"})
        self.scope: Scope = {}
        self.received: list[dict[str, Any]] = []
        self.lifespan: list[str] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                self.lifespan.append(message["type"])
                if message["type"] == "lifespan.startup":
                    scope["state"]["ready"] = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.scope = scope
        while True:
            message = await receive()
            self.received.append(message)
            if not message.get("more_body"):
                break
        for message in self.messages:
            await send(message)


def test_the_scope_and_the_body_in_chunks() -> None:
    app = Recorder()
    handler = AsgiHandler.started(app)
    assert handler(_request()) == (200, [("a", "1")], b"ok")
    scope = app.scope
    assert (scope["type"], scope["method"], scope["path"], scope["raw_path"]) == ("http", "PUT", "/a b/c", b"/a%20b/c")
    assert scope["query_string"] == b"q=%41" and scope["root_path"] == "" and scope["scheme"] == "http"
    assert scope["headers"] == [(b"host", b"example.org:8081"), (b"x-many", b"1"), (b"x-many", b"2")]
    assert (scope["client"], scope["server"]) == (("192.0.2.1", 0), ("example.org", 8081))
    assert scope["asgi"]["version"] == "3.0" and scope["state"] == {"ready": True}
    assert [len(m["body"]) for m in app.received] == [65536, 65536, 18928]
    assert [m["more_body"] for m in app.received] == [True, True, False]
    assert app.lifespan == ["lifespan.startup"]
    handler.stop()
    assert app.lifespan == ["lifespan.startup", "lifespan.shutdown"]


def test_a_body_in_pieces_is_joined() -> None:
    app = Recorder({"type": "http.response.start", "status": 404},
                   {"type": "http.response.body", "body": b"a", "more_body": True},
                   {"type": "http.response.body", "body": bytearray(b"b"), "more_body": True},
                   {"type": "http.response.body"})
    assert AsgiHandler.started(app)(_request(body=b"")) == (404, [], b"ab")


@pytest.mark.parametrize(("messages", "error"), [
    ([{"type": "http.response.body", "body": b"x"}], "before http.response.start"),
    ([{"type": "http.response.start", "status": 200}] * 2, "http.response.start twice"),
    ([{"type": "http.response.start", "status": 99}], "status must be an int in 200..599"),
    ([{"type": "http.response.start", "status": 200, "headers": [("a", "b")]}], "pair of bytes"),
    ([{"type": "http.response.start", "status": 200}, {"type": "http.response.body", "body": "text"}],
     "body must be bytes"),
    ([{"type": "http.response.start", "status": 200}, {"type": "http.response.trailers"}],
     "unexpected ASGI message 'http.response.trailers'"),
    ([], "returned without sending http.response.start"),
    ([{"type": "http.response.start", "status": 200}, {"type": "http.response.body", "more_body": True}],
     "returned before its response was complete"),
])
def test_protocol_errors(messages: list[dict[str, Any]], error: str) -> None:
    handler = AsgiHandler.started(Recorder(*messages) if messages else _Silent())
    with pytest.raises(AsgiError, match=error):
        handler(_request())


class _Silent:
    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise TypeError("no lifespan here")


def test_an_error_after_the_response_is_logged_and_the_response_stands(
        capfd: pytest.CaptureFixture[str]) -> None:
    app = Recorder({"type": "http.response.start", "status": 200}, {"type": "http.response.body", "body": b"x"},
                   {"type": "http.response.body"})
    assert AsgiHandler.started(app)(_request()) == (200, [], b"x")
    assert "AsgiError: the app sent http.response.body after the response was complete" in capfd.readouterr().err


def test_an_app_without_lifespan(capsys: pytest.CaptureFixture[str]) -> None:
    AsgiHandler.started(_Silent()).stop()
    assert "the app does not support it (TypeError: no lifespan here)" in capsys.readouterr().err


def test_a_failed_startup_is_a_program_error() -> None:
    async def app(scope: Scope, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(ProgramError, match="lifespan startup failed: no database"):
        AsgiHandler.started(app)


def test_work_for_a_thread_runs_inline_and_receive_waits_for_the_response() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        main = threading.get_ident()
        loop = asyncio.get_running_loop()
        seen["executor"] = await loop.run_in_executor(None, threading.get_ident) == main
        seen["to_thread"] = await asyncio.to_thread(threading.get_ident) == main
        await receive()

        async def listener() -> None:
            seen["disconnect"] = (await receive())["type"]

        task = asyncio.create_task(listener())
        await asyncio.sleep(0)
        seen["waiting"] = not task.done()
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})
        await task

    assert AsgiHandler.started(app)(_request(body=b"")) == (204, [], b"")
    assert seen == {"executor": True, "to_thread": True, "waiting": True, "disconnect": "http.disconnect"}
    assert threading.active_count() == 1


def test_a_websocket_upgrade_is_refused_without_calling_the_app(capsys: pytest.CaptureFixture[str]) -> None:
    app = Recorder()
    status, _, _ = AsgiHandler.started(app)(_request(headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")]))
    assert status == 501 and app.scope == {}
    assert "a WebSocket upgrade; mayflyd serves HTTP only" in capsys.readouterr().err


def test_the_loop_shares_no_kernel_object() -> None:
    handler = AsgiHandler.started(Recorder())
    loop: Any = handler.loop
    assert loop._csock is None and loop._ssock is None
    assert type(loop._selector).__name__ == "PollSelector"
    with pytest.raises(RuntimeError, match="handles no signals"):
        loop.add_signal_handler(10, print)
