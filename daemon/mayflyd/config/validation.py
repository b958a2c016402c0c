"""Validation of a mayflyd config file: YAML text in, a Config or every problem out.

Validation walks the YAML node tree (yaml.compose) instead of the loaded
Python objects, so that every problem can name its line and so that duplicate
keys, which yaml.safe_load silently collapses, are caught. All problems are
collected and raised together in one ConfigError: an operator fixing a config
should not have to rerun the daemon once per typo.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .addresses import host_name_problem, normalize_host_name, parse_listen
from .model import (
    BUILTIN_LIMITS,
    DEFAULT_ADMIN_SOCKET,
    Config,
    ConfigError,
    ConfigIssue,
    Limits,
    TenantConfig,
)
from .sizes import GiB, MiB, format_size, parse_size

__all__ = ["validate_config"]


def validate_config(text: str, *, source: str, base_dir: Path) -> Config:
    """Validate config `text`; relative program paths are resolved from `base_dir`."""
    issues = _Issues(source)
    root = _compose(text, issues)
    if root is None:
        raise ConfigError(issues.items)
    config = _Parser(issues, base_dir.resolve()).config(root, source)
    if issues.items or config is None:
        raise ConfigError(issues.items)
    return config


# --------------------------------------------------------------------------
# Issue collection and YAML composition
# --------------------------------------------------------------------------


class _Issues:
    """Collects issues of one parse; one instance per call, never shared."""

    __slots__ = ("file", "items")

    def __init__(self, file: str) -> None:
        self.file = file
        self.items: list[ConfigIssue] = []

    def add(self, at: Node | int, key: str, message: str) -> None:
        line = at if isinstance(at, int) else _line(at)
        self.items.append(ConfigIssue(file=self.file, line=line, key=key, message=message))


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _compose(text: str, issues: _Issues) -> Node | None:
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
        issues.add(root, "", f"the config must be a mapping of keys, got {_type_name(root)}")
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


def _type_name(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    if isinstance(node, SequenceNode):
        return "list"
    tag = str(node.tag)
    if tag.startswith(_TAG):
        return _TAG_NAMES.get(tag[len(_TAG) :], tag)
    return tag


# --------------------------------------------------------------------------
# The schema walk
# --------------------------------------------------------------------------

_TOP_KEYS: Final = (
    "listen", "log_level", "cgroup", "cgroup_root", "cgroup_prefix", "uid_base", "admin_socket",
    "metrics_listen", "log_format", "access_log", "shutdown_grace_ms", "zygote", "defaults", "tenants",
)
_LOG_FORMATS: Final = ("logfmt", "json")
_CGROUP_PREFIX_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,3}")
_TENANT_KEYS: Final = (
    "name", "hosts", "default", "program", "engine", "pool", "pool_idle_ms", "verify_rewind", "uid", "gid", "env",
    "limits",
    "network", "files", "seccomp_action",
)
_NETWORK_MODES: Final = ("none", "loopback", "full")
_SECCOMP_ACTIONS: Final = ("eperm", "kill")
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_CGROUP_MODES: Final = ("auto", "v1", "v2", "none")
_ENGINES: Final = ("auto", "fork", "reset")
_POOL_MAX: Final = 256  # MF_RESET_MAX_WORKERS in csrc/engine/reset_engine.h
_POOL_IDLE_MS_MAX: Final = 86_400_000
# An idle reset tenant keeps a worker (and its snapshot, ~11 MiB) this long;
# the request after that pays for forking one again.
DEFAULT_POOL_IDLE_MS: Final = 60_000
_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ENV_KEY_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_ID: Final = 2**31 - 2  # 2^31-1 is reserved by some tools as "no id"
_UID_SPAN: Final = 65536  # derived uids are uid_base + crc32(name) % _UID_SPAN


@dataclass(frozen=True, slots=True, kw_only=True)
class _LimitRule:
    key: str
    is_size: bool
    low: int
    high: int | None


_LIMIT_RULES: Final = (
    _LimitRule(key="memory", is_size=True, low=16 * MiB, high=None),
    _LimitRule(key="request_timeout_ms", is_size=False, low=1, high=3_600_000),
    _LimitRule(key="max_body", is_size=True, low=0, high=1 * GiB),
    _LimitRule(key="max_response", is_size=True, low=1, high=1 * GiB),
    _LimitRule(key="concurrency", is_size=False, low=1, high=100_000),
    _LimitRule(key="init_timeout_ms", is_size=False, low=1, high=3_600_000),
    _LimitRule(key="pids", is_size=False, low=2, high=1_000_000),
    _LimitRule(key="request_cpu_ms", is_size=False, low=1, high=3_600_000),
    _LimitRule(key="request_memory", is_size=True, low=1 * MiB, high=None),
)
_CPU_RANGE: Final = (0.01, 1024.0)

_Entries = dict[str, tuple[Node, Node]]  # key -> (key node, value node)
_T = TypeVar("_T")
_Reader = Callable[[Node, str], _T | None]


class _Parser:
    """One schema walk over one document; reports into `issues`."""

    __slots__ = ("_issues", "_base_dir", "_constructor")

    def __init__(self, issues: _Issues, base_dir: Path) -> None:
        self._issues = issues
        self._base_dir = base_dir
        self._constructor = SafeConstructor()

    # ---- generic node readers; each returns None after reporting a problem

    def _pairs(self, node: Node, path: str, expected: str) -> list[tuple[str, Node, Node]] | None:
        """(key, key node, value node) of a mapping with string keys, each key once."""
        if not isinstance(node, MappingNode):
            self._issues.add(node, path, f"must be {expected}, got {_type_name(node)}")
            return None
        pairs: list[tuple[str, Node, Node]] = []
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge":
                # Merging would hide where each value came from, and lines are the point here.
                child = f"{path}.<<" if path else "<<"
                self._issues.add(
                    key_node, child, "YAML merge keys ('<<') are not supported; write the keys out"
                )
                continue
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _TAG + "str"):
                self._issues.add(key_node, path, f"keys must be strings, got {_type_name(key_node)}")
                continue
            key = str(key_node.value)
            if key in first_line:
                # PyYAML would silently keep the last value; the operator meant one of them.
                child = f"{path}.{key}" if path else key
                self._issues.add(key_node, child, f"duplicate key {key!r} (first at line {first_line[key]})")
                continue
            first_line[key] = _line(key_node)
            pairs.append((key, key_node, value_node))
        return pairs

    def _mapping(
        self, node: Node, path: str, known: Sequence[str], required: Sequence[str] = ()
    ) -> _Entries | None:
        """A mapping with a fixed set of keys: unknown and missing keys are reported."""
        pairs = self._pairs(node, path, "a mapping")
        if pairs is None:
            return None
        entries: _Entries = {}
        for key, key_node, value_node in pairs:
            if key in known:
                entries[key] = (key_node, value_node)
                continue
            hint = difflib.get_close_matches(key, known, n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else ""
            self._issues.add(key_node, f"{path}.{key}" if path else key, f"unknown key {key!r}{suffix}")
        for key in required:
            if key not in entries:
                self._issues.add(node, f"{path}.{key}" if path else key, f"missing required key {key!r}")
        return entries

    def _scalar(self, node: Node, path: str, tag: str, expected: str) -> object | None:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + tag):
            self._issues.add(node, path, f"must be {expected}, got {_type_name(node)}")
            return None
        try:
            value: object = self._constructor.construct_object(node)
        except ConstructorError as exc:
            self._issues.add(node, path, f"cannot read value: {exc.problem}")
            return None
        return value

    def _string(self, node: Node, path: str) -> str | None:
        value = self._scalar(node, path, "str", "a string")
        return value if isinstance(value, str) else None

    def _bool(self, node: Node, path: str) -> bool | None:
        value = self._scalar(node, path, "bool", "true or false")
        return value if isinstance(value, bool) else None

    def _int(self, node: Node, path: str, low: int, high: int) -> int | None:
        value = self._scalar(node, path, "int", "an int")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if not low <= value <= high:
            self._issues.add(node, path, f"must be between {low} and {high}, got {value}")
            return None
        return value

    def _cpu(self, node: Node, path: str) -> float | None:
        value = self._constructor.construct_object(node) if isinstance(node, ScalarNode) else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            self._issues.add(node, path, f"must be a number of cores like 0.5, got {_type_name(node)}")
            return None
        low, high = _CPU_RANGE
        if not low <= value <= high:
            self._issues.add(node, path, f"must be between {low} and {high:g} cores, got {value}")
            return None
        return float(value)

    def _choice(self, node: Node, path: str, choices: Sequence[str]) -> str | None:
        value = self._string(node, path)
        if value is not None and value not in choices:
            self._issues.add(node, path, f"must be one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def _size(self, node: Node, path: str, low: int, high: int | None) -> int | None:
        if isinstance(node, ScalarNode) and node.tag in (_TAG + "int", _TAG + "str"):
            raw = self._constructor.construct_object(node)
        else:
            self._issues.add(
                node, path, f"must be a size like 128MiB or a number of bytes, got {_type_name(node)}"
            )
            return None
        try:
            size = parse_size(raw)
        except ValueError as exc:
            self._issues.add(node, path, str(exc))
            return None
        shown = repr(raw) if isinstance(raw, str) else str(raw)
        if size < low:
            self._issues.add(node, path, f"must be at least {format_size(low)}, got {shown}")
            return None
        if high is not None and size > high:
            self._issues.add(node, path, f"must be at most {format_size(high)}, got {shown}")
            return None
        return size

    # ---- the schema

    def config(self, root: Node, source: str) -> Config | None:
        entries = self._mapping(root, "", _TOP_KEYS, required=("tenants",))
        if entries is None:
            return None
        listen_host, listen_port = "127.0.0.1", 8080
        if "listen" in entries:
            node = entries["listen"][1]
            text = self._string(node, "listen")
            if text is not None:
                try:
                    listen_host, listen_port = parse_listen(text)
                except ValueError as exc:
                    self._issues.add(node, "listen", str(exc))
        log_level = self._optional(entries, "log_level", "info", lambda n, p: self._choice(n, p, _LOG_LEVELS))
        cgroup = self._optional(entries, "cgroup", "auto", lambda n, p: self._choice(n, p, _CGROUP_MODES))
        cgroup_root = self._optional(entries, "cgroup_root", "/sys/fs/cgroup", self._cgroup_root)
        cgroup_prefix = self._optional(entries, "cgroup_prefix", "mayflyd", self._cgroup_prefix)
        uid_base = self._optional(
            entries, "uid_base", 200000, lambda n, p: self._int(n, p, 1, _MAX_ID - _UID_SPAN)
        )
        admin_socket = self._optional(entries, "admin_socket", DEFAULT_ADMIN_SOCKET, self._socket_path)
        metrics_listen: tuple[str, int] | None = None
        if "metrics_listen" in entries:
            node = entries["metrics_listen"][1]
            text = self._string(node, "metrics_listen")
            if text is not None:
                try:
                    metrics_listen = parse_listen(text)
                except ValueError as exc:
                    self._issues.add(node, "metrics_listen", str(exc))
        log_format = self._optional(entries, "log_format", "logfmt",
                                    lambda n, p: self._choice(n, p, _LOG_FORMATS))
        access_log = self._optional(entries, "access_log", False, self._bool)
        zygote = self._optional(entries, "zygote", True, self._bool)
        shutdown_grace_ms = self._optional(entries, "shutdown_grace_ms", 10000,
                                           lambda n, p: self._int(n, p, 0, 3_600_000))
        defaults = BUILTIN_LIMITS
        if "defaults" in entries:
            defaults = self._defaults(entries["defaults"][1], defaults)
        tenants: tuple[TenantConfig, ...] = ()
        if "tenants" in entries:
            tenants = self._tenants(entries["tenants"][1], defaults, uid_base)
        return Config(
            source=source,
            listen_host=listen_host,
            listen_port=listen_port,
            log_level=log_level,
            cgroup=cgroup,
            cgroup_root=cgroup_root,
            cgroup_prefix=cgroup_prefix,
            uid_base=uid_base,
            admin_socket=admin_socket,
            metrics_listen=metrics_listen,
            log_format=log_format,
            access_log=access_log,
            zygote=zygote,
            shutdown_grace_ms=shutdown_grace_ms,
            defaults=defaults,
            tenants=tenants,
        )

    def _optional(self, entries: _Entries, key: str, default: _T, read: _Reader[_T]) -> _T:
        # The default also stands in for an invalid value; the issue already makes the parse fail.
        if key not in entries:
            return default
        value = read(entries[key][1], key)
        return default if value is None else value

    def _cgroup_root(self, node: Node, path: str) -> str | None:
        value = self._string(node, path)
        if value is not None and not os.path.isabs(value):
            self._issues.add(node, path, f"must be an absolute path, got {value!r}")
            return None
        return value

    def _socket_path(self, node: Node, path: str) -> str | None:
        value = self._string(node, path)
        if value is None:
            return None
        if not os.path.isabs(value) or len(value.encode()) > 107:
            self._issues.add(node, path, f"must be an absolute path of at most 107 bytes, got {value!r}")
            return None
        return value

    def _cgroup_prefix(self, node: Node, path: str) -> str | None:
        value = self._string(node, path)
        if value is not None and (not _CGROUP_PREFIX_RE.fullmatch(value) or ".." in value.split("/")):
            self._issues.add(node, path, f"must be a relative path of 1-4 names of [A-Za-z0-9_.-], got {value!r}")
            return None
        return value

    def _defaults(self, node: Node, base: Limits) -> Limits:
        entries = self._mapping(node, "defaults", ("limits",))
        if entries is None or "limits" not in entries:
            return base
        return self._limits(entries["limits"][1], "defaults.limits", base)

    def _limits(self, node: Node, path: str, base: Limits) -> Limits:
        entries = self._mapping(node, path, [rule.key for rule in _LIMIT_RULES] + ["cpu"])
        if entries is None:
            return base
        overrides: dict[str, Any] = {}
        if "cpu" in entries:
            cpu = self._cpu(entries["cpu"][1], f"{path}.cpu")
            if cpu is not None:
                overrides["cpu"] = cpu
        for rule in _LIMIT_RULES:
            if rule.key not in entries:
                continue
            value_node = entries[rule.key][1]
            child = f"{path}.{rule.key}"
            if rule.is_size:
                value = self._size(value_node, child, rule.low, rule.high)
            else:
                assert rule.high is not None
                value = self._int(value_node, child, rule.low, rule.high)
            if value is not None:
                overrides[rule.key] = value
        return dataclasses.replace(base, **overrides)

    # ---- tenants

    def _tenants(self, node: Node, defaults: Limits, uid_base: int) -> tuple[TenantConfig, ...]:
        if not isinstance(node, SequenceNode):
            self._issues.add(node, "tenants", f"must be a list of tenants, got {_type_name(node)}")
            return ()
        if not node.value:
            self._issues.add(node, "tenants", "must list at least one tenant")
            return ()
        seen = _SeenAcrossTenants()
        tenants = []
        for index, tenant_node in enumerate(node.value):
            tenant = self._tenant(tenant_node, f"tenants[{index}]", defaults, uid_base, seen)
            if tenant is not None:
                tenants.append(tenant)
        return tuple(tenants)

    def _tenant(
        self, node: Node, path: str, defaults: Limits, uid_base: int, seen: _SeenAcrossTenants
    ) -> TenantConfig | None:
        entries = self._mapping(node, path, _TENANT_KEYS, required=("name", "program"))
        if entries is None:
            return None

        name = None
        duplicate_name = False
        if "name" in entries:
            name_node = entries["name"][1]
            name = self._string(name_node, f"{path}.name")
            if name is not None and not _NAME_RE.fullmatch(name):
                self._issues.add(
                    name_node,
                    f"{path}.name",
                    f"must be 1-63 characters of a-z, 0-9, '_' and '-', starting with a letter or digit, got {name!r}",
                )
                name = None
            elif name is not None:
                if name in seen.names:
                    self._issues.add(
                        name_node,
                        f"{path}.name",
                        f"duplicate tenant name {name!r} (first at line {seen.names[name]})",
                    )
                    duplicate_name = True
                else:
                    seen.names[name] = _line(name_node)
        # Messages about this tenant name it when they can; "tenants[2]" otherwise.
        label = repr(name) if name is not None else path

        default = False
        if "default" in entries:
            default_node = entries["default"][1]
            default = self._bool(default_node, f"{path}.default") or False
            if default:
                if seen.default is not None:
                    other, other_line = seen.default
                    self._issues.add(
                        default_node,
                        f"{path}.default",
                        f"tenant {label} cannot also be the default: tenant {other} already is (line {other_line})",
                    )
                else:
                    seen.default = (label, _line(default_node))

        hosts = self._hosts(entries, node, path, label, default, seen)
        program = self._program(entries["program"][1], f"{path}.program") if "program" in entries else None

        engine = "auto"
        if "engine" in entries:
            engine = self._choice(entries["engine"][1], f"{path}.engine", _ENGINES) or "auto"
        pool = 0
        if "pool" in entries:
            pool = self._int(entries["pool"][1], f"{path}.pool", 1, _POOL_MAX) or 0
        pool_idle_ms = DEFAULT_POOL_IDLE_MS
        if "pool_idle_ms" in entries:
            value = self._int(entries["pool_idle_ms"][1], f"{path}.pool_idle_ms", 0, _POOL_IDLE_MS_MAX)
            pool_idle_ms = DEFAULT_POOL_IDLE_MS if value is None else value
        verify_rewind = False
        if "verify_rewind" in entries:
            verify_rewind = bool(self._bool(entries["verify_rewind"][1], f"{path}.verify_rewind"))

        uid = self._id(entries, "uid", path)
        gid = self._id(entries, "gid", path)
        if uid is None and name is not None:
            # Stable across restarts and machines, so files a tenant's program
            # writes keep their owner; collisions are reported below.
            uid = uid_base + zlib.crc32(name.encode()) % _UID_SPAN
        # A duplicate name derives the same uid; that collision would only repeat the name issue.
        if uid is not None and not (duplicate_name and "uid" not in entries):
            uid_at = entries["uid"][1] if "uid" in entries else node
            if uid in seen.uids:
                other, other_line = seen.uids[uid]
                self._issues.add(
                    uid_at,
                    f"{path}.uid",
                    f"tenant {label} gets uid {uid}, already used by tenant {other} (line {other_line});"
                    " set a different explicit uid on one of them",
                )
            else:
                seen.uids[uid] = (label, _line(uid_at))

        env = self._env(entries["env"][1], f"{path}.env") if "env" in entries else ()
        limits = (
            self._limits(entries["limits"][1], f"{path}.limits", defaults)
            if "limits" in entries
            else defaults
        )

        limits_at = entries["limits"][1] if "limits" in entries else node
        # Unset (0) means: follow the other limits, so that raising concurrency
        # or lowering memory alone never makes a config invalid.
        if limits.pids == 0:
            limits = dataclasses.replace(limits, pids=max(64, limits.concurrency + 16))
        if limits.request_memory == 0:
            limits = dataclasses.replace(limits, request_memory=limits.memory)
        if limits.request_memory > limits.memory:
            self._issues.add(limits_at, f"{path}.limits.request_memory",
                             f"request_memory ({format_size(limits.request_memory)}) exceeds the tenant's "
                             f"memory ({format_size(limits.memory)})")
        if limits.pids <= limits.concurrency:
            self._issues.add(limits_at, f"{path}.limits.pids",
                             f"pids ({limits.pids}) must exceed concurrency ({limits.concurrency}): "
                             "every request is a process, and so is the host")
        network = "none"
        if "network" in entries:
            network = self._choice(entries["network"][1], f"{path}.network", _NETWORK_MODES) or "none"
        seccomp_action = "eperm"
        if "seccomp_action" in entries:
            seccomp_action = (self._choice(entries["seccomp_action"][1], f"{path}.seccomp_action",
                                           _SECCOMP_ACTIONS) or "eperm")
        files = self._files(entries["files"][1], f"{path}.files") if "files" in entries else ()

        if name is None or program is None or uid is None:
            return None  # already reported
        return TenantConfig(
            name=name,
            hosts=hosts,
            default=default,
            program=program,
            engine=engine,
            pool=pool,
            pool_idle_ms=pool_idle_ms,
            verify_rewind=verify_rewind,
            uid=uid,
            gid=gid if gid is not None else uid,
            env=env,
            limits=limits,
            network=network,
            files=files,
            seccomp_action=seccomp_action,
        )

    def _hosts(
        self,
        entries: _Entries,
        tenant_node: Node,
        path: str,
        label: str,
        default: bool,
        seen: _SeenAcrossTenants,
    ) -> tuple[str, ...]:
        hosts: list[str] = []
        at: Node = tenant_node
        if "hosts" in entries:
            at = entries["hosts"][1]
            if not isinstance(at, SequenceNode):
                self._issues.add(at, f"{path}.hosts", f"must be a list of strings, got {_type_name(at)}")
                return ()
            mine: dict[str, int] = {}
            for index, host_node in enumerate(at.value):
                child = f"{path}.hosts[{index}]"
                raw = self._string(host_node, child)
                if raw is None:
                    continue
                host = normalize_host_name(raw)
                problem = host_name_problem(host, wildcard_ok=True)
                if problem is not None:
                    self._issues.add(host_node, child, problem)
                elif host in mine:
                    self._issues.add(
                        host_node, child, f"host {host!r} is listed twice (first at line {mine[host]})"
                    )
                elif host in seen.hosts:
                    other, other_line = seen.hosts[host]
                    self._issues.add(
                        host_node,
                        child,
                        f"host {host!r} is already served by tenant {other} (line {other_line})",
                    )
                else:
                    mine[host] = _line(host_node)
                    seen.hosts[host] = (label, mine[host])
                    hosts.append(host)
            if at.value and not hosts:
                return ()  # every entry was bad and reported; "no hosts" would only add noise
        if not hosts and not default:
            self._issues.add(
                at,
                f"{path}.hosts",
                f"tenant {label} has no hosts; list at least one or make it the default tenant",
            )
        return tuple(hosts)

    def _files(self, node: Node, path: str) -> tuple[Path, ...]:
        if not isinstance(node, SequenceNode):
            self._issues.add(node, path, f"must be a list of absolute paths, got {_type_name(node)}")
            return ()
        files: list[Path] = []
        for index, item in enumerate(node.value):
            item_path = f"{path}[{index}]"
            text = self._string(item, item_path)
            if text is None:
                continue
            if not os.path.isabs(text) or "\0" in text or "/../" in f"{text}/":
                self._issues.add(item, item_path, f"must be an absolute path without '..', got {text!r}")
            elif not os.path.exists(text):
                self._issues.add(item, item_path, f"{text!r} does not exist")
            else:
                files.append(Path(text))
        return tuple(files)

    def _program(self, node: Node, path: str) -> Path | None:
        text = self._string(node, path)
        if text is None:
            return None
        if not text:
            self._issues.add(node, path, "must not be empty")
            return None
        if "\0" in text:
            self._issues.add(node, path, "must not contain a NUL character")
            return None
        program = (self._base_dir / text).resolve()  # an absolute `text` replaces base_dir
        try:
            if program.is_file():
                if program.suffix == ".py":
                    return program
                self._issues.add(
                    node, path, f"must be a .py file or a package directory, got {str(program)!r}"
                )
            elif program.is_dir():
                if (program / "__init__.py").is_file():
                    return program
                self._issues.add(
                    node, path, f"directory {str(program)!r} is not a package: it has no __init__.py"
                )
            elif program.exists():
                self._issues.add(
                    node, path, f"must be a .py file or a package directory, got {str(program)!r}"
                )
            else:
                self._issues.add(node, path, f"program {text!r} does not exist (looked for {str(program)!r})")
        except OSError as exc:
            self._issues.add(node, path, f"cannot check program {str(program)!r}: {exc.strerror or exc}")
        return None

    def _id(self, entries: _Entries, key: str, path: str) -> int | None:
        if key not in entries:
            return None
        node = entries[key][1]
        value = self._scalar(node, f"{path}.{key}", "int", "an int")
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        if value == 0:
            # Tenants never run as root; 0 does not mean "derive one" either.
            self._issues.add(node, f"{path}.{key}", f"must not be 0 (root); use 1..{_MAX_ID}")
            return None
        if not 1 <= value <= _MAX_ID:
            self._issues.add(node, f"{path}.{key}", f"must be between 1 and {_MAX_ID}, got {value}")
            return None
        return value

    def _env(self, node: Node, path: str) -> tuple[tuple[str, str], ...]:
        pairs = self._pairs(node, path, "a mapping of strings to strings") or []
        env: list[tuple[str, str]] = []
        for key, key_node, value_node in pairs:
            child = f"{path}.{key}"
            if not _ENV_KEY_RE.fullmatch(key):
                self._issues.add(
                    key_node, child, f"variable names must match [A-Za-z_][A-Za-z0-9_]*, got {key!r}"
                )
                continue
            value = self._string(value_node, child)
            if value is None:
                continue
            if "\0" in value:
                self._issues.add(value_node, child, "must not contain a NUL character")
                continue
            env.append((key, value))
        return tuple(sorted(env))


@dataclass(slots=True)
class _SeenAcrossTenants:
    """What earlier tenants claimed, with the line that claimed it (one per parse)."""

    names: dict[str, int] = dataclasses.field(default_factory=dict)
    hosts: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    uids: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)
    default: tuple[str, int] | None = None
