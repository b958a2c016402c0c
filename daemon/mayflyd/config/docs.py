"""The key tables of docs/config.md, generated from the records.

    python -m mayflyd.config.docs --write docs/config.md   # regenerate
    python -m mayflyd.config.docs --check docs/config.md   # exit 1 if stale
    python -m mayflyd.config.docs                          # print the section

Only the part between the BEGIN and END markers is replaced; the prose
around it is written by hand. A unit test fails when the file is stale.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .records import LIMIT_KEYS, TENANT_KEYS, TOP_KEYS, Key, Kind
from .sizes import KiB, format_size

__all__ = ["BEGIN", "COMMAND", "END", "main", "render", "section_main", "splice"]

BEGIN: Final = "<!-- BEGIN generated: keys -->"
END: Final = "<!-- END generated: keys -->"
COMMAND: Final = "python -m mayflyd.config.docs --write docs/config.md"


@dataclass(frozen=True, slots=True)
class _Table:
    title: str  # a "## " heading; links point at its anchor (#tenant-keys)
    intro: str
    keys: Sequence[Key]


_TABLES: Final = (
    _Table("Top-level keys", "", TOP_KEYS),
    _Table("Tenant keys", "Each entry of `tenants` is a mapping of these keys.", TENANT_KEYS),
    _Table("Limits", "These keys can appear under `defaults.limits` and under a tenant's `limits`.", LIMIT_KEYS),
)

_TYPES: Final[Mapping[Kind, str]] = {
    "bool": "bool",
    "int": "int",
    "id": "int",
    "size": "[size](#sizes)",
    "cores": "number (cores)",
    "choice": "string",
    "listen": "string `HOST:PORT` or `[IPv6]:PORT`",
    "networks": "list of addresses or CIDRs",
    "abs_path": "absolute path",
    "socket_path": "absolute path",
    "cgroup_prefix": "relative path",
    "tenant_name": "string",
    "host_names": "list of strings",
    "program": "path",
    "app": "string",
    "directory": "path",
    "packages": "path",
    "env": "mapping of string to string",
    "paths": "list of absolute paths",
    "targets": "list of strings",
    "mapping": "mapping",
    "limits": "mapping of [limits](#limits)",
    "tenants": "non-empty list of [tenants](#tenant-keys)",
}


def render() -> str:
    """The generated section, markers included."""
    lines = [
        BEGIN,
        f"<!-- From daemon/mayflyd/config/records.py; edit the records and run `{COMMAND}`. -->",
    ]
    for table in _TABLES:
        lines += ["", f"## {table.title}", ""]
        if table.intro:
            lines += [table.intro, ""]
        lines += ["| Key | Type | Default | Range | Meaning |", "|---|---|---|---|---|"]
        for key in table.keys:
            lines.append(_row(key, ""))
            lines += [_row(sub, f"{key.name}.") for sub in key.keys]
    lines += ["", END]
    return "\n".join(lines)


def splice(document: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    """`document` with the text from `begin` to `end` replaced by `section`."""
    first, last = document.find(begin), document.find(end)
    if first < 0 or last < first:
        raise ValueError(f"no {begin} ... {end} section")
    return document[:first] + section + document[last + len(end) :]


def _row(key: Key, prefix: str) -> str:
    cells = [f"`{prefix}{key.name}`", _type(key), _default(key), _range(key), key.doc]
    return "| " + " | ".join(cells) + " |"


def _type(key: Key) -> str:
    if key.kind == "int" and key.name.endswith("_ms"):
        return "int (ms)"
    return _TYPES[key.kind]


def _default(key: Key) -> str:
    if key.required:
        return "required"
    if key.shown_default:
        return key.shown_default
    value = key.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if key.kind == "size":
        return f"`{format_size(value)}`"
    if key.kind == "listen":
        host, port = value
        return f"`[{host}]:{port}`" if ":" in host else f"`{host}:{port}`"
    if value == ():
        return "`{}`" if key.kind == "env" else "`[]`"
    if isinstance(value, (str, int, float)):
        return f"`{value}`"
    raise ValueError(f"{key.name}: no docs for a default of {value!r}; give the record a shown_default")


def _range(key: Key) -> str:
    parts = []
    if key.choices:
        parts.append(" \\| ".join(f"`{choice}`" for choice in key.choices))
    elif key.kind == "size" and key.low is not None:
        low = _size(int(key.low))
        parts.append(f"at least {low}" if key.high is None else f"{low}..{_size(int(key.high))}")
    elif key.low is not None and key.high is not None:
        parts.append(f"{_number(key.low)}..{_number(key.high)}")
    if key.range_note:
        parts.append(key.range_note)
    elif key.pattern:
        parts.append(f"{'names match ' if key.kind == 'env' else ''}`^{key.pattern}$`")
    return ", ".join(parts)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) and not value.is_integer() else str(int(value))


def _size(size: int) -> str:
    # Small bounds read best as plain bytes: 0..`1GiB`, not `0B`..`1GiB`.
    return str(size) if size < KiB else f"`{format_size(size)}`"


def main(argv: Sequence[str] | None = None) -> int:
    return section_main(
        argv, prog="python -m mayflyd.config.docs", description="The key tables of docs/config.md, from the records.",
        section=render(), begin=BEGIN, end=END, command=COMMAND,
    )


def section_main(
    argv: Sequence[str] | None, *, prog: str, description: str, section: str, begin: str, end: str, command: str
) -> int:
    """The command line of a generated section (here and the tests' HTTP cases):
    print it, `--write FILE` to replace FILE's, `--check FILE` to exit 1 if stale."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", metavar="FILE", type=Path, help="replace FILE's generated section")
    action.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if FILE's generated section is stale")
    args = parser.parse_args(argv)
    if args.write is None and args.check is None:
        print(section)
        return 0
    path: Path = args.write or args.check
    text = path.read_text(encoding="utf-8")
    try:
        updated = splice(text, section, begin, end)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    if args.check is not None:
        if updated != text:
            print(f"{path}: the generated section is stale; run `{command}`", file=sys.stderr)
            return 1
        return 0
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
