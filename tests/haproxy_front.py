"""HAProxy in front of mayflyd nodes, set up as docs/deploy.md says: a
self-signed certificate, the haproxy.cfg, the process and its stats socket.

Used by tests/integration/test_haproxy_nodes.py and by the `proxy` step of
the benchmark (bench/proxy.py).
"""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def make_certificate(directory: Path, names: list[str], addresses: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate for `names` and `addresses` (subjectAltName):
    (the certificate a client trusts, the certificate and key HAProxy loads)."""
    key, cert, bundle = directory / "key.pem", directory / "cert.pem", directory / "haproxy.pem"
    san = ",".join([f"DNS:{n}" for n in names] + [f"IP:{a}" for a in addresses])
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    key.unlink()
    return cert, bundle


@dataclass(frozen=True)
class Node:
    """One mayflyd node as HAProxy sees it: its `listen` and `metrics_listen`."""

    name: str
    address: str
    port: int
    health_port: int | None  # None: no health check (a single node, as in the benchmark)
    source: str | None = None  # the address HAProxy connects from (the node's trusted_proxies)


def haproxy_config(*, bind: str, certificate: Path, nodes: list[Node], stats_socket: Path,
                   inter_ms: int = 2000, fall: int = 3, rise: int = 2) -> str:
    """The haproxy.cfg of docs/deploy.md with these values: TLS and HTTP/2 to
    clients, HTTP/1.1 with a PROXY v2 header to the nodes, Host hashed onto
    the nodes, GET /healthz on each node's metrics_listen."""
    servers = []
    for node in nodes:
        check = (f" check port {node.health_port} inter {inter_ms} fall {fall} rise {rise}"
                 if node.health_port is not None else "")
        source = f" source {node.source}" if node.source else ""
        servers.append(f"    server {node.name} {node.address}:{node.port}{source} send-proxy-v2{check}")
    return "\n".join([
        "global",
        f"    stats socket {stats_socket} mode 600 level admin",
        "    log stdout format raw local0",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    timeout connect 1s",
        "    timeout client 60s",
        "    # Above the longest request_timeout_ms of any tenant: mayflyd answers 504 itself.",
        "    timeout server 60s",
        "    timeout http-keep-alive 60s",
        "    # Sent again, to another node: a request whose connection failed, one that",
        "    # got no answer (a keep-alive connection the node closed under it), one a",
        "    # node answered 503 (its tenant cannot load, or its queue is full: the",
        "    # program did not run).",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response 503",
        "",
        "frontend https",
        f"    bind {bind} ssl crt {certificate} alpn h2,http/1.1",
        "    # Only a GET (or HEAD) is sent twice after it reached a node.",
        "    http-request disable-l7-retry if !METH_GET",
        "    default_backend mayflyd",
        "",
        "backend mayflyd",
        "    # One tenant's requests go to one node, which keeps its workers warm;",
        "    # a node leaving or joining moves only its own share of the hosts.",
        "    balance hdr(host)",
        "    hash-type consistent",
        "    hash-balance-factor 150",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        "    # PROXY v2 to the node's `listen`; the check goes to its `metrics_listen`.",
        *servers,
        "",
    ])


class HAProxy:
    """haproxy in the foreground (-db), optionally behind a command prefix
    (nsenter into a network namespace); its log and stats socket."""

    def __init__(self, config: str, workdir: Path, stats_socket: Path, prefix: list[str] | None = None) -> None:
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(config)
        self.log_path = workdir / "haproxy.log"
        self.stats_socket = stats_socket
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> HAProxy:
        check = subprocess.run([HAPROXY, "-c", "-f", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy refused its config:\n{check.stdout}{check.stderr}")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*self.prefix, HAPROXY, "-db", "-f", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.command("show info")
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"haproxy did not start within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, line: str) -> str:
        """One command on the stats socket, its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend: its servers' rows and BACKEND's, by name."""
        lines = self.command("show stat").splitlines()
        columns = lines[0].lstrip("# ").split(",")
        rows = (dict(zip(columns, line.split(","))) for line in lines[1:])
        return {row["svname"]: row for row in rows if row.get("pxname") == "mayflyd"}

    def server_status(self) -> dict[str, str]:
        """The status column of each server of the backend (UP, DOWN, ...)."""
        return {name: row["status"] for name, row in self.stats().items() if name != "BACKEND"}

    def wait_status(self, server: str, status: str, timeout: float = 10.0) -> float:
        """Wait until `server`'s status starts with `status`; the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.server_status().get(server, "").startswith(status):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"haproxy: {server} not {status} within {timeout}s: {self.server_status()}\n"
                             f"{self.log()[-3000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGUSR1)  # soft stop: finish what is in flight
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
