"""Reading one value of a config file: a YAML node in, a Python value or an issue out.

The file is composed to a node tree (yaml.compose) rather than loaded, so
that every problem can name its line and duplicate keys, which
yaml.safe_load silently collapses, are caught. ValueReader.read() checks one
value by its record's kind (records.Kind); each reader reports what is wrong
and returns None, so that a parse goes on and collects every problem.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Final

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .addresses import parse_listen, parse_network
from .model import ConfigIssue
from .packages import packages_version_problem
from .records import MAX_NETWORKS, MAX_WARM_UP_TARGETS, Key, Kind
from .sizes import format_size, parse_size

__all__ = ["SECTION_KINDS", "Entries", "Issues", "ValueReader", "compose", "line_of", "type_name"]

# Kinds whose checks need the rest of their section or the other tenants
# (a program and an app are looked for in the tenant's `root`):
# validation.py reads them. ValueReader.read() reads every other kind.
SECTION_KINDS: Final[frozenset[Kind]] = frozenset({"host_names", "program", "app", "mapping", "limits", "tenants"})

Entries = dict[str, tuple[Node, Node]]  # key -> (key node, value node)


class Issues:
    """Collects issues of one parse; one instance per call, never shared."""

    __slots__ = ("file", "items")

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigIssue] = []

    def add(self, at: Node | int, key: str, message: str) -> None:
        line = at if isinstance(at, int) else line_of(at)
        self.items.append(ConfigIssue(file=self.file, line=line, key=key, message=message))


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def compose(text: str, issues: Issues) -> MappingNode | None:
    """Parse `text` to a node tree; report syntax errors and empty files."""
    try:
        root: Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = int(mark.line) + 1 if mark is not None else 1
        what = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            what = f"{exc.problem} ({exc.context})"
        issues.add(line, "", f"YAML syntax error: {what}")
        return None
    except yaml.reader.ReaderError as exc:
        issues.add(text.count("\n", 0, exc.position) + 1, "", f"YAML syntax error: {exc.reason}")
        return None
    except yaml.YAMLError as exc:  # pragma: no cover - all PyYAML errors above carry a place
        issues.add(1, "", f"YAML syntax error: {exc}")
        return None
    if root is None or (isinstance(root, ScalarNode) and root.tag == _TAG + "null"):
        issues.add(1, "", "the config file is empty")
        return None
    if not isinstance(root, MappingNode):
        issues.add(root, "", f"the config must be a mapping of keys, got {type_name(root)}")
        return None
    return root


_TAG: Final = "tag:yaml.org,2002:"
_TAG_NAMES: Final = {
    "str": "string",
    "int": "int",
    "float": "float",
    "bool": "bool",
    "null": "null",
    "timestamp": "timestamp",
    "binary": "binary",
}


def type_name(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    if isinstance(node, SequenceNode):
        return "list"
    tag = str(node.tag)
    if tag.startswith(_TAG):
        return _TAG_NAMES.get(tag[len(_TAG) :], tag)
    return tag


def child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class ValueReader:
    """Reads single values for one parse; each reader returns None after reporting a problem."""

    __slots__ = ("issues", "_base_dir", "_constructor")

    def __init__(self, issues: Issues, base_dir: Path) -> None:
        self.issues = issues
        self._base_dir = base_dir  # relative program paths start here
        self._constructor = SafeConstructor()

    def read(self, key: Key, node: Node, path: str) -> object | None:
        """The value of `key` at `node`, checked as its record says."""
        match key.kind:
            case "bool":
                return self.boolean(node, path)
            case "int":
                return self.integer(node, path, _int_bound(key.low), _int_bound(key.high))
            case "id":
                return self._id(node, path, _int_bound(key.high))
            case "size":
                return self._size(node, path, _int_bound(key.low), None if key.high is None else int(key.high))
            case "cores":
                return self._cores(node, path, key.low or 0.0, key.high or 0.0)
            case "choice":
                return self._choice(node, path, key.choices)
            case "listen":
                return self._listen(node, path)
            case "networks":
                return self._networks(node, path)
            case "abs_path":
                return self._string_where(node, path, os.path.isabs, "an absolute path")
            case "socket_path":
                return self._string_where(node, path, _is_socket_path, "an absolute path of at most 107 bytes")
            case "cgroup_prefix":
                return self._string_where(
                    node,
                    path,
                    partial(_is_cgroup_prefix, key.pattern),
                    "a relative path of 1-4 names of [A-Za-z0-9_.-]",
                )
            case "tenant_name":
                return self._string_where(
                    node,
                    path,
                    partial(_matches, key.pattern),
                    "1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                )
            case "directory":
                return self._directory(node, path, key.name)
            case "packages":
                return self._packages(node, path, key.name)
            case "env":
                return self._env(node, path, key.pattern)
            case "paths":
                return self._paths(node, path)
            case "targets":
                return self._targets(node, path)
            case "host_names" | "program" | "app" | "mapping" | "limits" | "tenants":
                raise ValueError(f"{key.name}: a {key.kind} is read by its section")

    # ---- YAML structure

    def pairs(self, node: Node, path: str, expected: str) -> list[tuple[str, Node, Node]] | None:
        """(key, key node, value node) of a mapping with string keys, each key once."""
        if not isinstance(node, MappingNode):
            self.issues.add(node, path, f"must be {expected}, got {type_name(node)}")
            return None
        pairs: list[tuple[str, Node, Node]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                # Merging would hide where each value came from, and lines are the point here.
                self.issues.add(
                    key_node, child(path, "<<"), "YAML merge keys ('<<') are not supported; write the keys out"
                )
                continue
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
                self.issues.add(key_node, path, f"keys must be strings, got {type_name(key_node)}")
                continue
            key = str(key_node.value)
            if key in first_line:
                # PyYAML would silently keep the last value; the operator meant one of them.
                self.issues.add(key_node, child(path, key), f"duplicate key {key!r} (first at line {first_line[key]})")
                continue
            first_line[key] = line_of(key_node)
            pairs.append((key, key_node, value_node))
        return pairs

    def mapping(self, node: Node, path: str, keys: Sequence[Key]) -> Entries | None:
        """A mapping of the given keys: unknown and missing required keys are reported."""
        pairs = self.pairs(node, path, "a mapping")
        if pairs is None:
            return None
        known = [key.name for key in keys]
        entries: Entries = {}
        for name, key_node, value_node in pairs:
            if name in known:
                entries[name] = (key_node, value_node)
                continue
            hint = difflib.get_close_matches(name, known, n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            self.issues.add(key_node, child(path, name), f"unknown key {name!r}{suffix}")
        for key in keys:
            if key.required and key.name not in entries:
                self.issues.add(node, child(path, key.name), f"missing required key {key.name!r}")
        return entries

    # ---- scalars

    def _scalar(self, node: Node, path: str, tag: str, expected: str) -> object | None:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + tag):
            self.issues.add(node, path, f"must be {expected}, got {type_name(node)}")
            return None
        try:
            value: object = self._constructor.construct_object(node)
        except ConstructorError as exc:
            self.issues.add(node, path, f"cannot read value: {exc.problem}")
            return None
        return value

    def string(self, node: Node, path: str) -> str | None:
        value = self._scalar(node, path, "str", "a string")
        return value if isinstance(value, str) else None

    def boolean(self, node: Node, path: str) -> bool | None:
        value = self._scalar(node, path, "bool", "true or false")
        return value if isinstance(value, bool) else None

    def integer(self, node: Node, path: str, low: int, high: int) -> int | None:
        value = self._scalar(node, path, "int", "an int")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if not low <= value <= high:
            self.issues.add(node, path, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def _id(self, node: Node, path: str, high: int) -> int | None:
        value = self._scalar(node, path, "int", "an int")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if value == 0:
            # Tenants never run as root; 0 does not mean "derive one" either.
            self.issues.add(node, path, f"must not be 0 (root); use 1..{high}")
            return None
        if not 1 <= value <= high:
            self.issues.add(node, path, f"must be between 1 and {high}, got {value}")
            return None
        return value

    def _cores(self, node: Node, path: str, low: float, high: float) -> float | None:
        value = self._constructor.construct_object(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self.issues.add(node, path, f"must be a number of cores like 0.5, got {type_name(node)}")
            return None
        if not low <= value <= high:
            self.issues.add(node, path, f"must be between {low} and {high:g} cores, got {value}")
            return None
        return float(value)

    def _choice(self, node: Node, path: str, choices: Sequence[str]) -> str | None:
        value = self.string(node, path)
        if value is not None and value not in choices:
            self.issues.add(node, path, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def _size(self, node: Node, path: str, low: int, high: int | None) -> int | None:
        if isinstance(node, ScalarNode) and node.tag in (_TAG + "int", _TAG + "str"):
            raw = self._constructor.construct_object(node)
        else:
            self.issues.add(node, path, f"must be a size like 128MiB or a number of bytes, got {type_name(node)}")
            return None
        try:
            size = parse_size(raw)
        except ValueError as exc:
            self.issues.add(node, path, str(exc))
            return None
        shown = repr(raw) if isinstance(raw, str) else str(raw)
        if size < low:
            self.issues.add(node, path, f"must be at least {format_size(low)}, got {shown}")
            return None
        if high is not None and size > high:
            self.issues.add(node, path, f"must be at most {format_size(high)}, got {shown}")
            return None
        return size

    # ---- strings with a check of their own

    def _listen(self, node: Node, path: str) -> tuple[str, int] | None:
        text = self.string(node, path)
        if text is None:
            return None
        try:
            return parse_listen(text)
        except ValueError as exc:
            self.issues.add(node, path, str(exc))
            return None

    def _string_where(self, node: Node, path: str, valid: Callable[[str], bool], expected: str) -> str | None:
        value = self.string(node, path)
        if value is not None and not valid(value):
            self.issues.add(node, path, f"must be {expected}, got {value!r}")
            return None
        return value

    def _path_text(self, node: Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is None:
            return None
        if not text:
            self.issues.add(node, path, "must not be empty")
            return None
        if "\0" in text:
            self.issues.add(node, path, "must not contain a NUL character")
            return None
        return text

    def _directory(self, node: Node, path: str, name: str) -> Path | None:
        """An existing directory, relative to the config file's."""
        text = self._path_text(node, path)
        if text is None:
            return None
        directory = (self._base_dir / text).resolve()
        try:
            is_dir, exists = directory.is_dir(), directory.exists()
        except OSError as exc:
            self.issues.add(node, path, f"cannot check {name} {str(directory)!r}: {exc.strerror or exc}")
            return None
        if is_dir:
            return directory
        self.issues.add(node, path, f"{name} {text!r} is not a directory ({str(directory)!r})" if exists
                        else f"{name} directory {text!r} does not exist (looked for {str(directory)!r})")
        return None

    def _packages(self, node: Node, path: str, name: str) -> Path | None:
        """A directory of packages installed for this Python."""
        directory = self._directory(node, path, name)
        if directory is None:
            return None
        problem = packages_version_problem(directory)  # raises no OSError: it skips what it cannot read
        if problem is not None:
            self.issues.add(node, path, problem)
            return None
        return directory

    def program(self, node: Node, path: str, root: Path | None) -> Path | None:
        """The program's file or package, from `root` when given (and inside it)."""
        text = self._path_text(node, path)
        if text is None:
            return None
        program = ((root or self._base_dir) / text).resolve()  # an absolute `text` replaces the base
        if not self._inside(node, path, program, root, f"program {text!r}"):
            return None
        return self._program_at(node, path, program, f"program {text!r}")

    def app(self, node: Node, path: str, pattern: str, root: Path | None) -> tuple[str, Path] | None:
        """`module:attribute` and the file or package of the module's first
        name, next to the config file or in `root`: what the tenant's sandbox sees."""
        text = self._string_where(node, path, partial(_matches, pattern),
                                  "'module:attribute' (e.g. 'hello:app' or 'site.wsgi:application')")
        if text is None:
            return None
        top = text.partition(":")[0].partition(".")[0]
        package = (root or self._base_dir) / top
        where = (package if package.is_dir() else package.with_suffix(".py")).resolve()
        if not self._inside(node, path, where, root, f"module {top!r} of app {text!r}"):
            return None
        found = self._program_at(node, path, where, f"module {top!r} of app {text!r}")
        return None if found is None else (text, found)

    def _inside(self, node: Node, path: str, program: Path, root: Path | None, what: str) -> bool:
        """Whether `program` (resolved: links followed) lies inside `root`:
        the sandbox shows root only."""
        if root is None or program.is_relative_to(root):
            return True
        self.issues.add(node, path, f"{what} is outside root {str(root)!r} (it resolves to {str(program)!r})")
        return False

    def _program_at(self, node: Node, path: str, program: Path, what: str) -> Path | None:
        try:
            if program.is_file():
                if program.suffix == ".py":
                    return program
                self.issues.add(node, path, f"must be a .py file or a package directory, got {str(program)!r}")
            elif program.is_dir():
                if (program / "__init__.py").is_file():
                    return program
                self.issues.add(node, path, f"directory {str(program)!r} is not a package: it has no __init__.py")
            elif program.exists():
                self.issues.add(node, path, f"must be a .py file or a package directory, got {str(program)!r}")
            else:
                self.issues.add(node, path, f"{what} does not exist (looked for {str(program)!r})")
        except OSError as exc:
            self.issues.add(node, path, f"cannot check program {str(program)!r}: {exc.strerror or exc}")
        return None

    def _env(self, node: Node, path: str, name_pattern: str) -> tuple[tuple[str, str], ...]:
        pairs = self.pairs(node, path, "a mapping of strings to strings") or []
        env: list[tuple[str, str]] = []
        for name, key_node, value_node in pairs:
            variable = f"{path}.{name}"
            if not _matches(name_pattern, name):
                self.issues.add(key_node, variable, f"variable names must match {name_pattern}, got {name!r}")
                continue
            value = self.string(value_node, variable)
            if value is None:
                continue
            if "\0" in value:
                self.issues.add(value_node, variable, "must not contain a NUL character")
                continue
            env.append((name, value))
        return tuple(sorted(env))

    def _paths(self, node: Node, path: str) -> tuple[Path, ...]:
        def problem(text: str) -> str | None:
            if not os.path.isabs(text) or "\0" in text or "/../" in f"{text}/":
                return f"must be an absolute path without '..', got {text!r}"
            return None if os.path.exists(text) else f"{text!r} does not exist"

        return tuple(Path(text) for text in self._strings(node, path, "absolute paths", problem))

    def _networks(self, node: Node, path: str) -> tuple[str, ...]:
        """Addresses or networks, each kept as its network ("10.0.0.0/8", "::1/128")."""
        def problem(text: str) -> str | None:
            try:
                parse_network(text)
            except ValueError as exc:
                return str(exc)
            return None

        return tuple(parse_network(text) for text in self._strings(node, path, "addresses or networks", problem,
                                                                   at_most=(MAX_NETWORKS, "networks")))

    def _targets(self, node: Node, path: str) -> tuple[str, ...]:
        """Request targets in origin form: "/path" or "/path?query", printable ASCII."""
        def problem(text: str) -> str | None:
            if re.fullmatch(r"/[!-~]*", text) is None or "#" in text:
                return ("must be a path starting with '/' (and an optional '?query'), printable ASCII without"
                        f" spaces or '#', got {text!r}")
            return None

        return tuple(self._strings(node, path, "request targets", problem, at_most=(MAX_WARM_UP_TARGETS, "targets")))

    def _strings(self, node: Node, path: str, what: str, problem: Callable[[str], str | None], *,
                 at_most: tuple[int, str] | None = None) -> list[str]:
        """A list of strings, each one `problem` finds nothing wrong with (the others reported);
        at_most: (how many, of what) a longer list is refused whole."""
        if not isinstance(node, SequenceNode):
            self.issues.add(node, path, f"must be a list of {what}, got {type_name(node)}")
            return []
        if at_most is not None and len(node.value) > at_most[0]:
            self.issues.add(node, path, f"at most {at_most[0]} {at_most[1]}, got {len(node.value)}")
            return []
        good: list[str] = []
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            text = self.string(item, item_path)
            if text is None:
                continue
            wrong = problem(text)
            if wrong is None:
                good.append(text)
            else:
                self.issues.add(item, item_path, wrong)
        return good

def _matches(pattern: str, value: str) -> bool:
    return re.fullmatch(pattern, value) is not None


def _is_cgroup_prefix(pattern: str, value: str) -> bool:
    return _matches(pattern, value) and ".." not in value.split("/")


def _is_socket_path(value: str) -> bool:
    return os.path.isabs(value) and len(value.encode()) <= 107  # sun_path: 108 bytes with the NUL


def _int_bound(bound: float | None) -> int:
    if bound is None:
        raise ValueError("an int range needs both ends")
    return int(bound)
