"""A tenant's own packages (`packages`) and code directory (`root`) through
the daemon, under both engines and with fresh hosts: two tenants import two versions of one
package, each its own; a program imports its sibling; both stay read-only."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mayflyd.cli.admin_client import admin_request
from tests.daemon_harness import (
    HOST_VARIANTS,
    Daemon,
    DaemonProcess,
    free_port,
    host_variant,
    skip_without_reset_engine,
)
from tests.integration.conftest import limits, needs_root, serving
from tests.wheels import build_wheel, install_greet, pip_install_target

pytestmark = needs_root

TENANT_UID = 201777  # owns its packages directory outside: only the mount is read-only

# What every tenant answers: which greet it sees, its sibling, the daemon's
# standard library, and what writing into its packages and root does.
REPORT = '''
import errno
import json
import os

import greet
import helpers
import itsdangerous


def _write_error(directory):
    try:
        with open(os.path.join(directory, "written-by-tenant"), "w") as f:
            f.write("x")
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "written"


def report():
    return json.dumps({
        "greet": greet.__version__, "helper": helpers.NAME, "json": json.dumps([1]),
        "itsdangerous": getattr(itsdangerous, "TENANTS_OWN", "the daemon's"),
        "packages_write": _write_error(os.path.dirname(os.path.dirname(greet.__file__))),
        "root_write": _write_error(os.path.dirname(helpers.__file__)),
    })
'''

PROGRAM = '''
from report import report


def on_client_request(request):
    return 200, {"Content-Type": "application/json"}, report()
'''

WSGI_APP = '''
from report import report


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json")])
    return [report().encode()]
'''


SOLO = '''
import json
import os

import greet


def on_client_request(request):
    here = os.path.dirname(__file__)
    return json.dumps({"greet": greet.__version__, "beside": sorted(os.listdir(here))})
'''


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deps1/ with greet 1.0 and deps2/ with greet 2.0, installed by pip;
    deps2 also has an itsdangerous of its own (Flask's, in the daemon's
    site-packages too)."""
    where = tmp_path_factory.mktemp("packages")
    for version in ("1.0", "2.0"):
        install_greet(where / f"deps{version[0]}", version)
    own = build_wheel(where, "itsdangerous", "0.1", {"itsdangerous/__init__.py": "TENANTS_OWN = 'deps2'\n"})
    pip_install_target(where / "deps2", own)
    for top, dirs, names in os.walk(where / "deps1"):
        for name in dirs + names:
            os.chown(os.path.join(top, name), TENANT_UID, TENANT_UID)
    os.chown(where / "deps1", TENANT_UID, TENANT_UID)
    return where


@pytest.fixture(scope="module", params=HOST_VARIANTS)
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
           packages: Path) -> Iterator[Daemon]:
    engine, zygote = host_variant(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("mayflyd-packages")
    tenants = [
        # The harness writes the sources into programs/: the root of both.
        {"name": "one", "hosts": ["one.localhost"], "root": "programs", "program": "program.py",
         "packages": str(packages / "deps1"), "uid": TENANT_UID, "engine": engine, "limits": limits()},
        {"name": "two", "hosts": ["two.localhost"], "root": "programs", "app": "wsgi_app:application",
         "packages": str(packages / "deps2"), "engine": engine, "limits": limits()},
    ]
    tenants += [
        # A package app inside root, named like the standard library's `site`.
        {"name": "site", "hosts": ["site.localhost"], "root": "programs", "app": "site.wsgi:application",
         "packages": str(packages / "deps2"), "engine": engine, "limits": limits()},
        # A one-file program without root: it sees its file and its packages.
        {"name": "solo", "hosts": ["solo.localhost"], "program": "programs/solo.py",
         "packages": str(packages / "deps1"), "engine": engine, "limits": limits()},
    ]
    sources = {"report.py": REPORT, "helpers.py": "NAME = 'sibling'\n", "program.py": PROGRAM,
               "wsgi_app.py": WSGI_APP, "solo.py": SOLO}
    (workdir / "programs" / "site").mkdir(parents=True)
    (workdir / "programs" / "site" / "__init__.py").write_text("")
    (workdir / "programs" / "site" / "wsgi.py").write_text(WSGI_APP)
    d = Daemon(workdir, tenants, sources, zygote=zygote)
    os.chown(workdir / "programs", TENANT_UID, TENANT_UID)
    yield from serving(d, engine)


def test_each_tenant_imports_its_own_version_and_its_siblings(daemon: Daemon) -> None:
    for host, version in (("one.localhost", "1.0"), ("two.localhost", "2.0")):
        for _ in range(2):
            reply = daemon.get(host)
            assert reply.status == 200, (reply.text, daemon.log()[-3000:])
            seen = json.loads(reply.body)
            assert (seen["greet"], seen["helper"], seen["json"]) == (version, "sibling", "[1]")
    # A tenant's package comes before the daemon's of the same name; without one, the daemon's.
    assert json.loads(daemon.get("two.localhost").body)["itsdangerous"] == "deps2"
    assert json.loads(daemon.get("one.localhost").body)["itsdangerous"] == "the daemon's"


def test_a_package_app_in_root_and_a_one_file_program_with_packages(daemon: Daemon) -> None:
    seen = json.loads(daemon.get("site.localhost").body)
    assert (seen["greet"], seen["helper"]) == ("2.0", "sibling")
    seen = json.loads(daemon.get("solo.localhost").body)
    # Without root, the program's neighbours stay out of its sandbox, as before.
    assert (seen["greet"], seen["beside"]) == ("1.0", ["solo.py"])


def test_packages_and_root_are_read_only(daemon: Daemon) -> None:
    seen = json.loads(daemon.get("one.localhost").body)
    # The tenant's uid owns both outside the sandbox: only the mount says no.
    assert (seen["packages_write"], seen["root_write"]) == ("EROFS", "EROFS")
    assert not (daemon.workdir / "programs" / "written-by-tenant").exists()


def test_a_changed_sibling_in_root_reloads_the_tenant(daemon: Daemon) -> None:
    helpers = daemon.workdir / "programs" / "helpers.py"
    helpers.write_text("NAME = 'changed'\n")
    try:
        daemon.wait_for(lambda: json.loads(daemon.get("one.localhost").body)["helper"] == "changed",
                        what="the reload after helpers.py changed")
    finally:
        helpers.write_text("NAME = 'sibling'\n")
        daemon.wait_for(lambda: all(json.loads(daemon.get(host).body)["helper"] == "sibling"
                                    for host in ("one.localhost", "two.localhost")), what="the reload back")


def test_a_missing_packages_directory_is_refused_and_the_others_serve(daemon: Daemon) -> None:
    config = daemon.config_path.read_text()
    tenants = yaml.safe_load(config)["tenants"]
    daemon.write_config([*tenants, {"name": "three", "hosts": ["three.localhost"], "root": "programs",
                                    "program": "program.py", "packages": str(daemon.workdir / "nowhere")}])
    try:
        code, body = admin_request(daemon.admin_socket, "POST", "/reload")
        assert code != 200
        assert f"packages directory '{daemon.workdir / 'nowhere'}' does not exist" in body["error"], body
        assert json.loads(daemon.get("one.localhost").body)["greet"] == "1.0"
        assert json.loads(daemon.get("two.localhost").body)["greet"] == "2.0"
    finally:
        daemon.config_path.write_text(config)


def test_mayflyd_run_with_root_and_packages(packages: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    for name, source in (("report.py", REPORT), ("helpers.py", "NAME = 'sibling'\n"), ("program.py", PROGRAM)):
        (site / name).write_text(source)
    runner = DaemonProcess(free_port(), tmp_path / "log")
    runner.spawn(["run", "program.py", "--root", str(site), "--packages", str(packages / "deps2"),
                  "--listen", f"127.0.0.1:{runner.port}"])
    try:
        reply = runner.request("GET", "/")
        assert reply.status == 200, runner.log()[-2000:]
        assert json.loads(reply.body)["greet"] == "2.0" and json.loads(reply.body)["helper"] == "sibling"
    finally:
        assert runner.stop() == 0


def test_check_refuses_packages_of_another_python(tmp_path: Path) -> None:
    other = f"3.{99 if sys.version_info[1] != 99 else 98}"
    deps = tmp_path / "deps"
    (deps / "fast").mkdir(parents=True)
    (deps / "fast" / f"_fast.cpython-{other.replace('.', '')}-x86_64-linux-gnu.so").write_bytes(b"")
    (tmp_path / "app.py").write_text("def on_client_request(request):\n    return 'hi'\n")
    (tmp_path / "mayflyd.yaml").write_text("tenants:\n  - {name: a, default: true, program: app.py, "
                                           "packages: deps}\n")
    check = subprocess.run([sys.executable, "-m", "mayflyd", "check", str(tmp_path / "mayflyd.yaml")],
                           capture_output=True, text=True, timeout=60)
    running = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert check.returncode == 1
    assert f"were installed for Python {other}" in check.stderr, check.stderr
    assert f"the daemon runs Python {running}" in check.stderr, check.stderr
