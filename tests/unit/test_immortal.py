"""mayflyd._mayfly.immortalize_tracked (csrc/python/py_immortal.c): on
CPython 3.12+ every object alive at the seal is made immortal, so requests
never write its reference count; before 3.12 it does nothing. Each case runs
in a child interpreter: the call would make pytest's own objects immortal."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent('''
    import gc, json, sys
    from mayflyd import _mayfly

    class Noisy:
        def __del__(self):
            print("finalized", flush=True)

    def handler():
        return 2.5 * 2  # a constant only the code object holds

    table = {"key": ["a", "list", 1 << 70]}
    noisy = Noisy()
    IMMORTAL = 1 << 31
    gc.collect()
    made = _mayfly.immortalize_tracked()
    gc.freeze()
    after = []
    print(json.dumps({
        "made": made,
        "table": sys.getrefcount(table) >= IMMORTAL,
        "nested": sys.getrefcount(table["key"][2]) >= IMMORTAL,
        "const": sys.getrefcount(handler.__code__.co_consts[-1]) >= IMMORTAL,
        "type": sys.getrefcount(Noisy) >= IMMORTAL,
        "new": sys.getrefcount(after) >= IMMORTAL,
    }), flush=True)
    del noisy  # the last reference: an immortal object is never freed
    print("done", flush=True)
''')


def run_child() -> list[str]:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="immortal objects are CPython 3.12+")
def test_objects_alive_at_the_seal_become_immortal_and_later_ones_do_not() -> None:
    import json
    lines = run_child()
    found = json.loads(lines[0])
    assert found["made"] > 1000
    assert found["table"] and found["nested"] and found["const"] and found["type"]
    assert not found["new"]
    # Documented: a finalizer of an object made before the seal never runs.
    assert lines[1:] == ["done"]


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.11 has no immortal objects")
def test_before_3_12_it_does_nothing() -> None:
    import json
    lines = run_child()
    found = json.loads(lines[0])
    assert found["made"] == 0 and not found["table"]
    assert lines[1:] == ["finalized", "done"]
