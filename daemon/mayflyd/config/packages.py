"""Which Python a tenant's `packages` directory was installed for.

Compiled modules and the bytecode pip writes at install name the Python
that installed them (`x.cpython-311-x86_64-linux-gnu.so`,
`x.cpython-311.pyc`), a wheel's WHEEL file names the tags it was built
for (`cp311-cp311-manylinux...`), and a venv's site-packages lies under
`lib/python3.11/`. A directory installed for another Python than the
daemon's may import and then fail on its first compiled module, or carry
dependencies resolved for the other version: refused when the config is
read, not at a tenant's first request.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Final

__all__ = ["packages_version_problem"]

# A directory bigger than this is looked at only this far: the check runs
# at every config load, and a venv of a large app holds tens of thousands.
_MAX_ENTRIES: Final = 20_000

_EXTENSION: Final = re.compile(r"\.cpython-3(\d+)[a-z]*(-[^.]*)?\.so$")
_BYTECODE: Final = re.compile(r"\.cpython-3(\d+)\.pyc$")
_VENV_PART: Final = re.compile(r"python3\.(\d+)")
# A wheel tag's Python and ABI: cp311-cp311 (that version only), cp39-abi3
# (3.9 or later), py3-none (any).
_WHEEL_TAG: Final = re.compile(r"^Tag:\s*(cp3(\d+)-([^-\s]+)-\S+)", re.MULTILINE)


def _version(minor: str) -> str:
    return f"3.{int(minor)}"


def packages_version_problem(packages: Path, running: tuple[int, int] | None = None) -> str | None:
    """Why `packages` does not fit the Python `running` (major, minor; this
    one's by default), naming both versions; None if nothing in it says so."""
    want = f"{running[0]}.{running[1]}" if running else f"{sys.version_info[0]}.{sys.version_info[1]}"
    for part in packages.parts:
        found = _VENV_PART.fullmatch(part)
        if found and _version(found[1]) != want:
            return _mismatch(packages, want, _version(found[1]), f"its path has {part!r}")
    bytecode: dict[str, str] = {}
    seen = 0
    for top, dirs, names in os.walk(packages):
        dirs.sort()
        for name in sorted(names):
            seen += 1
            if (found := _EXTENSION.search(name)) and _version(found[1]) != want:
                return _mismatch(packages, want, _version(found[1]), f"compiled module {name!r}")
            if found := _BYTECODE.search(name):
                bytecode.setdefault(_version(found[1]), name)
            if name == "WHEEL" and top.endswith(".dist-info"):
                problem = _wheel_problem(Path(top) / name, want)
                if problem is not None:
                    return _mismatch(packages, want, problem[0], problem[1])
        if seen >= _MAX_ENTRIES:
            break
    # Bytecode alone is weaker: another Python may have run from the directory
    # later. Only bytecode of other versions, none of this one, counts.
    if bytecode and want not in bytecode:
        other = sorted(bytecode)[0]
        return _mismatch(packages, want, other, f"bytecode {bytecode[other]!r}")
    return None


def _wheel_problem(wheel: Path, want: str) -> tuple[str, str] | None:
    try:
        text = wheel.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None  # an unreadable WHEEL says nothing; the import will speak
    want_minor = int(want.partition(".")[2])
    for found in _WHEEL_TAG.finditer(text):
        minor, abi = int(found[2]), found[3]
        fits = want_minor >= minor if abi in ("abi3", "none") else want_minor == minor
        if not fits:
            return _version(found[2]), f"{wheel.parent.name} is tagged {found[1]}"
    return None


def _mismatch(packages: Path, want: str, other: str, evidence: str) -> str:
    return (f"packages {str(packages)!r} were installed for Python {other} ({evidence}), but the daemon runs"
            f" Python {want}: install them with the daemon's Python, e.g. `python{want} -m pip install"
            f" --target {packages} ...`")
