"""A load generator in a process of its own: keeps N keep-alive connections busy.

    python -m tests.load_client [--method M] PORT CONNECTIONS HOST [HOST...]

Runs until its standard input closes, then prints a JSON summary: the count
of each status and the connection errors. Connection i sends to host
i % len(hosts); a POST carries a small body. Niced to the lowest priority,
so that the daemon under test gets the CPU first.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load_client")
    parser.add_argument("--method", default="GET")
    parser.add_argument("port", type=int)
    parser.add_argument("connections", type=int)
    parser.add_argument("hosts", nargs="+")
    args = parser.parse_args()
    os.nice(19)
    stop = threading.Event()
    lock = threading.Lock()
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    body = b"payload" if args.method == "POST" else None

    def worker(index: int) -> None:
        host = args.hosts[index % len(args.hosts)]
        conn: http.client.HTTPConnection | None = None
        while not stop.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=10)
                conn.request(args.method, "/", body=body, headers={"Host": host})
                response = conn.getresponse()
                response.read()
                with lock:
                    statuses[response.status] += 1
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors.append(f"{host}: {exc!r}")
                if conn is not None:
                    conn.close()
                conn = None

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.connections)]
    for thread in threads:
        thread.start()
    sys.stdin.read()
    stop.set()
    for thread in threads:
        thread.join()
    print(json.dumps({"statuses": dict(statuses), "errors": errors[:50], "error_count": len(errors)}))


if __name__ == "__main__":
    main()
