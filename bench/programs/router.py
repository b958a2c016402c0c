"""A small Flask-like router for the benchmark's rewind step: ten routes
whose path parameters are matched with re, compiled at import; each
request is dispatched and answered with a JSON body."""
import json
import re

ROUTES = []  # (method, compiled pattern, handler), in declaration order
_PARAM = re.compile(r"<(?:(int|str):)?(\w+)>")


def route(pattern, method="GET"):
    """Register a handler for a path like /users/<int:user_id>."""
    def converter(match):
        kind, name = match.group(1) or "str", match.group(2)
        return rf"(?P<{name}>\d+)" if kind == "int" else rf"(?P<{name}>[^/]+)"

    regex = re.compile("^" + _PARAM.sub(converter, pattern) + "$")

    def register(handler):
        ROUTES.append((method, regex, handler))
        return handler
    return register


@route("/")
def index():
    return {"service": "bench", "routes": len(ROUTES)}


@route("/health")
def health():
    return {"ok": True}


@route("/users")
def users():
    return {"users": [{"id": i, "name": f"user {i}"} for i in range(5)]}


@route("/users/<int:user_id>")
def user(user_id):
    return {"id": int(user_id), "name": f"user {user_id}"}


@route("/users/<int:user_id>/posts")
def user_posts(user_id):
    return {"user": int(user_id), "posts": [{"id": p, "title": f"post {p}"} for p in range(3)]}


@route("/users/<int:user_id>/posts/<int:post_id>")
def user_post(user_id, post_id):
    return {"user": int(user_id), "post": int(post_id), "title": f"post {post_id}"}


@route("/items/<name>")
def item(name):
    return {"item": name, "price": len(name) * 1.5}


@route("/items/<name>/reviews")
def item_reviews(name):
    return {"item": name, "reviews": [{"stars": s} for s in (5, 4, 3)]}


@route("/search/<term>")
def search(term):
    return {"term": term, "hits": [term.upper(), term[::-1]]}


@route("/version")
def version():
    return {"version": "1.0"}


def on_client_request(request):
    for method, regex, handler in ROUTES:
        match = regex.match(request.path)
        if match and method == request.method:
            body = json.dumps(handler(**match.groupdict()))
            return 200, [("Content-Type", "application/json")], body
    return 404, [("Content-Type", "application/json")], json.dumps({"error": "not found", "path": request.path})
