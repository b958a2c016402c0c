"""Tests of a tenant's `root` and `packages`: where its code is looked for,
which Python its packages were installed for, and its sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mayflyd.cli.main import main
from mayflyd.config import ConfigError, parse_config
from mayflyd.config.packages import packages_version_problem
from mayflyd.host.program import ProgramError
from mayflyd.host.sandbox_host import HostSpec, tenant_sys_path

RUNNING = f"{sys.version_info[0]}.{sys.version_info[1]}"
OTHER_MINOR = 99 if sys.version_info[1] != 99 else 98
OTHER = f"3.{OTHER_MINOR}"


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A config directory: prog.py, site/ (app.py, helpers.py, web/wsgi.py), deps/."""
    (tmp_path / "prog.py").write_text("")
    site = tmp_path / "site"
    (site / "web").mkdir(parents=True)
    for name in ("app.py", "helpers.py", "web/__init__.py", "web/wsgi.py"):
        (site / name).write_text("")
    (tmp_path / "deps" / "greet").mkdir(parents=True)
    (tmp_path / "deps" / "greet" / "__init__.py").write_text("__version__ = '1.0'\n")
    return tmp_path


def tenant(extra: str) -> str:
    return "tenants:\n  - name: a\n    hosts: [a.example]\n" + "".join(f"    {line}\n" for line in extra.split("; "))


def issues(text: str, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="t.yaml", base_dir=base_dir)
    return [f"{issue.key}: {issue.message}" for issue in caught.value.issues]


def test_program_and_app_are_looked_for_in_root(base: Path) -> None:
    text = ("tenants:\n  - {name: a, hosts: [a], root: site, program: app.py, packages: deps}\n"
            "  - {name: b, hosts: [b], root: site, app: 'web.wsgi:application'}\n"
            "  - {name: c, hosts: [c], program: prog.py}\n")
    a, b, c = parse_config(text, source="t.yaml", base_dir=base).tenants
    assert (a.root, a.program, a.packages) == (base / "site", base / "site" / "app.py", base / "deps")
    assert (b.root, b.program, b.app) == (base / "site", base / "site" / "web", "web.wsgi:application")
    # Without root, nothing changes: the program alone is the tenant's code.
    assert (c.root, c.packages, c.code) == (None, None, base / "prog.py")
    assert a.code == b.code == base / "site"


@pytest.mark.parametrize(("extra", "message"), [
    ("root: nowhere; program: app.py", "tenants[0].root: root directory 'nowhere' does not exist"),
    ("root: prog.py; program: app.py", "tenants[0].root: root 'prog.py' is not a directory"),
    ("root: site; program: ../prog.py", "tenants[0].program: program '../prog.py' is outside root"),
    ("root: site; program: prog.py", "tenants[0].program: program 'prog.py' does not exist"),
    ("root: site; app: 'prog:app'", "tenants[0].app: module 'prog' of app 'prog:app' does not exist"),
    ("program: prog.py; packages: nowhere", "tenants[0].packages: packages directory 'nowhere' does not exist"),
    ("program: prog.py; packages: prog.py", "tenants[0].packages: packages 'prog.py' is not a directory"),
], ids=["root-missing", "root-file", "program-outside", "program-not-in-root", "app-not-in-root",
        "packages-missing", "packages-file"])
def test_bad_root_or_packages(base: Path, extra: str, message: str) -> None:
    found = issues(tenant(extra), base)
    assert len(found) == 1 and found[0].startswith(message), found


def test_a_link_out_of_root_is_outside_it(base: Path) -> None:
    (base / "site" / "out.py").symlink_to(base / "prog.py")
    found = issues(tenant("root: site; program: out.py"), base)
    assert found == [f"tenants[0].program: program 'out.py' is outside root {str(base / 'site')!r}"
                     f" (it resolves to {str(base / 'prog.py')!r})"]


def test_packages_of_this_python_pass(base: Path) -> None:
    deps = base / "deps"
    tag = f"{sys.version_info[0]}{sys.version_info[1]}"
    (deps / "greet" / f"_speedups.cpython-{tag}-x86_64-linux-gnu.so").write_bytes(b"")
    (deps / "greet" / "_abi3.abi3.so").write_bytes(b"")
    (deps / "greet" / "__pycache__").mkdir()
    (deps / "greet" / "__pycache__" / f"__init__.cpython-{tag}.pyc").write_bytes(b"")
    (deps / "greet" / "__pycache__" / "__init__.cpython-39.pyc").write_bytes(b"")  # another Python ran it too
    wheel = deps / "greet-1.0.dist-info"
    wheel.mkdir()
    (wheel / "WHEEL").write_text(f"Wheel-Version: 1.0\nTag: cp{tag}-cp{tag}-manylinux_2_17_x86_64\n"
                                 "Tag: cp38-abi3-linux_x86_64\nTag: py3-none-any\n")
    assert packages_version_problem(deps) is None


@pytest.mark.parametrize(("path", "content", "evidence"), [
    ("greet/_speedups.cpython-3{minor}-x86_64-linux-gnu.so", "",
     "compiled module '_speedups.cpython-3{minor}-x86_64-linux-gnu.so'"),
    ("greet-1.0.dist-info/WHEEL", "Tag: cp3{minor}-cp3{minor}-manylinux_2_17_x86_64\n",
     "greet-1.0.dist-info is tagged cp3{minor}-cp3{minor}-manylinux_2_17_x86_64"),
    ("greet/__pycache__/__init__.cpython-3{minor}.pyc", "", "bytecode '__init__.cpython-3{minor}.pyc'"),
], ids=["extension", "wheel-tag", "bytecode"])
def test_packages_of_another_python_are_refused(base: Path, path: str, content: str, evidence: str) -> None:
    file = base / "deps" / path.format(minor=OTHER_MINOR)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(content.format(minor=OTHER_MINOR))
    problem = packages_version_problem(base / "deps")
    assert problem is not None
    assert problem.startswith(f"packages {str(base / 'deps')!r} were installed for Python {OTHER}"
                              f" ({evidence.format(minor=OTHER_MINOR)}), but the daemon runs Python {RUNNING}")
    assert issues(tenant("program: prog.py; packages: deps"), base) == [f"tenants[0].packages: {problem}"]


def test_a_venv_of_another_python_is_refused(base: Path) -> None:
    site = base / "venv" / "lib" / f"python{OTHER}" / "site-packages"
    site.mkdir(parents=True)
    problem = packages_version_problem(site)
    assert problem is not None and f"Python {OTHER} (its path has 'python{OTHER}')" in problem
    assert packages_version_problem(site, running=(3, OTHER_MINOR)) is None


def test_check_names_both_versions(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (base / "deps" / "greet" / f"_c.cpython-3{OTHER_MINOR}-x86_64-linux-gnu.so").write_bytes(b"")
    (base / "m.yaml").write_text(tenant("program: prog.py; packages: deps"))
    assert main(["check", str(base / "m.yaml")]) == 1
    err = capsys.readouterr().err
    assert f"were installed for Python {OTHER}" in err and f"the daemon runs Python {RUNNING}" in err


def spec(**fields: str) -> HostSpec:
    return HostSpec(tenant="a", program="/p.py", ctrl_fd=-1, parent_pid=1, uid=1, gid=1, mode="none",
                    cgroup_version=0, cgroup_base="", cgroup_group="", network="none", readonly_paths=[],
                    loading_filter="", request_filter="", pids=2, request_cpu_ms=1, request_memory=1, nofile=1,
                    **fields)


def test_sys_path_root_first_then_packages(base: Path) -> None:
    # The zygote's bootstrap puts the daemon's site-packages first: the tenant's go before it.
    path = ["/venv/lib/python3.x/site-packages", "/usr/lib/python3.x", "/venv/lib/python3.x/site-packages"]
    tenant_sys_path(spec(root=str(base / "site"), packages=str(base / "deps")), path)
    assert path == [str(base / "site"), str(base / "deps"), "/venv/lib/python3.x/site-packages",
                    "/usr/lib/python3.x", "/venv/lib/python3.x/site-packages"]
    unchanged = ["/usr/lib/python3.x"]
    tenant_sys_path(spec(), unchanged)
    assert unchanged == ["/usr/lib/python3.x"]


def test_sys_path_of_a_missing_packages_dir_fails_the_load(base: Path) -> None:
    with pytest.raises(ProgramError, match="the tenant's packages directory '/gone' does not exist"):
        tenant_sys_path(spec(packages="/gone"), [])


def test_spec_round_trips_root_and_packages() -> None:
    one = spec(root="/srv/site", packages="/srv/deps")
    assert HostSpec.from_json(one.to_json()) == one
