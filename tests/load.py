"""Load for integration tests: a load generator process (tests/load_client.py)
keeping keep-alive connections busy for as long as a `with` block lasts."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from tests.daemon_harness import DaemonProcess

__all__ = ["Load"]


class Load:
    """`connections` keep-alive connections sending `method` requests to
    `hosts` in turn; after the block, what they got: `statuses` (count per
    HTTP status) and `errors` (connections that failed, first 50)."""

    def __init__(self, daemon: DaemonProcess, hosts: list[str], connections: int = 16, method: str = "GET") -> None:
        self._args = [sys.executable, "-m", "tests.load_client", "--method", method, str(daemon.port),
                      str(connections), *hosts]
        self.statuses: Counter[int] = Counter()
        self.errors: list[str] = []
        self.error_count = 0
        self._proc: subprocess.Popen[str] | None = None

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + self.error_count

    def __enter__(self) -> Load:
        self._proc = subprocess.Popen(self._args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        out, _ = self._proc.communicate("", timeout=60)
        summary = json.loads(out)
        self.statuses = Counter({int(k): v for k, v in summary["statuses"].items()})
        self.errors = summary["errors"]
        self.error_count = summary["error_count"]
