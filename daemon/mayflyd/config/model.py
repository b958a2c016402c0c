"""The mayflyd configuration's data model: what a validated config file becomes.

Configs compare by value (frozen dataclasses of tuples), so a reload can tell
which tenants changed with ==. Each field is the key of the same name in
records.py and takes its default from there (test_config_records checks that
the two agree); a field without a default is required or derived from other
keys. The parser builds these from YAML; mayflyd.config re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .records import LIMIT, TENANT, TOP

__all__ = [
    "BUILTIN_LIMITS",
    "DEFAULT_ADMIN_SOCKET",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Limits",
    "TenantConfig",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigIssue:
    """One problem in a config file. line is 1-based; 0 means "no line"."""

    file: str
    line: int
    key: str  # dotted path, e.g. tenants[1].limits.memory; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used; carries every issue found, in line order."""

    issues: list[ConfigIssue]

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda issue: issue.line)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[ConfigIssue]]]:
        # The default reduce would call ConfigError(message_string).
        return (ConfigError, (self.issues,))


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The limits keys (records.LIMIT_KEYS), each field named and defaulted by its record."""

    memory: int = LIMIT["memory"].default  # bytes, all of the tenant's processes together
    request_timeout_ms: int = LIMIT["request_timeout_ms"].default
    max_body: int = LIMIT["max_body"].default  # bytes
    max_response: int = LIMIT["max_response"].default  # bytes
    concurrency: int = LIMIT["concurrency"].default
    queue: int = LIMIT["queue"].default
    init_timeout_ms: int = LIMIT["init_timeout_ms"].default
    cpu: float = LIMIT["cpu"].default  # share of one core for the whole tenant
    pids: int = LIMIT["pids"].default  # 0 until a tenant's limits are complete: concurrency + 16
    request_cpu_ms: int = LIMIT["request_cpu_ms"].default
    request_memory: int = LIMIT["request_memory"].default  # bytes; 0 until complete: the tenant's memory


BUILTIN_LIMITS: Final = Limits()
DEFAULT_ADMIN_SOCKET: Final[str] = TOP["admin_socket"].default


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantConfig:
    """A tenant's keys (records.TENANT_KEYS), each field named and defaulted by its record."""

    name: str
    hosts: tuple[str, ...] = TENANT["hosts"].default  # lower-cased, no trailing dot; "*.suffix" kept
    default: bool = TENANT["default"].default
    critical: bool = TENANT["critical"].default  # a load failure or crash loop fails /healthz
    root: Path | None = TENANT["root"].default  # absolute, resolved; program lies inside it
    program: Path  # absolute, resolved; with `app`, its module's file or package
    packages: Path | None = TENANT["packages"].default  # absolute, resolved
    app: str = TENANT["app"].default  # "module:attribute", or "" for the program contract
    interface: str = TENANT["interface"].default
    engine: str = TENANT["engine"].default
    pool: int = TENANT["pool"].default  # 0: one per core the daemon may run on
    pool_idle_ms: int = TENANT["pool_idle_ms"].default
    verify_rewind: bool = TENANT["verify_rewind"].default
    uid: int
    gid: int
    env: tuple[tuple[str, str], ...] = TENANT["env"].default  # sorted by key
    limits: Limits  # complete: defaults merged, pids and request_memory set
    network: str = TENANT["network"].default
    files: tuple[Path, ...] = TENANT["files"].default
    warm_up: tuple[str, ...] = TENANT["warm_up"].default  # request targets, sent before the seal
    seccomp_action: str = TENANT["seccomp_action"].default

    @property
    def code(self) -> Path:
        """The tenant's own code on disk: `root`, else the program's file or
        package. Its files make the version, and the watcher polls them."""
        return self.root or self.program


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The top-level keys (records.TOP_KEYS), each field named and defaulted by its record."""

    source: str  # file path, or "<string>"; not a key
    listen_host: str = TOP["listen"].default[0]  # IPv6 without brackets
    listen_port: int = TOP["listen"].default[1]
    log_level: str = TOP["log_level"].default
    cgroup: str = TOP["cgroup"].default
    cgroup_root: str = TOP["cgroup_root"].default
    cgroup_prefix: str = TOP["cgroup_prefix"].default  # tenant cgroups are <prefix>/<tenant name>
    uid_base: int = TOP["uid_base"].default
    admin_socket: str = TOP["admin_socket"].default
    metrics_listen: tuple[str, int] | None = TOP["metrics_listen"].default
    log_format: str = TOP["log_format"].default
    access_log: bool = TOP["access_log"].default
    trusted_proxies: tuple[str, ...] = TOP["trusted_proxies"].default  # networks, "a.b.c.d/n" or "x::/n"
    zygote: bool = TOP["zygote"].default
    shutdown_grace_ms: int = TOP["shutdown_grace_ms"].default
    drain_ms: int = TOP["drain_ms"].default
    header_timeout_ms: int = TOP["header_timeout_ms"].default
    idle_timeout_ms: int = TOP["idle_timeout_ms"].default
    front_threads: int = TOP["front_threads"].default  # 0: one per core of the daemon's affinity
    front_uid: int = TOP["front_uid"].default
    defaults: Limits  # built-in defaults merged with defaults.limits
    tenants: tuple[TenantConfig, ...]

    def tenant(self, name: str) -> TenantConfig:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        raise KeyError(name)
