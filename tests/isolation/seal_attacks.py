"""A hostile program against the host's seal: its on_init() leaves code for
the host to run after sealing (at-fork callbacks, a signal handler with a
timer to fire it, atexit, a finalizer, a replaced engine) and tries to make
the host dumpable. Each request reports what it finds; in a sealed host
none of it ran (tests/isolation/test_host_seal.py)."""
import atexit
import ctypes
import gc
import json
import os
import signal
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_DUMPABLE = 4
RAN = {"before": 0, "parent": 0, "child": 0, "alarm": 0, "engine": 0, "child_fork": ""}


class Finalizer:
    def __del__(self):
        os.write(2, b"SEAL-ATTACK: finalizer ran in the host\n")


LEFT_FOR_SHUTDOWN = Finalizer()


def count(what):
    def callback(*args):
        RAN[what] += 1
    return callback


def replace_engine():
    """Any function the host looks up after on_init() is the program's to replace."""
    from mayflyd import _mayfly
    for name in ("serve_fork", "serve_reset"):
        original = getattr(_mayfly, name, None)
        if original is None:
            continue

        def replaced(*args, _original=original, **kwargs):
            RAN["engine"] += 1
            return _original(*args, **kwargs)
        setattr(_mayfly, name, replaced)


def prctl_dumpable():
    ctypes.set_errno(0)
    if libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) != 0:
        return os.strerror(ctypes.get_errno())
    return "ok"


def fork_in_child():
    """after_in_child= runs in the sandbox; in a reset worker before the
    request filter: a process left there would hold the worker's channels."""
    ctypes.set_errno(0)
    pid = libc.fork()  # not os.fork(): that would run the at-fork callbacks again
    if pid == 0:
        libc._exit(0)
    RAN["child_fork"] = "ok" if pid > 0 else os.strerror(ctypes.get_errno())


INIT = {}
HOST_AUDITED = set()


def audit(event, args):
    """An audit hook cannot be removed: it sees what Python the host runs."""
    if os.getpid() == INIT["host_pid"] and len(HOST_AUDITED) < 100:
        HOST_AUDITED.add(event)


def on_init():
    os.register_at_fork(before=count("before"), after_in_parent=count("parent"), after_in_child=count("child"))
    os.register_at_fork(after_in_child=fork_in_child)
    signal.signal(signal.SIGALRM, count("alarm"))
    signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)
    atexit.register(os.write, 2, b"SEAL-ATTACK: atexit ran in the host\n")
    replace_engine()
    INIT["dumpable"] = prctl_dumpable()
    INIT["host_pid"] = os.getpid()
    sys.addaudithook(audit)  # last: from here on, the host's own code


def host_memory():
    try:
        with open("/proc/1/mem", "rb"):
            return "ok"
    except OSError as exc:
        return type(exc).__name__


def on_client_request(request):
    if request.path == "/ran":
        return json.dumps({**RAN, "gc": gc.isenabled()})
    if request.path == "/audit":
        return json.dumps(sorted(HOST_AUDITED))
    if request.path == "/alarm":
        # The program's handler is back in the sandbox: a timer of its own fires it.
        before = RAN["alarm"]
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        time.sleep(0.2)
        return json.dumps({"fired": RAN["alarm"] - before})
    if request.path == "/dumpable":
        return json.dumps({"on_init": INIT["dumpable"], "request": prctl_dumpable(), "host_memory": host_memory()})
    return "?"
