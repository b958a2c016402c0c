"""More walls: shared memory from on_init(), stdio, locks, address families, headers.

The request-path attacks run against the escape suite's `isolated` daemon
(attacks.py). What on_init() leaves behind needs tenants of its own: one
per kind of shared memory, each a hostname away in one program
(`on_init_walls.py`, which reads its tenant from the host name the walls
set), in a daemon of this module's own, under both engines.
"""
from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.daemon_harness import HOST_VARIANTS, IsolatedDaemon, host_variant, skip_without_reset_engine
from tests.isolation.test_escapes import EPERM, attack, outcome

# ---- what on_init() leaves behind ------------------------------------------

ON_INIT_WALLS = '''
import ctypes
import errno
import fcntl
import mmap
import os
import socket

KIND = socket.gethostname().removeprefix("mayfly-")
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
STATE = {}


def observed(action):
    try:
        return f"ok {action()}"
    except OSError as exc:
        return f"{type(exc).__name__} {errno.errorcode.get(exc.errno, exc.errno)}"


def shared_map(fd, flags=0):
    # ctypes, not mmap.mmap: that one keeps a dup of the fd, and the
    # mapping alone is what is checked here.
    address = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED | flags, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
    return (ctypes.c_ubyte * 4096).from_address(address)


def on_init():
    if KIND == "anonymous":
        STATE["map"] = shared_map(-1, mmap.MAP_ANONYMOUS)
    elif KIND == "dev-zero":
        fd = os.open("/dev/zero", os.O_RDWR)
        STATE["map"] = shared_map(fd)
        os.close(fd)
    elif KIND == "memfd":
        STATE["fd"] = os.memfd_create("tenant-state", os.MFD_ALLOW_SEALING)
        os.ftruncate(STATE["fd"], 4096)
    elif KIND == "memfd-mapped":
        fd = os.memfd_create("mapped")
        os.ftruncate(fd, 4096)
        STATE["map"] = shared_map(fd)
        os.close(fd)
    elif KIND == "sysv":
        shmid = libc.shmget(0, 4096, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        assert shmid >= 0, ctypes.get_errno()
        STATE["map"] = (ctypes.c_ubyte * 4096).from_address(libc.shmat(shmid, None, 0))
        libc.shmctl(shmid, 0, None)  # IPC_RMID: gone once detached
    elif KIND == "posix":
        STATE["seen"] = observed(lambda: os.open("/dev/shm/tenant-state", os.O_RDWR | os.O_CREAT, 0o600))
    elif KIND == "read-only":
        with open(__file__, "rb") as f:  # a shared mapping no one can write: harmless
            STATE["map"] = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    elif KIND == "stdin-setter":
        os.set_blocking(0, False)  # on the zygote's /dev/null, were it shared
    elif KIND == "vsock":
        STATE["seen"] = observed(lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close())


def on_client_request(request):
    if request.path == "/stdin":
        return str(bool(fcntl.fcntl(0, fcntl.F_GETFL) & os.O_NONBLOCK))
    if "seen" in STATE:
        return STATE["seen"]
    if "fd" in STATE:  # what the last request left, and a seal
        fd = STATE["fd"]
        count = os.pread(fd, 1, 0)[0] + 1
        os.pwrite(fd, bytes([count]), 0)
        return f"{count} seals {fcntl.fcntl(fd, fcntl.F_GET_SEALS)}"
    if KIND == "read-only":
        return STATE["map"][:64].decode().split()[0]
    if "map" in STATE:
        STATE["map"][0] += 1
        return str(STATE["map"][0])
    return "nothing"
'''

SQLITE_PROGRAM = '''
import os
import sqlite3

DB = os.path.join(os.path.dirname(__file__), "bundled.db")


def on_client_request(request):
    with sqlite3.connect(f"file:{DB}?mode=ro", uri=True) as db:
        return db.execute("select value from kv where key = 'k'").fetchone()[0]
'''

REFUSED = {
    "anonymous": "anonymous shared memory at ",
    "dev-zero": "anonymous shared memory at ",
    "memfd": "memfd 'tenant-state' (fd ",
    "memfd-mapped": "memfd 'mapped' at ",
    "sysv": "SysV shared memory segment ",
}
SERVING = ("posix", "read-only", "stdin-setter", "stdin-checker", "vsock")


@pytest.fixture(scope="module", params=HOST_VARIANTS)
def on_init_daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[IsolatedDaemon]:
    engine, zygote = host_variant(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("on-init-walls")
    package = workdir / "programs" / "sqlite_ro"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(SQLITE_PROGRAM)
    with sqlite3.connect(package / "bundled.db") as db:
        db.execute("create table kv (key text, value text)")
        db.execute("insert into kv values ('k', 'bundled value')")
    db.close()
    tenants: list[dict[str, object]] = [
        {"name": name, "hosts": [f"{name}.localhost"], "program": "programs/on_init_walls.py", "engine": engine}
        for name in (*REFUSED, *SERVING)]
    tenants.append({"name": "sqlite", "hosts": ["sqlite.localhost"], "program": "programs/sqlite_ro",
                    "engine": engine})
    daemon = IsolatedDaemon(workdir, tenants, {"on_init_walls.py": ON_INIT_WALLS}, zygote=zygote)
    daemon.engine = engine
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log()[-5000:]
        assert daemon.cgroup_dirs() == [], "cgroups left behind"
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_shared_memory_from_on_init_is_refused_at_load(on_init_daemon: IsolatedDaemon, kind: str) -> None:
    # Without the check, each request counted on from the one before.
    d = on_init_daemon
    d.wait_for(lambda: f"on_init() left shared memory, which every request would share: {REFUSED[kind]}"
               in d.log(), what=f"the load error of {kind}")
    assert d.get(f"{kind}.localhost").status == 503


def test_posix_shm_has_nowhere_to_live(on_init_daemon: IsolatedDaemon) -> None:
    assert outcome(on_init_daemon, "/", "posix") == "FileNotFoundError ENOENT"


def test_a_read_only_shared_mapping_is_kept(on_init_daemon: IsolatedDaemon) -> None:
    assert outcome(on_init_daemon, "/", "read-only") == "import"


def test_a_bundled_read_only_sqlite_database_still_works(on_init_daemon: IsolatedDaemon) -> None:
    assert outcome(on_init_daemon, "/", "sqlite") == "bundled value"


# ---- stdio -----------------------------------------------------------------

def test_each_host_has_its_own_stdin(on_init_daemon: IsolatedDaemon) -> None:
    # stdin-setter's on_init() made its fd 0 non-blocking; with the zygote's
    # /dev/null shared by every host, every other tenant saw it.
    assert outcome(on_init_daemon, "/stdin", "stdin-setter") == "True"
    assert outcome(on_init_daemon, "/stdin", "stdin-checker") == "False"


def test_stdio_flags_are_the_requests_own(isolated: IsolatedDaemon) -> None:
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(attack, isolated, "/stdio/set-nonblocking?2")
        time.sleep(0.7)
        concurrent = outcome(isolated, "/stdio/flags")
        assert holder.result() == (200, "ok [true, true, true]")
    assert concurrent == "ok [false, false, false]"
    assert outcome(isolated, "/stdio/flags") == "ok [false, false, false]"


def test_the_stdio_pipe_size_cannot_be_changed(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/stdio/pipe-size") == EPERM


# ---- locks and address families --------------------------------------------

def test_flock_on_a_file_every_tenant_sees_is_denied(isolated: IsolatedDaemon) -> None:
    assert outcome(isolated, "/lock/flock-usr") == EPERM


@pytest.mark.parametrize("tenant", ["attacker", "looper"])
def test_vsock_is_denied_in_a_request(isolated: IsolatedDaemon, tenant: str) -> None:
    assert outcome(isolated, "/net/vsock", tenant) == EPERM


def test_vsock_is_denied_in_on_init(on_init_daemon: IsolatedDaemon) -> None:
    assert outcome(on_init_daemon, "/", "vsock") == EPERM


# ---- response headers -------------------------------------------------------

@pytest.mark.parametrize("path", ["/protocol/header-ctl-01", "/protocol/header-ctl-7f",
                                  "/protocol/header-ctl-1f", "/protocol/header-name-space"])
def test_a_header_with_a_control_byte_is_a_502(isolated: IsolatedDaemon, path: str) -> None:
    status, text = attack(isolated, path)
    assert status == 502 and "invalid response" in text, (status, text)


def test_a_tab_in_a_header_value_is_kept(isolated: IsolatedDaemon) -> None:
    reply = isolated.get("attacker.localhost", "/protocol/header-tab-ok")
    assert reply.status == 200 and reply.headers["X-Good"] == "a\tb"

