"""The tenant's `warm_up` requests, sent to its program in the host before
the seal (docs/design.md, "Warm-up requests"): what a first request sets up
lazily, and the bytecode CPython specialises after a few calls, are then
part of the sealed state instead of being redone, and their pages written,
in every sandbox."""
from __future__ import annotations

import sys

from mayflyd import _mayfly
from mayflyd.host.program import Request

__all__ = ["send_warm_up_requests"]

# Request ids of the host's own requests: far from the front end's.
_FIRST_ID = 1 << 62


def send_warm_up_requests(path: _mayfly.RequestPath, targets: list[str], host: str, rounds: int) -> None:
    """GET each target `rounds` times through the request path a
    sandbox runs; says in the tenant's log what each answered."""
    headers = [("Host", host), ("User-Agent", "mayflyd-warm-up"), ("Accept", "*/*")]
    request_id = _FIRST_ID
    for target in targets:
        raw_path, _, query = target.partition("?")
        statuses: set[int] = set()
        for _ in range(rounds):
            request = Request(id=request_id, method="GET", path=raw_path, query=query, headers=headers,
                              body=b"", client="127.0.0.1")
            request_id += 1
            statuses.add(path.respond(request)[0])
        answered = ", ".join(map(str, sorted(statuses)))
        print(f"warm-up: GET {target} answered {answered} ({rounds} requests)", file=sys.stderr)
