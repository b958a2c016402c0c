"""WSGI apps (tenant key `app`) through the daemon, under both engines."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.daemon_harness import Daemon, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root, serving

pytestmark = needs_root

# A package next to the config: `app: "apps.hello:application"` imports
# apps/hello.py, and apps/ is what the sandbox sees.
HELLO = '''
import json

calls = 0
items = []


def application(environ, start_response):
    global calls
    calls += 1
    items.append(environ["PATH_INFO"])
    body = json.dumps({
        "calls": calls, "items": items, "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
        "input": environ["wsgi.input"].read().decode(), "server": [environ["SERVER_NAME"], environ["SERVER_PORT"]],
        "custom": environ.get("HTTP_X_CUSTOM"),
    }).encode()
    print("wsgi.errors works", file=environ["wsgi.errors"])
    start_response("200 OK", [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    return iter([body[:5], body[5:]])


def twice(environ, start_response):
    start_response("200 OK", [])
    start_response("200 OK", [])
    return [b"never"]

'''

FLASK_SITE = '''
from flask import Flask, abort, jsonify

app = Flask(__name__)
hits = 0


@app.get("/")
def hello():
    global hits
    hits += 1
    return f"Hello from Flask ({hits})"


@app.get("/json/<int:n>")
def as_json(n):
    return jsonify(n=n, double=2 * n)


@app.get("/gone")
def gone():
    abort(404)
'''


@pytest.fixture(scope="module", params=("fork", "reset"))
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    engine = str(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("mayflyd-wsgi")
    tenants = [
        {"name": "wsgi", "hosts": ["wsgi.localhost"], "app": "programs.hello:application", "engine": engine,
         "limits": limits()},
        {"name": "twice", "hosts": ["twice.localhost"], "app": "programs.hello:twice", "interface": "wsgi",
         "engine": engine, "limits": limits()},
    ]
    sources = {"__init__.py": "", "hello.py": HELLO}
    tenants.append({"name": "flask", "hosts": ["flask.localhost"], "app": "programs.flask_site:app",
                    "engine": engine, "limits": limits()})
    sources["flask_site.py"] = FLASK_SITE
    # The harness writes programs into programs/, next to the config: a package here.
    yield from serving(Daemon(workdir, tenants, sources), engine)


def test_a_wsgi_app_is_served_and_every_request_starts_from_the_seal(daemon: Daemon) -> None:
    for i in range(6):
        reply = daemon.request("POST", f"/caf%C3%A9/{i}?x=1", host="wsgi.localhost:8080", body=b"payload",
                               headers={"X-Custom": "yes"})
        assert reply.status == 200, reply.text
        seen = json.loads(reply.body)
        # The module-level counter and list never carry one request's change to the next.
        assert seen["calls"] == 1 and len(seen["items"]) == 1
        assert seen["path"] == f"/café/{i}".encode().decode("latin-1")
        assert (seen["method"], seen["query"], seen["input"]) == ("POST", "x=1", "payload")
        assert (seen["server"], seen["custom"]) == (["wsgi.localhost", "8080"], "yes")
        assert reply.headers["Content-Type"] == "application/json"
        assert reply.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    daemon.wait_for(lambda: "wsgi.errors works" in daemon.log(), what="wsgi.errors in the tenant's log")


def test_start_response_twice_is_a_500_and_the_daemon_keeps_serving(daemon: Daemon) -> None:
    reply = daemon.get("twice.localhost")
    assert reply.status == 500 and b"never" not in reply.body
    daemon.wait_for(lambda: "start_response() was called a second time without exc_info" in daemon.log(),
                    what="the app's error in the log")
    assert daemon.get("twice.localhost").status == 500
    assert daemon.get("wsgi.localhost").status == 200


def test_flask_hello_json_and_404(daemon: Daemon) -> None:
    for _ in range(3):
        reply = daemon.get("flask.localhost")
        assert (reply.status, reply.text) == (200, "Hello from Flask (1)")
    reply = daemon.get("flask.localhost", "/json/21")
    assert reply.status == 200 and reply.headers["Content-Type"] == "application/json"
    assert json.loads(reply.body) == {"n": 21, "double": 42}
    reply = daemon.get("flask.localhost", "/gone")
    assert reply.status == 404 and b"Not Found" in reply.body
    assert daemon.get("flask.localhost", "/nowhere").status == 404
