"""Validation of a mayflyd config file: YAML text in, a Config or every problem out.

The walk takes each section's known keys, required keys and value checks
from its records (records.py); what is left here are the rules across keys
and across tenants: one default tenant, hosts and uids each claimed once,
limits that follow other limits. All problems are collected and raised
together in one ConfigError: an operator fixing a config should not have to
rerun the daemon once per typo.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yaml.nodes import Node, SequenceNode

from .addresses import host_name_problem, normalize_host_name
from .model import BUILTIN_LIMITS, Config, ConfigError, Limits, TenantConfig
from .readers import SECTION_KINDS, Entries, Issues, ValueReader, compose, line_of, type_name
from .records import DEFAULTS_KEYS, LIMIT_KEYS, TENANT, TENANT_KEYS, TOP, TOP_KEYS, UID_SPAN, Key
from .sizes import format_size

__all__ = ["validate_config"]


def validate_config(text: str, *, source: str, base_dir: Path) -> Config:
    """Validate config `text`; relative program paths are resolved from `base_dir`."""
    issues = Issues(source)
    root = compose(text, issues)
    if root is None:
        raise ConfigError(issues.items)
    config = _Parser(issues, base_dir.resolve()).config(root, source)
    if issues.items or config is None:
        raise ConfigError(issues.items)
    return config


@dataclass(slots=True)
class _SeenAcrossTenants:
    """What earlier tenants claimed, with the line that claimed it (one per parse)."""

    names: dict[str, int] = dataclasses.field(default_factory=dict)
    hosts: dict[str, tuple[str, int]] = dataclasses.field(default_factory=dict)
    uids: dict[int, tuple[str, int]] = dataclasses.field(default_factory=dict)
    default: tuple[str, int] | None = None


class _Parser(ValueReader):
    """One schema walk over one document; reports into `issues`."""

    __slots__ = ()

    def _section(self, node: Node, path: str, keys: Sequence[Key]) -> tuple[Entries, dict[str, Any]] | None:
        """The mapping's entries, and the values of the keys a record alone can check.

        A key that is absent or invalid has no value: the model's default then
        stands in (an invalid value already makes the parse fail).
        """
        entries = self.mapping(node, path, keys)
        if entries is None:
            return None
        values: dict[str, Any] = {}
        for key in keys:
            if key.name in entries and key.kind not in SECTION_KINDS:
                value = self.read(key, entries[key.name][1], f"{path}.{key.name}" if path else key.name)
                if value is not None:
                    values[key.name] = value
        return entries, values

    def config(self, root: Node, source: str) -> Config | None:
        section = self._section(root, "", TOP_KEYS)
        if section is None:
            return None
        entries, values = section
        for key in TOP_KEYS:
            if key.fields and key.name in values:  # listen: (host, port)
                values.update(zip(key.fields, values.pop(key.name)))
        defaults = BUILTIN_LIMITS
        if "defaults" in entries:
            defaults = self._defaults(entries["defaults"][1], defaults)
        tenants: tuple[TenantConfig, ...] = ()
        if "tenants" in entries:
            uid_base: int = values.get("uid_base", TOP["uid_base"].default)
            tenants = self._tenants(entries["tenants"][1], defaults, uid_base)
        return Config(source=source, defaults=defaults, tenants=tenants, **values)

    def _defaults(self, node: Node, base: Limits) -> Limits:
        section = self._section(node, "defaults", DEFAULTS_KEYS)
        if section is None or "limits" not in section[0]:
            return base
        return self._limits(section[0]["limits"][1], "defaults.limits", base)

    def _limits(self, node: Node, path: str, base: Limits) -> Limits:
        section = self._section(node, path, LIMIT_KEYS)
        return base if section is None else dataclasses.replace(base, **section[1])

    # ---- tenants

    def _tenants(self, node: Node, defaults: Limits, uid_base: int) -> tuple[TenantConfig, ...]:
        if not isinstance(node, SequenceNode):
            self.issues.add(node, "tenants", f"must be a list of tenants, got {type_name(node)}")
            return ()
        if not node.value:
            self.issues.add(node, "tenants", "must list at least one tenant")
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
        section = self._section(node, path, TENANT_KEYS)
        if section is None:
            return None
        entries, values = section

        name: str | None = values.get("name")
        duplicate_name = False
        if name is not None:
            name_line = line_of(entries["name"][1])
            if name in seen.names:
                self.issues.add(name_line, f"{path}.name",
                                f"duplicate tenant name {name!r} (first at line {seen.names[name]})")
                duplicate_name = True
            else:
                seen.names[name] = name_line
        # Messages about this tenant name it when they can; "tenants[2]" otherwise.
        label = repr(name) if name is not None else path

        default = values.get("default") is True
        if default:
            default_line = line_of(entries["default"][1])
            if seen.default is not None:
                other, other_line = seen.default
                self.issues.add(default_line, f"{path}.default",
                                f"tenant {label} cannot also be the default: tenant {other} already is"
                                f" (line {other_line})")
            else:
                seen.default = (label, default_line)

        hosts = self._hosts(entries, node, path, label, default, seen)

        uid: int | None = values.get("uid")
        if uid is None and name is not None:
            # Stable across restarts and machines, so files a tenant's program
            # writes keep their owner; collisions are reported below.
            uid = uid_base + zlib.crc32(name.encode()) % UID_SPAN
        # A duplicate name derives the same uid; that collision would only repeat the name issue.
        if uid is not None and not (duplicate_name and "uid" not in entries):
            uid_line = line_of(entries["uid"][1] if "uid" in entries else node)
            if uid in seen.uids:
                other, other_line = seen.uids[uid]
                self.issues.add(uid_line, f"{path}.uid",
                                f"tenant {label} gets uid {uid}, already used by tenant {other} (line {other_line});"
                                " set a different explicit uid on one of them")
            else:
                seen.uids[uid] = (label, uid_line)

        limits = defaults
        if "limits" in entries:
            limits = self._limits(entries["limits"][1], f"{path}.limits", defaults)
        limits = self._complete(limits, entries["limits"][1] if "limits" in entries else node, path)

        if "app" in entries and "program" in entries:
            self.issues.add(entries["app"][1], f"{path}.app",
                            f"tenant {label} gives both `program` and `app`; give one of them")
            return None
        if "interface" in entries and "app" not in entries:
            self.issues.add(entries["interface"][1], f"{path}.interface", "`interface` applies only to an `app`")
        if "root" in entries and "root" not in values:
            return None  # reported; where to look for the program is unknown
        root: Path | None = values.get("root")
        if "app" in entries:
            app = self.app(entries["app"][1], f"{path}.app", TENANT["app"].pattern, root)
            if app is not None:
                values["app"], values["program"] = app
        elif "program" in entries:
            program = self.program(entries["program"][1], f"{path}.program", root)
            if program is not None:
                values["program"] = program
        else:
            self.issues.add(node, f"{path}.program", f"tenant {label} needs a `program` or an `app`")
        if name is None or "program" not in values or uid is None:
            return None  # already reported
        values.update(hosts=hosts, uid=uid, limits=limits)
        values.setdefault("gid", uid)
        return TenantConfig(**values)

    def _complete(self, limits: Limits, at: Node, path: str) -> Limits:
        """Fill in the limits that follow others (records: pids, request_memory) and check them together."""
        if limits.pids == 0:
            limits = dataclasses.replace(limits, pids=max(64, limits.concurrency + 16))
        if limits.request_memory == 0:
            limits = dataclasses.replace(limits, request_memory=limits.memory)
        if limits.request_memory > limits.memory:
            self.issues.add(at, f"{path}.limits.request_memory",
                            f"request_memory ({format_size(limits.request_memory)}) exceeds the tenant's "
                            f"memory ({format_size(limits.memory)})")
        if limits.pids <= limits.concurrency:
            self.issues.add(at, f"{path}.limits.pids",
                            f"pids ({limits.pids}) must exceed concurrency ({limits.concurrency}): "
                            "every request is a process, and so is the host")
        return limits

    def _hosts(
        self, entries: Entries, tenant_node: Node, path: str, label: str, default: bool, seen: _SeenAcrossTenants
    ) -> tuple[str, ...]:
        hosts: list[str] = []
        at: Node = tenant_node
        if "hosts" in entries:
            at = entries["hosts"][1]
            if not isinstance(at, SequenceNode):
                self.issues.add(at, f"{path}.hosts", f"must be a list of strings, got {type_name(at)}")
                return ()
            mine: dict[str, int] = {}
            for index, host_node in enumerate(at.value):
                child = f"{path}.hosts[{index}]"
                raw = self.string(host_node, child)
                if raw is None:
                    continue
                host = normalize_host_name(raw)
                problem = host_name_problem(host, wildcard_ok=True)
                if problem is not None:
                    self.issues.add(host_node, child, problem)
                elif host in mine:
                    self.issues.add(host_node, child, f"host {host!r} is listed twice (first at line {mine[host]})")
                elif host in seen.hosts:
                    other, other_line = seen.hosts[host]
                    self.issues.add(
                        host_node, child, f"host {host!r} is already served by tenant {other} (line {other_line})"
                    )
                else:
                    mine[host] = line_of(host_node)
                    seen.hosts[host] = (label, mine[host])
                    hosts.append(host)
            if at.value and not hosts:
                return ()  # every entry was bad and reported; "no hosts" would only add noise
        if not hosts and not default:
            self.issues.add(
                at, f"{path}.hosts", f"tenant {label} has no hosts; list at least one or make it the default tenant"
            )
        return tuple(hosts)
