"""Echo: returns the request as JSON (the request form of the program contract)."""
import base64
import json


def on_client_request(request):
    try:
        body = {"text": request.body.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"base64": base64.b64encode(request.body).decode("ascii")}
    return 200, {"Content-Type": "application/json"}, json.dumps({
        "method": request.method,
        "path": request.path,
        "raw_path": request.raw_path,
        "query": request.query,
        "args": request.args,
        "headers": request.headers.raw(),
        "body": body,
        "client": request.client,
    })
