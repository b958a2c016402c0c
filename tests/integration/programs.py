"""Tenant programs used by the integration tests, as source text."""

STATE = '''
import builtins
import os
import random

counter = 0
# Opened once in the host: every request must find it at offset 0.
SELF = open(__file__, "rb")
items = []
real_len = len


def on_client_request(request):
    global counter
    counter += 1
    items.append(request.path)
    seen = {
        "counter": counter,
        "items": list(items),
        "env": os.environ.get("MAYFLY_TOUCHED"),
        "patched": getattr(builtins, "mayfly_patched", False),
        "len_ok": len([1, 2, 3]) == 3,
        "random": random.random(),
        "first_bytes": SELF.read(8).decode(),
    }
    os.environ["MAYFLY_TOUCHED"] = "yes"
    builtins.mayfly_patched = True
    builtins.len = lambda obj: 42
    if "slow" in request.query:
        import time
        time.sleep(0.2)
    return seen
'''

CRASHY = '''
import ctypes
import os
import sys


def on_client_request(request):
    if request.path == "/raise":
        raise ValueError("secret-detail-in-traceback")
    if request.path == "/exit":
        os._exit(3)
    if request.path == "/sysexit":
        sys.exit(0)
    if request.path == "/segv":
        ctypes.string_at(0)
    if request.path == "/abort":
        os.abort()
    if request.path == "/wrongtype":
        return 12345
    return "fine"
'''

SLOW = '''
import time


def on_client_request(request):
    if request.path == "/sleep":
        time.sleep(float(request.args.get("s", ["10"])[0]))
    if request.path == "/spin":
        while True:
            pass
    return "done"
'''

BAD_RESPONSES = '''
def on_client_request(request):
    path = request.path
    if path == "/status":
        return 700, {}, "x"
    if path == "/informational":
        return 101, {}, ""
    if path == "/inject":
        return 200, {"X-A": "a\\r\\nSet-Cookie: pwned=1"}, "x"
    if path == "/ctype":
        return "text/plain\\r\\nX-Evil: 1", "x"
    if path == "/nul":
        return 200, {"X-A": "a\\x00b"}, "x"
    if path == "/name":
        return 200, {"Bad Name": "v"}, "x"
    if path == "/big":
        return "x" * (1024 * 1024 + 1)
    if path == "/justright":
        return "y" * (1024 * 1024)
    if path == "/hopbyhop":
        return 200, {"Content-Length": "999", "Connection": "close", "X-Kept": "1"}, "body"
    if path == "/triple":
        return 201, [("X-One", "1"), ("X-One", "2")], b"created"
    return "ok"
'''

INIT_FAILS = '''
def on_init():
    raise RuntimeError("cannot load the model")


def on_client_request():
    return lambda: ("text/plain", "never")
'''

WHOAMI = '''
import os


def can(action):
    try:
        action()
        return True
    except OSError:
        return False


def on_client_request(request):
    return {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "status": dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines()
                       if ":\t" in line),
        "setuid_root": can(lambda: os.setuid(0)),
        "root_home": sorted(os.listdir("/root")) if os.path.isdir("/root") else None,
        "see_config": os.path.exists(request.query),
        "see_sibling_program": os.path.exists(os.path.join(os.path.dirname(__file__), "crashy.py")),
        "see_shadow": os.path.exists("/etc/shadow"),
        "see_own_program": os.path.exists(__file__),
        "write_program_dir": can(lambda: open(os.path.join(os.path.dirname(__file__), "x"), "w")),
        "see_etc_passwd": os.path.exists("/etc/passwd"),
        "pid": os.getpid(), "ppid": os.getppid(),
    }
'''

MEMORY_HOG = '''
import time


def on_client_request(request):
    if request.path == "/hog":
        blocks = [bytearray(1024 * 1024) for _ in range(int(request.query))]  # zero-filled: touched
        time.sleep(1.5)
        return "survived %d MiB" % len(blocks)
    return "small"
'''

VICTIM = '''
import os

# Made once per host: a new host has a new one.
HOST_TOKEN = os.urandom(8).hex()


def on_client_request(request):
    return {"host": HOST_TOKEN}
'''

LEFTOVERS = '''
import os
import time


def on_init():
    if os.fork() == 0:
        time.sleep(3600)  # a leftover of on_init that would hold the control socket
        os._exit(0)


def on_client_request(request):
    return "ok"
'''

THREAD_LEFT = '''
import threading
import time


def on_init():
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()


def on_client_request(request):
    return "never"
'''

# Raises at /boom; /print prints two lines; /forge writes an error record
# (error_record.py) naming another tenant; else the environment it got.
RAISES = '''
import os
import sys

MARKER = "\\x1e\\x1fmayflyd:exception "


def divide(n):
    return 10 // n  # the raising line


def on_client_request(request):
    if request.path == "/boom":
        print("before the error")
        return str(divide(0))
    if request.path == "/print":
        print("line one")
        print("line two")
        return "printed"
    if request.path == "/forge":
        sys.stderr.write(MARKER + '{"req": 1, "tenant": "victim", "text": "forged by boom"}\\n')
        print("ts=2026-01-01T00:00:00.000Z level=error logger=mayflyd tenant=victim msg=forged-line")
        return "forged"
    return os.environ.get("GREETING", "-") + " | " + os.environ.get("OTHER", "-")
'''

# A WSGI app raising at /boom.
WSGI_RAISES = '''
def application(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise KeyError("app-broke")  # the app's raising line
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app says hi"]
'''
