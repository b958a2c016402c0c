"""Program versions and fingerprints, including files a tenant might plant."""
from __future__ import annotations

import os
from pathlib import Path

from mayflyd.supervisor.program_files import program_files, program_fingerprint, program_version


def test_version_follows_contents_not_mtime(tmp_path: Path) -> None:
    program = tmp_path / "p.py"
    program.write_text("A = 1\n")
    first, print_one = program_version(program), program_fingerprint(program)
    os.utime(program, (1, 1))
    assert program_version(program) == first and program_fingerprint(program) != print_one
    program.write_text("A = 2\n")
    assert program_version(program) != first and len(first) == 12


def test_package_directory(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__pycache__").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "data.txt").write_text("x")
    (pkg / "__pycache__" / "x.pyc").write_bytes(b"")
    assert [p.relative_to(pkg).as_posix() for p in program_files(pkg)] == ["__init__.py", "sub/data.txt"]
    before = program_version(pkg)
    (pkg / "sub" / "data.txt").write_text("y")
    assert program_version(pkg) != before


def test_planted_links_and_fifos_are_not_read(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "zero").symlink_to("/dev/zero")       # would read forever
    os.mkfifo(pkg / "fifo")                       # would block forever
    (pkg / "secret").symlink_to("/etc/shadow")   # would be read as root
    version = program_version(pkg)                # returns at all: that is the test
    assert len(version) == 12


def test_a_root_covers_its_files_but_not_its_packages(tmp_path: Path) -> None:
    root = tmp_path / "site"
    (root / "deps" / "greet").mkdir(parents=True)
    (root / "app.py").write_text("import helpers\n")
    (root / "helpers.py").write_text("NAME = 1\n")
    (root / "deps" / "greet" / "__init__.py").write_text("")
    assert [p.name for p in program_files(root, root / "deps")] == ["app.py", "helpers.py"]
    before = program_version(root, root / "deps")
    (root / "deps" / "greet" / "__init__.py").write_text("changed = True\n")
    assert program_version(root, root / "deps") == before
    (root / "helpers.py").write_text("NAME = 2\n")
    assert program_version(root, root / "deps") != before
