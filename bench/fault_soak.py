"""A fault soak: keep-alive GET load on a reset tenant and a fork tenant
while the daemon's own processes are SIGKILLed, and what the clients saw.

    python -m bench.fault_soak [--kill workers,hosts,zygote] [--duration 90]
                               [--interval 2] [--calm 10] [--clients 6]

One mayflyd (both tenants serving the seed program, default config
otherwise) on its own port. Three phases, each reported apart: calm, then
a SIGKILL every `interval` seconds for `duration` seconds to a process
picked at random among the kinds named (a host's child: a reset worker,
its snapshot template, or a fork sandbox; a tenant's host; the zygote),
then calm again. Clients are threads with one keep-alive connection each,
alternating the two tenants; a refused or reset connection, a timeout or
any status but 200 is a failed request. After the run: the supervisor's
fds and RSS against the first calm phase, and whether SIGTERM stopped it
with nothing left behind. A Markdown table goes to stdout and the JSON to
bench/results/soak-<time>.json.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Pinning
from bench.servers import RunningServer, TenantSpec, mayflyd
from mayflyd.cli.admin_client import UnixHTTPConnection

RESULTS = Path(__file__).resolve().parent / "results"
KINDS = ("workers", "hosts", "zygote")
TENANTS = (TenantSpec(name="reset", program=Path(), hosts=["reset.soak.localhost"], default=True, engine="reset",
                      uid=310000),
           TenantSpec(name="fork", program=Path(), hosts=["fork.soak.localhost"], engine="fork", uid=310001))


@dataclass
class Phase:
    """What the clients saw during one phase."""

    name: str
    requests: int = 0
    statuses: Counter[str] = field(default_factory=Counter)  # failures only: "503", "reset", "timeout", ...
    kills: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return sum(self.statuses.values())


class Load:
    """Client threads, each with its own keep-alive connection."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.phase = Phase("warm-up")
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def _count(self, failure: str | None) -> None:
        with self.lock:
            self.phase.requests += 1
            if failure is not None:
                self.phase.statuses[failure] += 1

    def _client(self, index: int) -> None:
        hosts = [t.hosts[0] for t in TENANTS]
        conn: http.client.HTTPConnection | None = None
        n = index
        while not self.stopping.is_set():
            n += 1
            current = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            conn = current
            try:
                current.request("GET", "/", headers={"Host": hosts[n % len(hosts)]})
                response = current.getresponse()
                response.read()
                self._count(None if response.status == 200 else str(response.status))
                if not response.will_close:
                    continue
            except TimeoutError:
                self._count("timeout")
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self._count(type(exc).__name__)
            current.close()
            conn = None


def _status(server: RunningServer) -> dict[str, Any]:
    assert server.admin_socket is not None
    conn = UnixHTTPConnection(server.admin_socket, 10)
    try:
        conn.request("GET", "/status")
        return json.loads(conn.getresponse().read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def targets(status: dict[str, Any], kind: str) -> list[int]:
    """The pids of one kind (workers, hosts, zygote) in a status API answer."""
    hosts = [int(h["pid"]) for t in status["tenants"].values() for h in t.get("hosts", [])]
    if kind == "hosts":
        return hosts
    if kind == "zygote":
        zygote = status.get("zygote")
        return [int(zygote["pid"])] if zygote else []
    # A reset host's workers (and their snapshot templates), a fork host's sandboxes.
    return [child for host in hosts for child in _children(host)]


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def kill_descendant(pid: int, supervisor: int) -> bool:
    """SIGKILL pid if it is still a descendant of the supervisor. Through a
    pidfd taken before the check: pids wrap quickly on a busy machine, and
    a pid read from the status API a moment ago may be another process's
    now."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone, or not a process (a status API pid of 0 for a host starting)
        return False
    try:
        ancestor = pid
        while ancestor not in (supervisor, 0, 1):
            ancestor = _parent(ancestor)
        if ancestor != supervisor:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except (OSError, ValueError):  # gone meanwhile
        return False
    finally:
        os.close(pidfd)


def supervisor_usage(pid: int) -> tuple[int, int]:
    """Open fds and RSS (KiB) of the supervisor."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return fds, rss


def run(kinds: list[str], duration: float, interval: float, calm: float, clients: int) -> dict[str, Any]:
    from bench.common import SEED
    tenants = [TenantSpec(**{**asdict(t), "program": SEED}) for t in TENANTS]
    with mayflyd(Pinning((), (), "not pinned"), tenants) as server:
        load = Load(server.port, clients)
        load.start()
        time.sleep(2)
        phases: list[Phase] = []
        load.phase = Phase("calm before")
        time.sleep(calm)
        before = supervisor_usage(server.proc.pid)
        phases.append(load.phase)
        load.phase = Phase(f"SIGKILL every {interval:g} s: {', '.join(kinds)}")
        end = time.monotonic() + duration
        while time.monotonic() < end:
            kind = random.choice(kinds)
            pids = targets(_status(server), kind)
            if pids and kill_descendant(random.choice(pids), server.proc.pid):
                load.phase.kills[kind] += 1
            time.sleep(interval)
        phases.append(load.phase)
        load.phase = Phase("calm after")
        time.sleep(calm)
        after = supervisor_usage(server.proc.pid)
        phases.append(load.phase)
        load.stop()
    return {"kinds": kinds, "duration_s": duration, "interval_s": interval, "clients": clients,
            "phases": [{"name": p.name, "requests": p.requests, "failed": p.failed, "statuses": dict(p.statuses),
                        "kills": dict(p.kills)} for p in phases],
            "supervisor": {"fds": [before[0], after[0]], "rss_kib": [before[1], after[1]]}}


def report(data: dict[str, Any]) -> str:
    lines = ["| phase | kills | requests | failed | by cause |", "|---|---|---|---|---|"]
    for p in data["phases"]:
        kills = ", ".join(f"{n} {k}" for k, n in sorted(p["kills"].items())) or "-"
        causes = ", ".join(f"{n} × {s}" for s, n in sorted(p["statuses"].items(), key=lambda i: -i[1])) or "-"
        share = f" ({100 * p['failed'] / p['requests']:.1f}%)" if p["requests"] and p["failed"] else ""
        lines.append(f"| {p['name']} | {kills} | {p['requests']} | {p['failed']}{share} | {causes} |")
    sup = data["supervisor"]
    lines.append("")
    lines.append(f"Supervisor after the kills against before: fds {sup['fds'][0]} -> {sup['fds'][1]}, "
                 f"RSS {sup['rss_kib'][0]} -> {sup['rss_kib'][1]} KiB.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fault_soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kill", default=",".join(KINDS), help="what to SIGKILL: workers, hosts, zygote")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds of kills")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between kills")
    parser.add_argument("--calm", type=float, default=10.0, help="seconds of each calm phase")
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args(argv)
    kinds = [k for k in args.kill.split(",") if k]
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kill takes some of {', '.join(KINDS)}")
    data = run(kinds, args.duration, args.interval, args.calm, args.clients)
    text = report(data)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(data, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
