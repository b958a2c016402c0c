"""The mayflyd command: serve, check, run, status, reload."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvloop

import mayflyd
from mayflyd.cli.admin_socket import AdminSocketUnknown, configured_admin_socket, default_admin_socket
from mayflyd.config import (
    Config,
    ConfigError,
    ConfigIssue,
    default_config_path,
    load_config,
    parse_config,
    parse_listen,
)

if TYPE_CHECKING:
    from mayflyd.supervisor.daemon import Daemon

__all__ = ["main", "find_default_config"]

SYSTEM_CONFIG = Path("/etc/mayflyd/mayflyd.yaml")


def find_default_config() -> Path:
    """/etc/mayflyd/mayflyd.yaml if present, else the bundled example config."""
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    installed = default_config_path()
    if installed.exists():
        return installed
    # Running from a source checkout: the repository's config/ directory.
    return Path(__file__).resolve().parents[3] / "config" / "mayflyd.yaml"


def _load(path: Path, listen: tuple[str, int] | None) -> Config:
    """The config file as `serve` runs it, at start and at every reload:
    --listen over the file's, and for a daemon without root, the admin socket
    in its user's runtime directory unless the file names one."""
    config = load_config(path)
    if listen is not None:
        config = dataclasses.replace(config, listen_host=listen[0], listen_port=listen[1])
    if os.geteuid() != 0:
        try:
            named = configured_admin_socket(path)
        except AdminSocketUnknown as exc:  # only if the file changed since load_config read it
            raise ConfigError([ConfigIssue(file=str(path), line=0, key="admin_socket", message=str(exc))]) from exc
        if named is None:
            config = dataclasses.replace(config, admin_socket=default_admin_socket())
    return config


def _serve(args: argparse.Namespace) -> int:
    from mayflyd.supervisor.daemon import Daemon
    from mayflyd.supervisor.logs import setup_logging

    path = Path(args.config) if args.config else find_default_config()
    try:
        listen = parse_listen(args.listen) if args.listen is not None else None
    except ValueError as exc:
        print(f"mayflyd: --listen {args.listen}: {exc}", file=sys.stderr)
        return 1
    load = functools.partial(_load, listen=listen)
    try:
        config = load(path)
    except ConfigError as exc:
        print(f"mayflyd: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    setup_logging(config.log_level, config.log_format)
    return _run_daemon(Daemon(config, config_path=path, load=load))


def _run_daemon(daemon: Daemon) -> int:
    """Run until stopped; what the machine refuses (a port in use, an unsafe
    admin socket directory) ends it with one line, not a traceback."""
    try:
        # libuv's event loop: 6% more requests per second than asyncio's own.
        return uvloop.run(daemon.run())
    except OSError as exc:
        print(f"mayflyd: cannot serve: {exc}", file=sys.stderr)
        return 1


class _RunError(Exception):
    """`mayflyd run`'s arguments do not make a tenant."""


def _app_base(where: Path, app: str) -> Path:
    """The directory holding app's module: `where` itself, or its parent
    when `where` is the module's own file or package."""
    top = app.partition(":")[0].partition(".")[0]
    if where.is_dir() and ((where / top).is_dir() or (where / f"{top}.py").is_file()):
        return where
    if where.name in (top, f"{top}.py"):
        return where.parent
    return where  # the config's check then names what it looked for


def _run_tenant(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The tenant `mayflyd run`'s arguments describe, and the directory its
    relative paths start from."""
    tenant: dict[str, Any] = {"default": True}
    if args.app is not None:
        base = _app_base(Path(args.program or ".").resolve(), args.app)
        tenant["app"] = args.app
        if args.interface is not None:
            tenant["interface"] = args.interface
        stem = args.app.partition(":")[0].partition(".")[0]
    elif args.program is None:
        raise _RunError("give the program (a .py file or a package directory), or --app module:attribute")
    elif args.interface is not None:
        raise _RunError("--interface applies only to an --app")
    else:
        # With --root, the program is looked for inside it, as the config's `program` is.
        program = Path(args.program) if args.root else Path(args.program).resolve()
        base, stem = Path.cwd(), program.stem
        tenant.update(program=str(program))
    tenant.update(_run_directories(args))
    if args.engine is not None:
        tenant["engine"] = args.engine
    env: dict[str, str] = {}
    for item in args.env:
        key, equals, value = item.partition("=")
        if not equals:
            raise _RunError(f"--env {item}: expected KEY=VALUE")
        env[key] = value
    if env:
        tenant["env"] = env
    name = re.sub(r"[^a-z0-9_-]", "-", stem.lower()).strip("-_")[:63] or "program"
    return {"name": name, **tenant}, base


def _run(args: argparse.Namespace) -> int:
    """One program as the default tenant, reloaded when it changes: for tenant authors."""
    from mayflyd.supervisor.daemon import Daemon
    from mayflyd.supervisor.logs import setup_logging

    try:
        host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"mayflyd: --listen {args.listen}: {exc}", file=sys.stderr)
        return 1
    try:
        tenant, base = _run_tenant(args)
    except _RunError as exc:
        print(f"mayflyd run: {exc}", file=sys.stderr)
        return 1
    admin_socket = default_admin_socket()
    if _listened_on(admin_socket):
        # Beside a daemon already serving, rather than not at all.
        admin_socket = os.path.join(os.path.dirname(admin_socket), f"run-{port}.sock")
        print(f"mayflyd: another mayflyd has the admin socket; this one is on {admin_socket} "
              f"(mayflyd status --socket {admin_socket})", file=sys.stderr)
    text = json.dumps({  # JSON is YAML: no quoting surprises in paths
        "listen": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "admin_socket": admin_socket, "cgroup_prefix": f"mayflyd-run-{port}",
        "tenants": [tenant],
    })
    try:
        config = parse_config(text, source=f"mayflyd run {args.program or args.app}", base_dir=base)
    except ConfigError as exc:
        print(f"mayflyd: {exc}", file=sys.stderr)
        return 1
    # A tenant's traceback as Python prints it: this terminal is its author's.
    setup_logging(config.log_level, config.log_format, readable_errors=True)
    return _run_daemon(Daemon(config))


def _run_directories(args: argparse.Namespace) -> dict[str, str]:
    """--root and --packages as the tenant's keys, absolute (from the current directory)."""
    return {key: str(Path(value).resolve()) for key, value in (("root", args.root), ("packages", args.packages))
            if value is not None}


def _listened_on(path: str) -> bool:
    """Whether a daemon serves on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _admin_socket(args: argparse.Namespace) -> str:
    """--socket, else the socket the config names (its other keys may be
    invalid: status matters most then), else this user's default."""
    if args.socket:
        return str(args.socket)
    path = Path(args.config) if args.config else (SYSTEM_CONFIG if SYSTEM_CONFIG.exists() else None)
    try:
        named = configured_admin_socket(path) if path is not None else None
    except AdminSocketUnknown as exc:
        raise SystemExit(f"mayflyd: cannot find the admin socket: {exc}") from None
    return named or default_admin_socket()


def _ask(args: argparse.Namespace, method: str, path: str) -> tuple[int, dict[str, Any]] | None:
    """One admin API call; None (and the reason on stderr) when the daemon cannot be reached."""
    from mayflyd.cli.admin_client import AdminError, admin_request

    try:
        return admin_request(_admin_socket(args), method, path)
    except AdminError as exc:
        print(f"mayflyd: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from mayflyd.cli.admin_client import format_status

    answer = _ask(args, "GET", "/status")
    if answer is None:
        return 1
    code, body = answer
    print(json.dumps(body, indent=2) if args.json else format_status(body))
    return 0 if code == 200 else 1


def _reload(args: argparse.Namespace) -> int:
    answer = _ask(args, "POST", "/reload")
    if answer is None:
        return 1
    code, body = answer
    if code == 200:
        print("reloaded")
        return 0
    failed = body.get("failed_tenants")
    if isinstance(failed, dict) and failed:
        # The new configuration is in force; these tenants are not serving it.
        lines = [f"  {name}: {why}" for name, why in sorted(failed.items())]
        print(f"reloaded, but {len(failed)} tenant(s) failed to load:", *lines, sep="\n", file=sys.stderr)
        return 1
    print(f"reload failed, the running configuration stays:\n{body.get('error')}", file=sys.stderr)
    return 1


def _check(args: argparse.Namespace) -> int:
    try:
        config = load_config(Path(args.path))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"{args.path}: OK, {len(config.tenants)} tenant(s): {', '.join(t.name for t in config.tenants)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mayflyd", description="Multi-tenant HTTP daemon: one "
                                     "ephemeral sandbox per request.")
    parser.add_argument("--version", action="version", version=f"mayflyd {mayflyd.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the tenants of a config")
    serve.add_argument("--config", help=f"config file (default {SYSTEM_CONFIG} if present, else the bundled one)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check", help="validate a config file; exit 0 if valid, 1 with errors")
    check.add_argument("path")
    check.set_defaults(func=_check)
    run = commands.add_parser(
        "run", help="serve one program as the default tenant, reloading it on change",
        description="Serve one program, or one WSGI app, as the default tenant, reloading it when its "
                    "files change. A request's traceback is printed as Python prints it, under a line "
                    "naming the request.")
    run.add_argument("program", nargs="?", help="a .py file or a package directory; with --app, the "
                     "directory holding the app's module, or that module's file or package "
                     "(default: the current directory)")
    run.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:8080")
    run.add_argument("--app", metavar="MODULE:ATTRIBUTE", help="serve this WSGI app instead of a program "
                     "(the tenant key `app`), e.g. hello:app or site.wsgi:application")
    run.add_argument("--interface", choices=("auto", "wsgi", "asgi"),
                     help="how the --app is called (the tenant key `interface`; default auto)")
    run.add_argument("--engine", choices=("auto", "fork", "reset"),
                     help="how each request gets its sandbox (the tenant key `engine`; default auto)")
    run.add_argument("--env", metavar="KEY=VALUE", action="append", default=[],
                     help="add KEY to the program's os.environ (the tenant key `env`); repeatable")
    run.add_argument("--root", metavar="DIR", help="the program's directory, shown whole to it; PROGRAM is then "
                     "relative to it (the tenant key `root`)")
    run.add_argument("--packages", metavar="DIR", help="packages installed with pip install --target DIR "
                     "for this Python (the tenant key `packages`)")
    run.set_defaults(func=_run)
    for name, func, text in (("status", _status, "show the running daemon's tenants"),
                             ("reload", _reload, "reload the running daemon's configuration")):
        sub = commands.add_parser(name, help=text)
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--socket", help="admin socket (default: from the config, else "
                           "/run/mayflyd/admin.sock as root, $XDG_RUNTIME_DIR/mayflyd/admin.sock "
                           "or /tmp/mayflyd-UID/admin.sock otherwise)")
        where.add_argument("--config", help="read the admin socket's path from this config")
        if name == "status":
            sub.add_argument("--json", action="store_true", help="the raw JSON status")
        sub.set_defaults(func=func)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
