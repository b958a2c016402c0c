"""The mayflyd configuration: a YAML file in, an immutable, validated Config out.

This module is the public face: it reads the file and re-exports the data
model (model) and the value parsers (addresses, sizes) that callers use.
Every key is one record in records.py, from which the validator (validation,
readers), the model's defaults and docs/config.md's key tables (docs) come.
Every problem in a file is collected and raised together in one ConfigError,
each naming its line.

Runs wherever a config is read, the supervisor and the mayflyd command; it
reads the config file and touches nothing else (docs/design.md section 2).
"""

from __future__ import annotations

import os
from pathlib import Path

from .addresses import parse_listen
from .model import (
    BUILTIN_LIMITS,
    DEFAULT_ADMIN_SOCKET,
    Config,
    ConfigError,
    ConfigIssue,
    Limits,
    TenantConfig,
)
from .sizes import parse_size
from .validation import validate_config

__all__ = [
    "BUILTIN_LIMITS",
    "DEFAULT_ADMIN_SOCKET",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Limits",
    "TenantConfig",
    "default_config_path",
    "load_config",
    "parse_config",
    "parse_listen",
    "parse_size",
]


def default_config_path() -> Path:
    """The config bundled with the package, used when no --config is given."""
    return Path(__file__).parent.parent / "default_config" / "mayflyd.yaml"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate the config file at `path`; raise ConfigError."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue(file=source, line=0, key="", message=f"cannot read: {exc.strerror or exc}")]
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(file=source, line=0, key="", message=f"not UTF-8 text: {exc}")]
        ) from exc
    return parse_config(text, source=source, base_dir=Path(source).parent)


def parse_config(text: str, *, source: str, base_dir: Path) -> Config:
    """Validate config `text`; relative program paths are resolved from `base_dir`."""
    return validate_config(text, source=source, base_dir=base_dir)
