"""Tiny pure-Python wheels, written directly and installed with the tests'
own Python by `pip install --target`: a tenant's `packages`, offline and
with no build backend."""
from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

__all__ = ["build_wheel", "install_greet", "pip_install_target"]


def build_wheel(out: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A wheel of `files` (path in the wheel -> source) with its dist-info."""
    dist = f"{name}-{version}.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: mayflyd-tests\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    path = out / f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{member},sha256={digest},{len(data)}")
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}/RECORD", "\n".join([*record, f"{dist}/RECORD,,"]) + "\n")
    return path


def pip_install_target(target: Path, wheel: Path) -> None:
    """`pip install --target` with the daemon's Python, as docs/config.md says."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                    "--disable-pip-version-check", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=120)


def install_greet(target: Path, version: str) -> None:
    """A package `greet` whose __version__ is `version`, installed into target."""
    wheel = build_wheel(target.parent, "greet", version, {"greet/__init__.py": f"__version__ = {version!r}\n"})
    pip_install_target(target, wheel)
