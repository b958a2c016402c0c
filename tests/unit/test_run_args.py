"""`mayflyd run`'s options as the tenant they describe (cli/main.py); the
daemon serving them is tests/integration/test_cli.py's."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mayflyd.cli.main import _run_tenant, _RunError


def _args(program: str | None = None, *, app: str | None = None, interface: str | None = None,
          engine: str | None = None, env: tuple[str, ...] = (), root: str | None = None,
          packages: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(program=program, app=app, interface=interface, engine=engine, env=list(env),
                              root=root, packages=packages)


def test_a_program_as_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run_tenant(_args("My Prog.py")) == (
        {"name": "my-prog", "default": True, "program": str(tmp_path / "My Prog.py")}, tmp_path)


def test_root_and_packages_are_the_tenants_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tenant, _ = _run_tenant(_args("main.py", root="code", packages="deps"))
    # Inside the root, as the config's program is; the directories absolute.
    assert (tenant["program"], tenant["root"], tenant["packages"]) == (
        "main.py", str(tmp_path / "code"), str(tmp_path / "deps"))


def test_engine_and_env_are_the_tenants_keys(tmp_path: Path) -> None:
    tenant, _ = _run_tenant(_args(str(tmp_path / "p.py"), engine="reset", env=("A=1", "B=x=y", "A=2", "E=")))
    assert tenant["engine"] == "reset" and tenant["env"] == {"A": "2", "B": "x=y", "E": ""}


@pytest.mark.parametrize("where", [None, ".", "site", "hello.py"])
def test_an_app_from_the_directory_holding_its_module(where: str | None, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "hello.py").write_text("")
    monkeypatch.chdir(tmp_path)
    app = "hello:app" if where == "hello.py" else "site.wsgi:application"
    tenant, base = _run_tenant(_args(where, app=app, interface="wsgi"))
    assert base == tmp_path
    assert tenant == {"name": app.partition(".")[0].partition(":")[0], "default": True, "app": app,
                      "interface": "wsgi"}


@pytest.mark.parametrize(("args", "message"), [
    (_args(), "give the program"),
    (_args("p.py", interface="wsgi"), "--interface applies only to an --app"),
    (_args("p.py", env=("NOVALUE",)), "--env NOVALUE: expected KEY=VALUE"),
])
def test_what_makes_no_tenant(args: argparse.Namespace, message: str) -> None:
    with pytest.raises(_RunError, match=message):
        _run_tenant(args)
