"""A realistic handler for the benchmark's rewind step: imports json and re
lazily, inside the handler, as many programs do (in a reset worker every
request starts from the sealed state, so every request imports them
again: from sys.modules if the host has them, else from disk), and answers
about 2 KB of JSON."""


def on_client_request(request):
    import json
    import re

    words = re.findall(r"[a-z]+", request.path + " catalogue of sample items")
    items = [{"id": i, "name": f"item {i}", "tags": words[:3], "price": round(i * 1.25, 2), "in_stock": i % 3 != 0}
             for i in range(20)]
    return "application/json", json.dumps({"path": request.path, "count": len(items), "items": items})
