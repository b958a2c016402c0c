"""The mayflyd command: serve, check."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from mayflyd.config import Config, ConfigError, load_config, parse_listen

__all__ = ["main", "find_default_config"]

SYSTEM_CONFIG = Path("/etc/mayflyd/mayflyd.yaml")


def find_default_config() -> Path:
    """/etc/mayflyd/mayflyd.yaml if present, else the bundled example config."""
    if SYSTEM_CONFIG.exists():
        return SYSTEM_CONFIG
    installed = Path(__file__).resolve().parent / "default_config" / "mayflyd.yaml"
    if installed.exists():
        return installed
    # Running from a source checkout: the repository's config/ directory.
    return Path(__file__).resolve().parents[2] / "config" / "mayflyd.yaml"


def _load(path: Path, listen: str | None) -> Config:
    config = load_config(path)
    if listen is not None:
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise SystemExit(f"mayflyd: --listen {listen}: {exc}") from None
        config = dataclasses.replace(config, listen_host=host, listen_port=port)
    return config


def _serve(args: argparse.Namespace) -> int:
    from mayflyd.daemon import Daemon
    from mayflyd.logs import setup_logging

    path = Path(args.config) if args.config else find_default_config()
    try:
        config = _load(path, args.listen)
    except ConfigError as exc:
        print(f"mayflyd: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    setup_logging(config.log_level)
    return asyncio.run(Daemon(config).run())


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
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the tenants of a config")
    serve.add_argument("--config", help=f"config file (default {SYSTEM_CONFIG} if present, else the bundled one)")
    serve.add_argument("--listen", metavar="HOST:PORT", help="override the config's listen address")
    serve.set_defaults(func=_serve)
    check = commands.add_parser("check", help="validate a config file; exit 0 if valid, 1 with errors")
    check.add_argument("path")
    check.set_defaults(func=_check)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
