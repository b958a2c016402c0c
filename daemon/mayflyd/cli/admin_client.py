"""The client side of the admin API, for `mayflyd status` and `mayflyd reload`.

Standard library only: the CLI must work without an event loop and start fast.
"""
from __future__ import annotations

import http.client
import json
import socket
from typing import Any

__all__ = ["AdminError", "UnixHTTPConnection", "admin_request", "format_status"]


class AdminError(Exception):
    """The admin API could not be reached or gave an answer that is not JSON."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: only connect() differs."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def admin_request(socket_path: str, method: str, path: str, *,
                  timeout: float = 60.0) -> tuple[int, dict[str, Any]]:
    """Send one request to the admin API: (HTTP status, JSON body)."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        try:
            conn.request(method, path)
            response = conn.getresponse()
            raw = response.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise AdminError(f"cannot reach mayflyd at {socket_path}: {exc.strerror} — is it running?") from exc
        except PermissionError as exc:
            raise AdminError(f"cannot reach mayflyd at {socket_path}: {exc.strerror} "
                             f"— only the daemon's user may open its admin socket") from exc
        except TimeoutError as exc:
            raise AdminError(f"mayflyd at {socket_path} did not answer {method} {path} "
                             f"within {timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise AdminError(f"talking to mayflyd at {socket_path} failed: {exc}") from exc
    finally:
        conn.close()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise AdminError(f"mayflyd answered {method} {path} with {response.status} and a body "
                         f"that is not JSON: {raw[:200]!r}") from exc
    if not isinstance(body, dict):
        raise AdminError(f"mayflyd answered {method} {path} with {response.status} and JSON "
                         f"that is not an object: {raw[:200]!r}")
    return response.status, body


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _text(value: Any, default: str = "-") -> str:
    return default if value is None or value == "" else str(value)


def _uptime(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if days or hours else []
    parts += [f"{minutes}m"] if days or hours or minutes else []
    return " ".join(parts + [f"{s}s"])


def _reload_text(reload: Any) -> str:
    reload = _dict(reload)
    if not reload:
        return "-"
    text = _text(reload.get("result"), "?")
    if reload.get("error"):
        # Only the first line: an error may be a whole traceback, and a tenant gets one line.
        text += ": " + str(reload["error"]).strip().splitlines()[0]
    return text


def _walls_text(walls: dict[str, Any]) -> str:
    seccomp = walls.get("seccomp")
    return (f"mode {_text(walls.get('mode'), '?')}, cgroup {_text(walls.get('cgroup'), 'none')}, "
            f"seccomp {'on' if seccomp else 'off' if seccomp is not None else '?'}")


def _count_text(value: Any) -> str:
    return "?" if value is None else str(_count(value))


def format_status(status: dict[str, Any]) -> str:
    """A human-readable summary of GET /status: the daemon, then one line per tenant.

    ERRORS are the tenant's failures to serve, as the daemon counts them: 5xx
    answers and the requests it refused for a limit. The 4xx its program
    returned are answers, not failures: they are the 4XX column.
    """
    last = _dict(status.get("last_reload"))
    lines = [
        f"mayflyd {_text(status.get('version'), '?')}, pid {_text(status.get('pid'), '?')}, "
        f"up {_uptime(status.get('uptime_s'))}, listening on {_text(status.get('listen'), '?')}"
        # A node draining still serves, but its /healthz says 503: say why.
        + (", draining: stopping soon" if status.get("draining") is True else ""),
        f"config: {_text(status.get('config'), '?')}",
        f"walls: {_walls_text(_dict(status.get('walls')))}",
        f"last reload: {_reload_text(last)}" + (f" at {last['at']}" if last.get("at") else ""),
    ]
    header = ("TENANT", "STATE", "VERSION", "ENGINE", "HOSTS", "REQUESTS", "ERRORS", "4XX", "LIMIT HITS",
              "REPLACED", "LAST RELOAD")
    rows: list[tuple[str, ...]] = []
    for name, tenant in sorted(_dict(status.get("tenants")).items()):
        tenant = _dict(tenant)
        requests = {str(code): _count(n) for code, n in _dict(tenant.get("requests")).items()}
        hosts = tenant.get("hosts")
        rows.append((
            str(name), _text(tenant.get("state"), "?"), _text(tenant.get("version")),
            _text(tenant.get("engine"), "?"), str(len(hosts)) if isinstance(hosts, list) else "?",
            str(sum(requests.values())),
            _count_text(tenant.get("errors")), _count_text(tenant.get("program_4xx")),
            str(sum(_count(n) for n in _dict(tenant.get("limit_hits")).values())),
            # Reset-engine workers replaced because they died or could not be rewound.
            str(_count(tenant.get("worker_replacements"))),
            _reload_text(tenant.get("last_reload")),
        ))
    if not rows:
        return "\n".join(lines + ["no tenants"])
    # Every column but the last padded to its widest cell; the last may be long.
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
