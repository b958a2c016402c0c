"""Tests of the config key records: the model, the parser and docs/config.md agree with them."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path

import pytest

from mayflyd.config import Config, Limits, TenantConfig, parse_config
from mayflyd.config.docs import BEGIN, COMMAND, END, main, render, splice
from mayflyd.config.records import LIMIT_KEYS, NO_DEFAULT, TENANT_KEYS, TOP_KEYS, Key

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"

# (records, the dataclass they fill, its fields that are no key)
SECTIONS = [
    pytest.param(TOP_KEYS, Config, {"source"}, id="top"),
    pytest.param(TENANT_KEYS, TenantConfig, set(), id="tenant"),
    pytest.param(LIMIT_KEYS, Limits, set(), id="limits"),
]


def test_docs_config_md_is_up_to_date() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert splice(text, render()) == text, (
        f"docs/config.md's key tables differ from daemon/mayflyd/config/records.py; run `{COMMAND}`"
    )


@pytest.mark.parametrize(("keys", "model", "not_keys"), SECTIONS)
def test_each_record_is_one_field_with_its_default(
    keys: Sequence[Key], model: type[object], not_keys: set[str]
) -> None:
    fields = {field.name: field for field in dataclasses.fields(model)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(model)
    filled: list[str] = []
    for key in keys:
        names = key.fields or (key.name,)
        filled += names
        assert set(names) <= fields.keys(), f"{key.name}: no field {names} in {model.__name__}"
        defaults = tuple(fields[name].default for name in names)
        if key.default is NO_DEFAULT:
            assert defaults == (dataclasses.MISSING,) * len(names), f"{key.name} has no default in its record"
            continue
        assert (defaults if key.fields else defaults[0]) == key.default, key.name
        for name, default in zip(names, defaults):
            assert _accepts(hints[name], default), f"{key.name}: {default!r} is no {hints[name]}"
    assert sorted(filled) == sorted(set(filled)), "two records fill one field"
    assert set(filled) | not_keys == fields.keys()


def _accepts(hint: object, value: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    return isinstance(value, origin or hint)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [*TOP_KEYS, *TENANT_KEYS, *LIMIT_KEYS], ids=lambda key: key.name)
def test_record_is_complete(key: Key) -> None:
    if key.required:
        assert key.default is NO_DEFAULT
    elif key.default is NO_DEFAULT:
        assert key.shown_default, "a derived default needs words in the docs"
    if key.kind in ("int", "id", "size", "cores"):
        assert key.low is not None
        assert key.high is not None or key.kind == "size"
        in_range = isinstance(key.default, (int, float)) and key.low <= key.default <= (key.high or key.default)
        # A default outside the range (pool: 0) stands for a value derived later.
        assert in_range or key.shown_default
    if key.kind == "choice":
        assert key.default in key.choices
    assert key.doc.endswith(".")


def test_record_names_are_unique() -> None:
    for keys in (TOP_KEYS, TENANT_KEYS, LIMIT_KEYS):
        names = [key.name for key in keys]
        assert len(names) == len(set(names))


def test_absent_keys_take_the_records_defaults(tmp_path: Path) -> None:
    (tmp_path / "prog.py").write_text("")
    config = parse_config("tenants: [{name: a, hosts: [a], program: prog.py}]", source="t", base_dir=tmp_path)
    for key in TOP_KEYS:
        if key.default is not NO_DEFAULT:
            got = tuple(getattr(config, name) for name in key.fields) if key.fields else getattr(config, key.name)
            assert got == key.default, key.name
    for key in TENANT_KEYS:
        if key.default is not NO_DEFAULT and key.name != "hosts":  # the one written above
            assert getattr(config.tenants[0], key.name) == key.default, key.name


def test_docs_command_checks_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "config.md"
    stale.write_text(f"# Prose\n\n{BEGIN}\n| `memory` | old |\n{END}\n\nMore prose.\n")
    assert main(["--check", str(stale)]) == 1
    assert COMMAND in capsys.readouterr().err
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
    text = stale.read_text()
    assert text.startswith("# Prose\n\n") and text.endswith("\n\nMore prose.\n")
    assert "| `request_memory` |" in text


def test_docs_command_needs_the_markers(tmp_path: Path) -> None:
    plain = tmp_path / "plain.md"
    plain.write_text("# No markers\n")
    assert main(["--write", str(plain)]) == 2
    assert plain.read_text() == "# No markers\n"
