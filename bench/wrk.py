"""Run wrk against 127.0.0.1 and parse its --latency output."""
from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Pinning

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

# Picks a random Host among the tenants for every request.
RANDOM_HOST_LUA = """
hosts = {%s}
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/", {["Host"] = hosts[math.random(#hosts)]})
end
"""


@dataclass
class WrkResult:
    """What one wrk run measured. Latencies in seconds."""

    connections: int
    duration_s: float
    threads: int
    requests: int = 0
    rps: float = 0.0
    latency: dict[str, float] = field(default_factory=dict)  # "50", "75", "90", "99"
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)
    raw: str = ""

    @property
    def errors(self) -> int:
        """Non-2xx/3xx responses plus socket errors."""
        return self.non_2xx + sum(self.socket_errors.values())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        return data


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(f"cannot parse wrk duration {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse(output: str, connections: int, duration_s: float, threads: int) -> WrkResult:
    """Parse wrk's text output (run with --latency)."""
    result = WrkResult(connections, duration_s, threads, raw=output)
    m = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not m:
        raise ValueError(f"no Requests/sec in wrk output:\n{output}")
    result.rps = float(m.group(1))
    m = re.search(r"(\d+) requests in", output)
    result.requests = int(m.group(1)) if m else 0
    dist = output.split("Latency Distribution", 1)
    if len(dist) == 2:
        for pct, value in re.findall(r"^\s+(\d+)%\s+(\S+)", dist[1], re.M):
            result.latency[pct] = _seconds(value)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    result.non_2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if m:
        result.socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    return result


def run(pin: Pinning, port: int, *, connections: int, duration_s: float, host: str | None = None,
        hosts: list[str] | None = None, timeout_s: float = 10.0, scheme: str = "http") -> WrkResult:
    """wrk --latency against http://127.0.0.1:port/ (1 thread, or 2 from 8
    connections up; never more threads than connections), pinned to the
    client core. hosts: a random Host per request (Lua script). scheme
    "https": over TLS (wrk verifies no certificate)."""
    threads = max(1, min(connections, 2 if connections >= 8 else 1))
    cmd = [*pin.client, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s:g}s",
           f"--timeout={timeout_s:g}s", "--latency"]
    with tempfile.TemporaryDirectory(prefix="mfb-wrk-") as tmp:
        if hosts:
            script = Path(tmp) / "hosts.lua"
            script.write_text(RANDOM_HOST_LUA % ", ".join(f'"{h}"' for h in hosts))
            cmd += ["-s", str(script)]
        elif host:
            cmd += ["-H", f"Host: {host}"]
        cmd.append(f"{scheme}://127.0.0.1:{port}/")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}{out.stdout}")
    return parse(out.stdout, connections, duration_s, threads)


def settings_text(duration_s: float, connections: list[int]) -> str:
    """The wrk settings, for the report."""
    cs = ", ".join(f"-c{c}" for c in connections)
    return (f"wrk 4.x, -d{duration_s:g}s --latency --timeout=10s, {cs}; -t1 below -c8, -t2 from -c8; "
            "keep-alive GET / of the seed program")
