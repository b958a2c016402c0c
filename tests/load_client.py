"""A load generator in a process of its own: keeps N keep-alive connections busy.

    python -m tests.load_client PORT CONNECTIONS HOST [HOST...]

Runs until its standard input closes, then prints a JSON summary: the count
of each status, the connection errors, and the last body seen per host.
Niced to the lowest priority, so that the daemon under test gets the CPU first.
"""
from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from collections import Counter


def main() -> None:
    port, connections, hosts = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    os.nice(19)
    stop = threading.Event()
    statuses: Counter[int] = Counter()
    errors: list[str] = []

    def worker(index: int) -> None:
        host = hosts[index % len(hosts)]
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/", headers={"Host": host})
                response = conn.getresponse()
                response.read()
                statuses[response.status] += 1
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{host}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    sys.stdin.read()
    stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps({"statuses": dict(statuses), "errors": errors[:50], "error_count": len(errors)}))


if __name__ == "__main__":
    main()
