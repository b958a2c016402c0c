"""Tenant code and the sealed host: after on_init() the host runs none of
the program's code (at-fork callbacks, signal handlers, atexit, finalizers,
functions it replaced), stays non-dumpable, and refuses to load with a file
no request could have as its own (/proc/self/mem). Under every engine and
host variant; the programs are seal_attacks.py and seal_procmem.py."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import HOST_VARIANTS, IsolatedDaemon, host_variant, skip_without_reset_engine

HERE = Path(__file__).resolve().parent
PROGRAMS = ("seal_attacks.py", "seal_procmem.py")
IN_HOST = ("SEAL-ATTACK: atexit ran in the host", "SEAL-ATTACK: finalizer ran in the host")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the escape suite runs as root, in namespaces")


@pytest.fixture(scope="module", params=HOST_VARIANTS)
def sealed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedDaemon]:
    engine, zygote = host_variant(request.param)
    skip_without_reset_engine(engine)
    tenants = [{"name": "sealed", "hosts": ["sealed.localhost"], "program": "programs/seal_attacks.py",
                "engine": engine},
               {"name": "procmem", "hosts": ["procmem.localhost"], "program": "programs/seal_procmem.py",
                "engine": engine}]
    daemon = IsolatedDaemon(tmp_path_factory.mktemp("seal"), tenants,
                            {name: (HERE / name).read_text() for name in PROGRAMS}, zygote=zygote)
    daemon.engine = engine
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        assert code == 0, daemon.log()[-5000:]
        # The host has stopped: had it run Python's finalisation, the
        # program's atexit handler and finalizer would have written here.
        log = daemon.log()
        for line in IN_HOST:
            assert line not in log


def ran(daemon: IsolatedDaemon) -> dict[str, int]:
    reply = daemon.get("sealed.localhost", "/ran")
    assert reply.status == 200, reply.text + daemon.log()[-3000:]
    result: dict[str, int] = json.loads(reply.text)
    return result


def test_at_fork_callbacks_run_in_the_sandbox_only(sealed: IsolatedDaemon) -> None:
    for _ in range(3):
        seen = ran(sealed)
        # before= and after_in_parent= would run in the host, before and
        # after each fork; after_in_child= runs once, in the sandbox (a reset
        # worker's snapshot is taken after it).
        assert (seen["before"], seen["parent"], seen["child"]) == (0, 0, 1), seen
        assert seen["gc"] is True  # off in the host, back on in the sandbox
        # Under the request filter (fork), or a filter of its own (reset worker).
        assert seen["child_fork"] == "Operation not permitted", seen


def test_the_programs_signal_handler_never_runs_in_the_host(sealed: IsolatedDaemon) -> None:
    # on_init() left a 5 ms timer and a SIGALRM handler: between these
    # requests the host would run the handler a hundred times.
    first = ran(sealed)["alarm"]
    time.sleep(0.5)
    assert ran(sealed)["alarm"] == first


def test_the_programs_signal_handler_is_back_in_the_sandbox(sealed: IsolatedDaemon) -> None:
    reply = sealed.get("sealed.localhost", "/alarm")
    assert reply.status == 200, reply.text
    assert json.loads(reply.text) == {"fired": 1}


def test_a_replaced_engine_is_never_called(sealed: IsolatedDaemon) -> None:
    assert ran(sealed)["engine"] == 0


def test_the_host_runs_no_audited_python_after_on_init(sealed: IsolatedDaemon) -> None:
    reply = sealed.get("sealed.localhost", "/audit")
    assert reply.status == 200, reply.text
    # What is left is the loading's own, before the seal (no request channel
    # exists yet): the shared-memory check reading /proc/self/smaps and
    # /proc/self/fd, and listing the objects to make immortal (3.12+).
    assert set(json.loads(reply.text)) <= {"open", "os.listdir", "gc.get_objects"}, reply.text


def test_hosts_and_sandboxes_stay_non_dumpable(sealed: IsolatedDaemon) -> None:
    reply = sealed.get("sealed.localhost", "/dumpable")
    assert reply.status == 200, reply.text
    # The host is pid 1 of the tenant's namespace; hidden when not dumpable.
    assert json.loads(reply.text) == {"on_init": "ok", "request": "Operation not permitted",
                                      "host_memory": "FileNotFoundError"}


def test_a_file_no_request_can_own_fails_the_load(sealed: IsolatedDaemon) -> None:
    reply = sealed.get("procmem.localhost", "/")
    assert reply.status == 503, reply.text
    log = sealed.log()
    assert ", in /proc: every request would share it" in log, log[-3000:]
    assert "close it before on_init() returns" in log, log[-3000:]
