"""Keeps a file of /proc open past on_init(): its own /proc/self/mem if it
can (made dumpable first), else /proc/self/stat. A request cannot reopen
either as its own (they name the host); shared, a request would write the
host's memory through the first. The seal must refuse to load it."""
import ctypes
import os

PR_SET_DUMPABLE = 4
KEPT = None


def on_init():
    global KEPT
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        KEPT = os.open("/proc/self/mem", os.O_RDWR)
    except OSError:
        KEPT = os.open("/proc/self/stat", os.O_RDONLY)


def on_client_request(request):
    return "loaded"
