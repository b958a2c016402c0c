"""The mayflyd configuration's data model: what a validated config file becomes.

Configs compare by value (frozen dataclasses of tuples), so a reload can tell
which tenants changed with ==. The validator that builds them from YAML is in
validation.py; mayflyd.config re-exports every public name here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .sizes import MiB

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
    memory: int  # bytes, all of the tenant's processes together
    request_timeout_ms: int
    max_body: int  # bytes
    max_response: int  # bytes
    concurrency: int
    init_timeout_ms: int
    cpu: float  # share of one core for the whole tenant; 0 = unlimited
    pids: int  # processes of the tenant at once (host, sandboxes); 0 in defaults: concurrency + 16
    request_cpu_ms: int  # CPU time one request may use
    request_memory: int  # bytes one request may allocate; 0 in defaults: the tenant's memory


BUILTIN_LIMITS: Final = Limits(
    memory=256 * MiB,
    request_timeout_ms=5000,
    max_body=1 * MiB,
    max_response=16 * MiB,
    concurrency=32,
    init_timeout_ms=30000,
    cpu=1.0,
    pids=0,
    request_cpu_ms=5000,
    request_memory=0,
)
DEFAULT_ADMIN_SOCKET: Final = "/run/mayflyd/admin.sock"


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantConfig:
    name: str
    hosts: tuple[str, ...]  # lower-cased, trailing dot removed; "*.suffix" wildcards kept as written
    default: bool
    program: Path  # absolute, resolved
    engine: str  # fork | reset | auto (reset where the kernel can, else fork)
    pool: int    # reset engine: workers per tenant; 0 = one per core the daemon may run on
    pool_idle_ms: int  # reset engine: a worker idle this long exits, down to none; 0 = never
    verify_rewind: bool  # reset engine, tests: compare every tracked page after each rewind
    uid: int
    gid: int
    env: tuple[tuple[str, str], ...]  # sorted by key
    limits: Limits
    network: str  # none | loopback (its own, not the host's) | full
    files: tuple[Path, ...]  # extra read-only paths in the sandbox's view
    seccomp_action: str  # what a denied system call does: eperm | kill


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    source: str  # file path, or "<string>"
    listen_host: str  # IPv6 without brackets
    listen_port: int
    log_level: str
    cgroup: str
    cgroup_root: str
    cgroup_prefix: str  # tenant cgroups are <prefix>/<tenant name>
    uid_base: int
    admin_socket: str  # absolute path of the admin API's Unix socket
    metrics_listen: tuple[str, int] | None  # optional TCP address for GET /metrics
    log_format: str  # logfmt | json
    access_log: bool
    zygote: bool  # fork hosts from one pre-warmed interpreter rather than start a python each
    shutdown_grace_ms: int  # how long requests in flight may take to finish on SIGTERM
    defaults: Limits  # built-in defaults merged with defaults.limits
    tenants: tuple[TenantConfig, ...]

    def tenant(self, name: str) -> TenantConfig:
        for tenant in self.tenants:
            if tenant.name == name:
                return tenant
        raise KeyError(name)
