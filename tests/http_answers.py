"""Reading HTTP/1.1 answers off a raw socket, for the tests that send raw bytes."""
from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        found = [v for n, v in self.headers if n.lower() == name.lower()]
        assert len(found) <= 1, f"{name} appears {len(found)} times"
        return found[0] if found else None

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Reader:
    """Reads answers one after the other from a socket: status line, headers,
    a Content-Length body (none for HEAD, 1xx, 204 and 304)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.data = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.data += chunk
        return bool(chunk)

    def answer(self, head_only: bool = False) -> Answer:
        while b"\r\n\r\n" not in self.data:
            assert self._fill(), f"closed before a whole head: {self.data!r}"
        head, self.data = self.data.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        answer = Answer(int(status), [(n, v.strip()) for n, v in (line.split(":", 1) for line in lines)])
        length = answer.header("Content-Length")
        if length is not None and not head_only and answer.status >= 200 and answer.status not in (204, 304):
            while len(self.data) < int(length):
                assert self._fill(), "closed before the whole body"
            answer.body, self.data = self.data[:int(length)], self.data[int(length):]
        return answer

    def closed(self, within: float = 3.0) -> bool:
        """True if the server closes the connection (EOF or RST) with nothing more to say."""
        self.sock.settimeout(within)
        try:
            return not self._fill() and not self.data
        except ConnectionResetError:
            return not self.data
        except TimeoutError:
            return False
