"""The mayflyd command line: check, and serve on the bundled default config."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mayflyd import __version__
from mayflyd.cli.main import find_default_config
from mayflyd.config import load_config
from tests.daemon_harness import Daemon, DaemonProcess, free_port
from tests.integration import programs

REPO = Path(__file__).resolve().parents[2]


def mayflyd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mayflyd", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_check_accepts_the_bundled_config() -> None:
    result = mayflyd("check", str(REPO / "config" / "mayflyd.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK, 2 tenant(s): hello, echo" in result.stdout


def test_check_reports_every_error_with_file_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: 127.0.0.1:99999\ntenants:\n  - name: x\n    hosts: [a]\n    program: nope.py\n"
                   "    limits: {memroy: 1MiB}\n")
    result = mayflyd("check", str(bad))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}:1: listen:") for line in lines), lines
    assert any(line.startswith(f"{bad}:5: tenants[0].program:") for line in lines), lines
    assert any(f"{bad}:6: tenants[0].limits.memroy: unknown key 'memroy'" in line and "memory" in line
               for line in lines), lines


def test_check_missing_file() -> None:
    result = mayflyd("check", "/nonexistent/mayflyd.yaml")
    assert result.returncode == 1 and "/nonexistent/mayflyd.yaml" in result.stderr


def test_serve_refuses_a_bad_config_with_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: []\n")
    result = mayflyd("serve", "--config", str(bad))
    assert result.returncode == 1 and f"{bad}:1: tenants" in result.stderr


def test_default_config_is_the_bundled_one() -> None:
    path = find_default_config()
    if path != Path("/etc/mayflyd/mayflyd.yaml"):
        config = load_config(path)
        assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8080)
        hello = config.tenant("hello")
        assert hello.default and hello.hosts == ("hello.localhost",)
        assert hello.program.read_bytes() == (REPO / "config" / "programs" / "hello_pythran.py").read_bytes()
        assert config.tenant("echo").hosts == ("echo.localhost",)


def test_serve_with_the_default_config(tmp_path: Path) -> None:
    """`mayflyd serve` with only --listen: the bundled config, both example tenants."""
    probe = DaemonProcess(free_port(), tmp_path / "log")
    probe.spawn(["serve", "--listen", f"127.0.0.1:{probe.port}"])
    try:
        reply = probe.request("GET", "/")
        assert reply.status == 200 and reply.headers["Content-Type"] == "text/plain"
        assert reply.body.startswith(b"\tthis is a very\n")
        echo = probe.request("POST", "/x?y=1", host="echo.localhost", body=b"hi")
        assert echo.status == 200 and b'"query": "y=1"' in echo.body
        assert 'tenant=hello stream=stdout msg="Hello from Python"' in probe.log()
    finally:
        assert probe.stop() == 0


def test_serve_that_the_machine_refuses_says_why_in_one_line(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # an admin socket there could be replaced by anyone
    config = tmp_path / "mayflyd.yaml"
    config.write_text(f"listen: 127.0.0.1:{free_port()}\nadmin_socket: {shared}/admin.sock\n"
                      f"tenants:\n  - name: a\n    hosts: [a]\n    program: {REPO}/config/programs/hello_pythran.py\n")
    result = mayflyd("serve", "--config", str(config))
    assert result.returncode == 1
    assert f"mayflyd: cannot serve: admin socket directory {shared} is writable by group or others" in result.stderr
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = mayflyd("--version")
    assert (result.returncode, result.stdout) == (0, f"mayflyd {__version__}\n"), result.stderr


def test_status_and_reload_work_while_the_config_is_broken(tmp_path: Path) -> None:
    """The admin socket is read from the config alone: an operator keeps `status`
    exactly when the file is broken, and `reload` says why it refuses it."""
    d = Daemon(tmp_path, [{"name": "a", "hosts": ["a.localhost"], "program": "programs/a.py"}],
               {"a.py": "def on_client_request(request):\n    return 'a'\n"}).start()
    try:
        valid = d.config_path.read_text()
        # Invalid, then not even YAML.
        for broken, why in ((valid + "bogus_key: 1\n", "unknown key 'bogus_key'"), (valid + "  - {name: [\n", "")):
            d.config_path.write_text(broken)
            status = mayflyd("status", "--config", str(d.config_path))
            assert status.returncode == 0, status.stderr
            assert any(line.split()[:2] == ["a", "ready"] for line in status.stdout.splitlines()), status.stdout
            reload = mayflyd("reload", "--config", str(d.config_path))
            assert reload.returncode == 1
            assert "reload failed, the running configuration stays" in reload.stderr, reload.stderr
            assert why in reload.stderr
        assert d.get("a.localhost").text == "a"
    finally:
        assert d.stop() == 0


def _boom_traceback(runner: DaemonProcess, tenant: str) -> list[str]:
    """The lines `mayflyd run` prints for a request to /boom, under its header."""
    reply = runner.request("GET", "/boom")
    assert reply.status == 500
    header = f" error: tenant {tenant}: request {reply.headers['X-Request-Id']} (GET /boom) raised an exception:"
    runner.wait_for(lambda: header in runner.log(), what="the traceback")
    lines = runner.log().splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(header))
    rest = lines[start + 1:]
    end = next((i for i, line in enumerate(rest) if line.startswith("ts=")), len(rest))
    return rest[:end]


def test_run_with_env_and_engine_prints_a_traceback_as_python_does(tmp_path: Path) -> None:
    source = tmp_path / "myprog.py"
    source.write_text(programs.RAISES)
    runner = DaemonProcess(free_port(), tmp_path / "log")
    runner.spawn(["run", str(source), "--listen", f"127.0.0.1:{runner.port}", "--env", "GREETING=hello world",
                  "--env", "OTHER=a=b", "--engine", "fork"])
    try:
        assert runner.request("GET", "/").text == "hello world | a=b"
        traceback = _boom_traceback(runner, "myprog")
        runner.wait_for(lambda: "msg=\"before the error\"" in runner.log(), what="the print, as logfmt")
        assert traceback[0] == "Traceback (most recent call last):"
        assert "    return 10 // n  # the raising line" in traceback
        assert traceback[-1] == "ZeroDivisionError: integer division or modulo by zero"
    finally:
        assert runner.stop() == 0


def test_run_serves_an_app_from_its_directory(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "__init__.py").write_text("")
    (site / "wsgi.py").write_text(programs.WSGI_RAISES)
    runner = DaemonProcess(free_port(), tmp_path / "log")
    runner.spawn(["run", "--app", "site.wsgi:application", str(tmp_path), "--interface", "wsgi",
                  "--listen", f"127.0.0.1:{runner.port}"])
    try:
        assert runner.request("GET", "/").text == "app says hi"
        traceback = _boom_traceback(runner, "site")
        assert '    raise KeyError("app-broke")  # the app\'s raising line' in traceback
        assert traceback[-1] == "KeyError: 'app-broke'"
    finally:
        assert runner.stop() == 0


def test_run_refuses_what_makes_no_tenant_in_one_line() -> None:
    result = mayflyd("run", "--listen", "127.0.0.1:1")
    assert result.returncode == 1 and result.stderr.startswith("mayflyd run: give the program"), result.stderr
