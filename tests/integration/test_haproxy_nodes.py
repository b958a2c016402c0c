"""Two mayflyd nodes behind HAProxy, as docs/deploy.md sets them up, in
network namespaces this module makes and removes:

    client ns  10.77.9.2 --TLS (h2, http/1.1)--> 10.77.9.1:443 haproxy ns
    haproxy ns 10.77.1.1 --PROXY v2 + HTTP/1.1--> 10.77.1.2:8080 node 1 ns (/healthz on :9100)
               10.77.2.1 ------------------------> 10.77.2.2:8080 node 2 ns

The nodes run one config but for what is the machine's own (listen address,
admin socket, cgroup prefix) and the env var NODE their program answers
with, which tells which node served a request.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.daemon_harness import Daemon
from tests.haproxy_front import HAPROXY, HAProxy, Node, haproxy_config, make_certificate

MISSING = [tool for tool in ("ip", "nsenter", "openssl", "curl") if shutil.which(tool) is None]
if not os.path.exists(HAPROXY):
    MISSING.append("haproxy")
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and the sandbox walls need root"),
    pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}"),
]

CLIENT, FRONT = "10.77.9.2", "10.77.9.1"
PORT, HEALTH_PORT = 8080, 9100
# Health checks every 200 ms, down after 2 failures: drain_ms must outlast that.
INTER_MS, FALL, DRAIN_MS = 200, 2, 2500
HOSTS = [f"site{i}.example.test" for i in range(16)]
SPOOFED = "203.0.113.9"

# Answers which node served it, and the client it sees.
WHERE = '''
import os

def on_client_request(request):
    return {"node": os.environ["NODE"], "client": request.client}
'''
BROKEN = '''
raise RuntimeError("this critical tenant cannot load")

def on_client_request(request):
    return "never"
'''


def node_settings(i: int) -> dict[str, Any]:
    """What node i's config adds for running behind HAProxy: HAProxy's
    address on its veth is the proxy it trusts; it drains on SIGTERM."""
    return {"trusted_proxies": [f"10.77.{i}.1/32"], "drain_ms": DRAIN_MS}


CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def enter_netns(path: str) -> None:
    """Move the calling thread (only it) into the network namespace at `path`."""
    with open(path, "rb") as ns:
        if _libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({path}, CLONE_NEWNET)")


@dataclass
class Netns:
    """A named network namespace (ip netns) with its loopback up."""

    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def prefix(self) -> list[str]:
        # nsenter joins only the network namespace; `ip netns exec` would also
        # remount /sys, hiding the cgroup tree from the daemon.
        return ["nsenter", f"--net={self.path}"]

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a thread inside this namespace."""
        with concurrent.futures.ThreadPoolExecutor(1, initializer=enter_netns, initargs=(self.path,)) as pool:
            return pool.submit(fn, *args).result()


class NodeDaemon(Daemon):
    """A Daemon in a network namespace of its own, on its veth's address."""

    def __init__(self, netns: Netns, address: str, workdir: Path, tenants: list[dict[str, Any]],
                 **top: Any) -> None:
        self.netns, self.address, self.tenants = netns, address, tenants
        self.top = {"listen": f"{address}:{PORT}", "metrics_listen": f"{address}:{HEALTH_PORT}", **top}
        super().__init__(workdir, tenants, {}, **self.top)
        self.port, self.listen_host = PORT, address

    def configure(self, tenants: list[dict[str, Any]]) -> None:
        """Rewrite the config with these tenants and reload it (SIGHUP)."""
        self.write_config(tenants, **self.top)
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def start(self, timeout: float = 30.0, env: dict[str, str] | None = None) -> NodeDaemon:
        self.spawn(["serve", "--config", str(self.config_path)], timeout, prefix=self.netns.prefix, env=env)
        return self

    def connect(self, timeout: float) -> socket.socket:
        return self.netns.run(socket.create_connection, (self.address, self.port), timeout)


@dataclass
class Topology:
    """What topology() built, and requests from the client's namespace through HAProxy."""

    workdir: Path
    client: Netns
    front: Netns
    nodes: list[NodeDaemon]
    haproxy: HAProxy
    ca: Path

    def https_get(self, host: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        """One GET over TLS (HTTP/1.1) from the client's namespace; the JSON answer."""
        return self.client.run(lambda: get_json(https_connection(self.ca), host, headers))

    def curl_h2(self, host: str) -> tuple[str, dict[str, Any]]:
        """One GET with curl --http2 from the client's namespace: (HTTP version, JSON answer)."""
        out = subprocess.run([*self.client.prefix, "curl", "-sS", "--http2", "--cacert", str(self.ca),
                              "--resolve", f"{host}:443:{FRONT}", "-w", "\n%{http_version}", f"https://{host}/"],
                             capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        body, _, version = out.stdout.rpartition("\n")
        return version, json.loads(body)


def get_json(conn: http.client.HTTPConnection, host: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One GET / on conn (then closed): the program's JSON answer, which must be a 200."""
    try:
        conn.request("GET", "/", headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return dict(json.loads(body))
    finally:
        conn.close()


def https_connection(ca: Path) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["http/1.1"])
    return http.client.HTTPSConnection(FRONT, 443, context=context, timeout=10)


@contextlib.contextmanager
def topology(workdir: Path) -> Iterator[Topology]:
    """The namespaces, veths, two nodes and HAProxy; all removed on the way out, even after a failure."""
    tag = uuid.uuid4().hex[:6]
    made: list[Netns] = []
    nodes: list[NodeDaemon] = []
    haproxy: HAProxy | None = None
    try:
        def netns(role: str) -> Netns:
            ns = Netns(f"mfd-{tag}-{role}")
            sh("ip", "netns", "add", ns.name)
            made.append(ns)
            sh("ip", "-n", ns.name, "link", "set", "lo", "up")
            return ns

        def wire(a: Netns, a_if: str, a_addr: str, b: Netns, b_if: str, b_addr: str) -> None:
            sh("ip", "-n", a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
            for ns, ifname, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
                sh("ip", "-n", ns.name, "addr", "add", f"{addr}/24", "dev", ifname)
                sh("ip", "-n", ns.name, "link", "set", ifname, "up")

        front, client = netns("haproxy"), netns("client")
        wire(front, "client", FRONT, client, "eth0", CLIENT)
        (workdir / "programs").mkdir()
        (workdir / "programs" / "where.py").write_text(WHERE)
        for i in (1, 2):
            ns = netns(f"node{i}")
            wire(front, f"node{i}", f"10.77.{i}.1", ns, "eth0", f"10.77.{i}.2")
            (workdir / f"node{i}").mkdir()
            tenants = [{"name": "sites", "hosts": ["*.example.test"], "default": True,
                        "program": "../programs/where.py", "engine": "fork", "env": {"NODE": f"node{i}"},
                        "limits": {"memory": "128MiB", "concurrency": 16}}]
            # uid_base: two nodes on one machine would otherwise share tenant
            # uids, and so RLIMIT_NPROC; on separate machines they may be equal.
            nodes.append(NodeDaemon(ns, f"10.77.{i}.2", workdir / f"node{i}", tenants,
                                    uid_base=200000 + 100000 * i, access_log=True, shutdown_grace_ms=5000,
                                    **node_settings(i)))
            nodes[-1].start()
        ca, bundle = make_certificate(workdir, ["example.test", "*.example.test"], [FRONT])
        config = haproxy_config(bind=f"{FRONT}:443", certificate=bundle, stats_socket=workdir / "haproxy.sock",
                                nodes=[Node(f"node{i}", f"10.77.{i}.2", PORT, HEALTH_PORT) for i in (1, 2)],
                                inter_ms=INTER_MS, fall=FALL, rise=1)
        haproxy = HAProxy(config, workdir, workdir / "haproxy.sock", prefix=front.prefix).start()
        for i in (1, 2):
            haproxy.wait_status(f"node{i}", "UP")
        yield Topology(workdir, client, front, nodes, haproxy, ca)
    finally:
        # Every step runs whatever the one before did: a node that would not
        # stop is killed (by Daemon.stop) and the namespaces still go.
        errors: list[BaseException] = []
        for stop in [*([haproxy.stop] if haproxy else []), *(node.stop for node in nodes)]:
            try:
                stop()
            except (AssertionError, OSError, subprocess.SubprocessError) as exc:
                errors.append(exc)
        leftovers = [d for node in nodes for d in node.cgroup_dirs()]
        for ns in reversed(made):  # removes the veths inside with it
            subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
        assert errors == [], errors
        assert leftovers == [], f"cgroups left behind: {leftovers}"


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    with topology(tmp_path_factory.mktemp("haproxy-nodes")) as t:
        yield t


def test_https_and_http2_reach_both_nodes(topo: Topology) -> None:
    served: dict[str, set[str]] = {"node1": set(), "node2": set()}
    for host in HOSTS:
        answer = topo.https_get(host)
        served[answer["node"]].add(host)
        version, again = topo.curl_h2(host)
        assert version == "2", f"curl --http2 got HTTP/{version}"
        # Hashing the Host keeps a tenant's requests on one node, whatever the protocol.
        assert again["node"] == answer["node"], host
    print(f"hosts per node: { {k: len(v) for k, v in served.items()} }")
    assert served["node1"] and served["node2"], served


def test_program_sees_the_real_client(topo: Topology) -> None:
    answer = topo.https_get(HOSTS[0])
    assert answer["client"] == CLIENT, answer
    # A client's own X-Forwarded-For passes through HAProxy, but the PROXY
    # header names the client, which no node trusts: it is not believed.
    answer = topo.https_get(HOSTS[0], {"X-Forwarded-For": SPOOFED})
    assert answer["client"] == CLIENT, answer
    node = topo.nodes[int(answer["node"][-1]) - 1]
    node.wait_for(lambda: any("mayflyd.access" in line and CLIENT in line for line in node.log().splitlines()),
                  5, "the client's address in the access log")


def test_spoofed_forwarded_for_from_an_untrusted_peer(topo: Topology) -> None:
    # From an address of the HAProxy namespace that no node trusts, straight to node 1.
    sh("ip", "-n", topo.front.name, "addr", "add", "10.77.1.3/24", "dev", "node1")

    def get() -> dict[str, Any]:
        conn = http.client.HTTPConnection("10.77.1.2", PORT, timeout=10)
        conn.sock = socket.create_connection(("10.77.1.2", PORT), timeout=10, source_address=("10.77.1.3", 0))
        return get_json(conn, HOSTS[0], {"X-Forwarded-For": SPOOFED, "Forwarded": f"for={SPOOFED}"})
    answer = topo.front.run(get)
    assert answer["client"] == "10.77.1.3", answer


@dataclass
class Load:
    """Keep-alive GETs over TLS through HAProxy from the client's namespace,
    every request counted."""

    topo: Topology
    threads: int = 4
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    by_node: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def worker(self, seed: int) -> None:
        enter_netns(self.topo.client.path)
        rng = random.Random(seed)
        conn = https_connection(self.topo.ca)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": rng.choice(HOSTS)})
                response = conn.getresponse()
                body = response.read()
                with self.lock:
                    if response.status == 200:
                        self.ok += 1
                        node = json.loads(body)["node"]
                        self.by_node[node] = self.by_node.get(node, 0) + 1
                    else:
                        self.failed.append(f"{response.status} {body[:80]!r}")
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failed.append(repr(exc))
                conn.close()
                conn = https_connection(self.topo.ca)
        conn.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        threads = [threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(self.threads)]
        for t in threads:
            t.start()
        try:
            yield self
        finally:
            self.stop.set()
            for t in threads:
                t.join(20)


def test_rolling_restart_under_load_fails_no_request(topo: Topology) -> None:
    assert DRAIN_MS > INTER_MS * FALL
    load = Load(topo)
    with load.running():
        time.sleep(1)
        for i, node in enumerate(topo.nodes, 1):
            before = load.ok
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)  # /healthz answers 503 at once, serving goes on drain_ms
            down_s = topo.haproxy.wait_status(f"node{i}", "DOWN", timeout=DRAIN_MS / 1000)
            assert node.proc.poll() is None, "the node stopped before HAProxy took it out: no drain"
            assert node.proc.wait(DRAIN_MS / 1000 + 10) == 0, node.log()[-3000:]
            node.start()
            up_s = topo.haproxy.wait_status(f"node{i}", "UP")
            print(f"node{i}: out of HAProxy {down_s:.2f} s after SIGTERM, back {up_s:.2f} s after its start; "
                  f"{load.ok - before} requests meanwhile")
            time.sleep(0.5)
        time.sleep(0.5)
    backend = topo.haproxy.stats()["BACKEND"]
    print(f"rolling restart: {load.ok} requests answered 200, {len(load.failed)} failed; per node "
          f"{load.by_node}; HAProxy retried {backend['wretr']} and redispatched {backend['wredis']} requests")
    assert load.failed == [], load.failed[:10]
    assert load.ok > 100 and len(load.by_node) == 2, (load.ok, load.by_node)


def test_critical_tenant_that_cannot_load_takes_the_node_out(topo: Topology) -> None:
    node = topo.nodes[0]
    (node.workdir / "programs" / "broken.py").write_text(BROKEN)
    with_broken = [*node.tenants, {"name": "billing", "hosts": ["billing.test"], "program": "programs/broken.py",
                                   "engine": "fork", "critical": True}]
    node.configure(with_broken)
    try:
        topo.haproxy.wait_status("node1", "DOWN")

        def healthz() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(node.address, HEALTH_PORT, timeout=5)
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()
        status, body = topo.front.run(healthz)
        assert status == 503, (status, body)
        assert "billing" in body.decode(), body
        nodes = {topo.https_get(host)["node"] for host in HOSTS}
        assert nodes == {"node2"}, nodes
    finally:
        node.configure(node.tenants)
    topo.haproxy.wait_status("node1", "UP")
