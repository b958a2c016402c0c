"""A real Flask app (tenant key `app`) through the daemon, under both engines,
from an HTTP client: routing, JSON, forms, a multipart upload, cookies,
abort() and an error handler, a streamed response, and no request's state
reaching the next.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest

from tests.daemon_harness import Daemon, Reply, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root, serving

pytestmark = needs_root

SITE = '''
import hashlib

from flask import Flask, Response, abort, jsonify, request, stream_with_context

app = Flask(__name__)
hits = 0
paths = []


@app.before_request
def count():
    # Module-level state every request changes: the sandbox must throw it away.
    global hits
    hits += 1
    paths.append(request.path)


@app.get("/")
def hello():
    return f"Hello from Flask ({hits})"


@app.get("/state")
def state():
    app.config["TOUCHED"] = app.config.get("TOUCHED", 0) + 1
    return jsonify(hits=hits, paths=paths, touched=app.config["TOUCHED"])


@app.get("/users/<int:user_id>/posts/<slug>")
def post(user_id, slug):
    return jsonify(user=user_id, slug=slug, q=request.args.getlist("q"))


@app.post("/sum")
def total():
    data = request.get_json()
    return jsonify(name=data["name"], total=sum(data["numbers"])), 201


@app.post("/form")
def form():
    return jsonify(name=request.form["name"], tags=request.form.getlist("tag"))


@app.post("/upload")
def upload():
    file = request.files["file"]
    content = file.read()
    return jsonify(filename=file.filename, mimetype=file.mimetype, size=len(content),
                   sha256=hashlib.sha256(content).hexdigest(), note=request.form.get("note"))


@app.get("/cookies")
def cookies():
    response = jsonify(dict(request.cookies))
    response.set_cookie("session", "abc123", httponly=True)
    response.set_cookie("theme", "dark", max_age=3600)
    response.set_cookie("lang", "fr", path="/cookies")
    return response


@app.get("/gone")
def gone():
    abort(404)


@app.get("/int/<text>")
def parse_int(text):
    return jsonify(n=int(text))  # int("abc") raises ValueError


@app.errorhandler(ValueError)
def bad_value(exc):
    return jsonify(error=str(exc)), 418


@app.get("/stream/<int:n>")
def stream(n):
    def lines():
        for i in range(n):
            yield f"{request.args.get('word', 'line')} {i}\\n"
    return Response(stream_with_context(lines()), mimetype="text/plain")
'''

HOST = "flask.localhost"


@pytest.fixture(scope="module", params=("fork", "reset"))
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    engine = str(request.param)
    skip_without_reset_engine(engine)
    tenants = [{"name": "flask", "hosts": [HOST], "app": "programs.site:app", "engine": engine,
                "limits": limits()}]
    # The harness writes programs into programs/, next to the config: a package here.
    sources = {"__init__.py": "", "site.py": SITE}
    yield from serving(Daemon(tmp_path_factory.mktemp("mayflyd-flask"), tenants, sources), engine)


def _json(reply: Reply, status: int = 200) -> object:
    assert reply.status == status, reply.text
    assert reply.headers["Content-Type"] == "application/json", reply.headers
    return json.loads(reply.body)


def _multipart(fields: dict[str, str], files: dict[str, tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type."""
    boundary = "mayflyd-test-" + hashlib.sha256(repr(fields).encode()).hexdigest()[:16]
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    for name, (filename, mimetype, content) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: {mimetype}\r\n\r\n".encode() + content + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_module_state_never_reaches_the_next_request(daemon: Daemon) -> None:
    for _ in range(5):
        assert daemon.get(HOST).text == "Hello from Flask (1)"
        assert _json(daemon.get(HOST, "/state")) == {"hits": 1, "paths": ["/state"], "touched": 1}


def test_routing_with_converters_and_query(daemon: Daemon) -> None:
    assert _json(daemon.get(HOST, "/users/42/posts/hello-world?q=a&q=b")) == {
        "user": 42, "slug": "hello-world", "q": ["a", "b"]}
    # <int:...> does not match a word: no route, Flask's own 404.
    assert daemon.get(HOST, "/users/abc/posts/x").status == 404
    reply = daemon.request("DELETE", "/state", host=HOST)
    assert reply.status == 405 and set(reply.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


def test_json_in_and_out(daemon: Daemon) -> None:
    body = json.dumps({"name": "café", "numbers": [1, 2, 39]}).encode()
    reply = daemon.request("POST", "/sum", host=HOST, body=body, headers={"Content-Type": "application/json"})
    assert _json(reply, 201) == {"name": "café", "total": 42}
    # Not JSON: Flask answers 415 before the view runs.
    reply = daemon.request("POST", "/sum", host=HOST, body=b"name=x", headers={"Content-Type": "text/plain"})
    assert reply.status == 415


def test_form_post(daemon: Daemon) -> None:
    body = urlencode([("name", "Zoë & co"), ("tag", "a"), ("tag", "b c")]).encode()
    reply = daemon.request("POST", "/form", host=HOST, body=body,
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert _json(reply) == {"name": "Zoë & co", "tags": ["a", "b c"]}


def test_multipart_file_upload_arrives_byte_for_byte(daemon: Daemon) -> None:
    content = bytes(range(256)) * 1024 + b"\r\n--not-a-boundary\r\n"  # 256 KiB of every byte value
    body, content_type = _multipart({"note": "hello"}, {"file": ("data.bin", "application/octet-stream", content)})
    reply = daemon.request("POST", "/upload", host=HOST, body=body, headers={"Content-Type": content_type})
    assert _json(reply) == {"filename": "data.bin", "mimetype": "application/octet-stream", "size": len(content),
                            "sha256": hashlib.sha256(content).hexdigest(), "note": "hello"}


def test_cookies_are_read_and_every_set_cookie_reaches_the_client(daemon: Daemon) -> None:
    reply = daemon.get(HOST, "/cookies", headers={"Cookie": "user=ann; cart=3"})
    assert _json(reply) == {"user": "ann", "cart": "3"}
    set_cookies = reply.headers.get_all("Set-Cookie") or []
    assert len(set_cookies) == 3, set_cookies
    jar: SimpleCookie = SimpleCookie()
    for header in set_cookies:
        jar.load(header)
    assert {name: morsel.value for name, morsel in jar.items()} == {"session": "abc123", "theme": "dark",
                                                                   "lang": "fr"}
    assert jar["session"]["httponly"] and jar["theme"]["max-age"] == "3600" and jar["lang"]["path"] == "/cookies"


def test_abort_and_a_custom_error_handler(daemon: Daemon) -> None:
    reply = daemon.get(HOST, "/gone")
    assert reply.status == 404 and b"Not Found" in reply.body
    assert _json(daemon.get(HOST, "/int/abc"), 418) == {"error": "invalid literal for int() with base 10: 'abc'"}
    assert _json(daemon.get(HOST, "/int/7")) == {"n": 7}
    # The handled exception is an answer, not a crash: the app keeps serving.
    assert daemon.get(HOST).text == "Hello from Flask (1)"


def test_a_generator_response_is_streamed(daemon: Daemon) -> None:
    reply = daemon.get(HOST, "/stream/3?word=row")
    assert (reply.status, reply.text) == (200, "row 0\nrow 1\nrow 2\n")
    # No length known: chunked, as the app makes each line.
    assert reply.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in reply.headers
    assert reply.headers["Content-Type"].startswith("text/plain")
    # A plain answer has its length.
    assert daemon.get(HOST).headers["Content-Length"] == str(len("Hello from Flask (1)"))
