"""Tests of mayflyd.config: the YAML schema, its error messages and lines."""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from mayflyd.config import (
    BUILTIN_LIMITS,
    Config,
    ConfigError,
    ConfigIssue,
    Limits,
    default_config_path,
    load_config,
    parse_config,
    parse_listen,
    parse_size,
)
from mayflyd.config.addresses import parse_network
from mayflyd.config.sizes import GiB, KiB, MiB, format_size

# A valid first tenant; bad cases append keys at line 5 and beyond.
TENANT = """\
tenants:
  - name: a
    hosts: [a.example]
    program: prog.py
"""
# A tenant whose limits (line 7) or extra key (line 5) is filled in by a case.
TENANT_LIMITS = """\
tenants:
  - name: a
    hosts: [a.example]
    program: prog.py
    limits:
      max_body: 1MiB
      {}
"""
TENANT_EXTRA = """\
tenants:
  - name: a
    hosts: [a.example]
    program: prog.py
    {}
"""


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A config directory with a program file, a package and two non-programs."""
    (tmp_path / "prog.py").write_text("def handle(request): pass\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "notpkg").mkdir()
    (tmp_path / "notes.txt").write_text("")
    return tmp_path


def parse(text: str, base_dir: Path) -> Config:
    return parse_config(textwrap.dedent(text), source="test.yaml", base_dir=base_dir)


def issues_of(text: str, base_dir: Path) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    return info.value.issues


# (id, yaml, line, key, part of the message). Each config has exactly one problem.
BAD_CONFIGS = [
    (
        "top-unknown-key",
        "listn: 1.2.3.4:80\n" + TENANT,
        1,
        "listn",
        "unknown key 'listn'; did you mean 'listen'?",
    ),
    ("top-unknown-no-hint", "zzz: 1\n" + TENANT, 1, "zzz", "unknown key 'zzz'"),
    ("top-non-string-key", "1: x\n" + TENANT, 1, "", "keys must be strings, got int"),
    (
        "top-duplicate-key",
        "log_level: info\nlog_level: debug\n" + TENANT,
        2,
        "log_level",
        "duplicate key 'log_level' (first at line 1)",
    ),
    ("top-level-list", "- a\n- b\n", 1, "", "must be a mapping of keys, got list"),
    ("empty-file", "", 1, "", "the config file is empty"),
    ("comment-only-file", "# nothing here\n", 1, "", "the config file is empty"),
    (
        "listen-port-65536",
        'listen: "127.0.0.1:65536"\n' + TENANT,
        1,
        "listen",
        "between 1 and 65535, got 65536",
    ),
    ("listen-ipv6-no-brackets", 'listen: "::1:8080"\n' + TENANT, 1, "listen", "must be in brackets"),
    ("listen-not-string", "listen: 8080\n" + TENANT, 1, "listen", "must be a string, got int"),
    (
        "log-level",
        "log_level: verbose\n" + TENANT,
        1,
        "log_level",
        "must be one of debug, info, warning, error, got 'verbose'",
    ),
    ("cgroup-mode", "cgroup: v3\n" + TENANT, 1, "cgroup", "must be one of auto, v1, v2, none"),
    (
        "cgroup-root-relative",
        "cgroup_root: sys/fs/cgroup\n" + TENANT,
        1,
        "cgroup_root",
        "must be an absolute path",
    ),
    ("cgroup-prefix-absolute", "cgroup_prefix: /x\n" + TENANT, 1, "cgroup_prefix", "must be a relative path"),
    ("cgroup-prefix-dotdot", "cgroup_prefix: a/../b\n" + TENANT, 1, "cgroup_prefix", "must be a relative path"),
    ("cpu-zero", TENANT_LIMITS.format("cpu: 0"), 7, "tenants[0].limits.cpu", "must be between 0.01"),
    ("cpu-string", TENANT_LIMITS.format("cpu: half"), 7, "tenants[0].limits.cpu", "must be a number of cores"),
    ("pids-not-above-concurrency", TENANT_EXTRA.format("limits: {pids: 8, concurrency: 8}"), 5,
     "tenants[0].limits.pids", "must exceed concurrency (8)"),
    ("request-memory-over-memory", TENANT_EXTRA.format("limits: {memory: 32MiB, request_memory: 64MiB}"), 5,
     "tenants[0].limits.request_memory", "exceeds the tenant's memory (32MiB)"),
    ("request-cpu-zero", TENANT_LIMITS.format("request_cpu_ms: 0"), 7, "tenants[0].limits.request_cpu_ms",
     "must be between 1 and"),
    ("network-bad", TENANT_EXTRA.format("network: internet"), 5, "tenants[0].network",
     "must be one of none, loopback, full"),
    ("seccomp-action-bad", TENANT_EXTRA.format("seccomp_action: log"), 5, "tenants[0].seccomp_action",
     "must be one of eperm, kill"),
    ("files-relative", TENANT_EXTRA.format("files: [usr/share]"), 5, "tenants[0].files[0]",
     "must be an absolute path"),
    ("files-missing", TENANT_EXTRA.format("files: [/nonexistent-mayflyd]"), 5, "tenants[0].files[0]",
     "does not exist"),
    ("files-not-list", TENANT_EXTRA.format("files: /usr"), 5, "tenants[0].files",
     "must be a list of absolute paths"),
    ("admin-socket-relative", "admin_socket: run/a.sock\n" + TENANT, 1, "admin_socket",
     "must be an absolute path"),
    ("metrics-listen-bad", "metrics_listen: nowhere\n" + TENANT, 1, "metrics_listen", "expected HOST:PORT"),
    ("log-format-bad", "log_format: xml\n" + TENANT, 1, "log_format", "must be one of logfmt, json"),
    ("access-log-not-bool", "access_log: sometimes\n" + TENANT, 1, "access_log", "true or false"),
    ("zygote-not-bool", "zygote: fresh\n" + TENANT, 1, "zygote", "true or false"),
    ("shutdown-grace-negative", "shutdown_grace_ms: -1\n" + TENANT, 1, "shutdown_grace_ms",
     "must be between 0 and"),
    ("drain-negative", "drain_ms: -1\n" + TENANT, 1, "drain_ms", "must be between 0 and 600000, got -1"),
    ("drain-too-long", "drain_ms: 600001\n" + TENANT, 1, "drain_ms", "must be between 0 and 600000"),
    ("drain-seconds", "drain_ms: 5s\n" + TENANT, 1, "drain_ms", "must be an int, got string"),
    ("critical-not-bool", TENANT_EXTRA.format("critical: yes please"), 5, "tenants[0].critical",
     "must be true or false"),
    ("uid-base-negative", "uid_base: -5\n" + TENANT, 1, "uid_base", "must be between 1 and"),
    ("defaults-not-mapping", "defaults: 5\n" + TENANT, 1, "defaults", "must be a mapping, got int"),
    (
        "defaults-unknown-limit",
        "defaults:\n  limits:\n    concurrncy: 3\n" + TENANT,
        3,
        "defaults.limits.concurrncy",
        "did you mean 'concurrency'?",
    ),
    (
        "defaults-bad-limit",
        "defaults:\n  limits: {memory: 8MiB}\n" + TENANT,
        2,
        "defaults.limits.memory",
        "must be at least 16MiB, got '8MiB'",
    ),
    ("tenants-missing", "log_level: info\n", 1, "tenants", "missing required key 'tenants'"),
    ("tenants-empty", "tenants: []\n", 1, "tenants", "must list at least one tenant"),
    ("tenants-mapping", "tenants: {a: 1}\n", 1, "tenants", "must be a list of tenants, got mapping"),
    ("tenant-not-mapping", "tenants:\n  - just-a-name\n", 2, "tenants[0]", "must be a mapping, got string"),
    ("tenant-unknown-key", TENANT + "    engin: fork\n", 5, "tenants[0].engin", "did you mean 'engine'?"),
    (
        "tenant-duplicate-key",
        TENANT + "    program: prog.py\n",
        5,
        "tenants[0].program",
        "duplicate key 'program' (first at line 4)",
    ),
    (
        "program-missing",
        "tenants:\n  - name: a\n    hosts: [a.example]\n",
        2,
        "tenants[0].program",
        "tenant 'a' needs a `program` or an `app`",
    ),
    ("app-and-program", TENANT_EXTRA.format("app: prog:app"), 5, "tenants[0].app",
     "gives both `program` and `app`; give one of them"),
    ("app-spelling", "tenants:\n  - name: a\n    hosts: [a.example]\n    app: prog.app\n", 4, "tenants[0].app",
     "must be 'module:attribute'"),
    ("app-module-missing", "tenants:\n  - name: a\n    hosts: [a.example]\n    app: nope.wsgi:app\n", 4,
     "tenants[0].app", "module 'nope' of app 'nope.wsgi:app' does not exist"),
    ("app-module-not-package", "tenants:\n  - name: a\n    hosts: [a.example]\n    app: notpkg:app\n", 4,
     "tenants[0].app", "is not a package"),
    ("interface-without-app", TENANT_EXTRA.format("interface: wsgi"), 5, "tenants[0].interface",
     "`interface` applies only to an `app`"),
    ("interface-bad", "tenants:\n  - name: a\n    hosts: [a.example]\n    app: prog:app\n    interface: cgi\n",
     5, "tenants[0].interface", "must be one of auto, wsgi, asgi"),
    (
        "name-missing",
        "tenants:\n  - hosts: [a.example]\n    program: prog.py\n",
        2,
        "tenants[0].name",
        "missing required key 'name'",
    ),
    (
        "name-upper-case",
        "tenants:\n  - name: Hello\n    hosts: [a.example]\n    program: prog.py\n",
        2,
        "tenants[0].name",
        "got 'Hello'",
    ),
    (
        "name-too-long",
        "tenants:\n  - name: " + "a" * 64 + "\n    hosts: [a.example]\n    program: prog.py\n",
        2,
        "tenants[0].name",
        "1-63 characters",
    ),
    (
        "name-duplicate",
        TENANT + "  - name: a\n    hosts: [b.example]\n    program: prog.py\n",
        5,
        "tenants[1].name",
        "duplicate tenant name 'a' (first at line 2)",
    ),
    (
        "host-duplicate-across",
        TENANT + "  - name: b\n    hosts: [A.Example.]\n    program: prog.py\n",
        6,
        "tenants[1].hosts[0]",
        "host 'a.example' is already served by tenant 'a' (line 3)",
    ),
    (
        "wildcard-duplicate-across",
        "tenants:\n  - name: a\n    hosts: ['*.x.org']\n    program: prog.py\n"
        "  - name: b\n    hosts: ['*.X.org']\n    program: prog.py\n",
        6,
        "tenants[1].hosts[0]",
        "'*.x.org' is already served by tenant 'a'",
    ),
    (
        "host-duplicate-within",
        "tenants:\n  - name: a\n    hosts:\n      - a.example\n      - a.example\n    program: prog.py\n",
        5,
        "tenants[0].hosts[1]",
        "listed twice (first at line 4)",
    ),
    (
        "host-with-port",
        "tenants:\n  - name: a\n    hosts: ['a.example:8080']\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "host names carry no port",
    ),
    (
        "host-label-leading-dash",
        "tenants:\n  - name: a\n    hosts: [-a.example]\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "invalid label '-a'",
    ),
    (
        "host-label-64-chars",
        "tenants:\n  - name: a\n    hosts: [" + "b" * 64 + ".example]\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "invalid label",
    ),
    (
        "host-underscore",
        "tenants:\n  - name: a\n    hosts: [a_b.example]\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "invalid label 'a_b'",
    ),
    (
        "host-too-long",
        "tenants:\n  - name: a\n    hosts: [" + ".".join(["c" * 60] * 5) + "]\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "longer than 253 characters",
    ),
    (
        "host-wildcard-inside",
        "tenants:\n  - name: a\n    hosts: ['a.*.example']\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "only allowed as a leading '*.'",
    ),
    (
        "host-bare-star",
        "tenants:\n  - name: a\n    hosts: ['*']\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "wildcard",
    ),
    (
        "host-empty-label",
        "tenants:\n  - name: a\n    hosts: ['a..example']\n    program: prog.py\n",
        3,
        "tenants[0].hosts[0]",
        "invalid label ''",
    ),
    (
        "hosts-not-list",
        "tenants:\n  - name: a\n    hosts: a.example\n    program: prog.py\n",
        3,
        "tenants[0].hosts",
        "must be a list of strings, got string",
    ),
    (
        "host-not-string",
        "tenants:\n  - name: a\n    hosts: [a.example, 5]\n    program: prog.py\n",
        3,
        "tenants[0].hosts[1]",
        "must be a string, got int",
    ),
    (
        "hosts-empty-not-default",
        "tenants:\n  - name: a\n    hosts: []\n    program: prog.py\n",
        3,
        "tenants[0].hosts",
        "tenant 'a' has no hosts",
    ),
    (
        "hosts-absent-not-default",
        "tenants:\n  - name: a\n    program: prog.py\n",
        2,
        "tenants[0].hosts",
        "has no hosts",
    ),
    (
        "two-defaults",
        "tenants:\n  - name: a\n    default: true\n    program: prog.py\n"
        "  - name: b\n    default: true\n    program: prog.py\n",
        6,
        "tenants[1].default",
        "tenant 'b' cannot also be the default: tenant 'a' already is (line 3)",
    ),
    (
        "default-not-bool",
        TENANT + "    default: 'yes'\n",
        5,
        "tenants[0].default",
        "must be true or false, got string",
    ),
    (
        "program-does-not-exist",
        "tenants:\n  - name: a\n    hosts: [a.example]\n    program: nope.py\n",
        4,
        "tenants[0].program",
        "program 'nope.py' does not exist",
    ),
    (
        "program-dir-not-package",
        "tenants:\n  - name: a\n    hosts: [a.example]\n    program: notpkg\n",
        4,
        "tenants[0].program",
        "has no __init__.py",
    ),
    (
        "program-not-py",
        "tenants:\n  - name: a\n    hosts: [a.example]\n    program: notes.txt\n",
        4,
        "tenants[0].program",
        "must be a .py file or a package directory",
    ),
    (
        "program-empty",
        "tenants:\n  - name: a\n    hosts: [a.example]\n    program: ''\n",
        4,
        "tenants[0].program",
        "must not be empty",
    ),
    ("engine-unknown", TENANT + "    engine: turbo\n", 5, "tenants[0].engine",
     "must be one of auto, fork, reset, got 'turbo'"),
    ("pool-zero", TENANT + "    pool: 0\n", 5, "tenants[0].pool", "must be between 1 and 256, got 0"),
    ("pool-text", TENANT + "    pool: many\n", 5, "tenants[0].pool", "an int"),
    ("pool-idle-negative", TENANT + "    pool_idle_ms: -1\n", 5, "tenants[0].pool_idle_ms",
     "must be between 0 and 86400000, got -1"),
    ("verify-rewind-text", TENANT + "    verify_rewind: maybe\n", 5, "tenants[0].verify_rewind", "true or false"),
    ("uid-zero", TENANT + "    uid: 0\n", 5, "tenants[0].uid", "must not be 0 (root)"),
    (
        "uid-too-big",
        TENANT + "    uid: 2147483647\n",
        5,
        "tenants[0].uid",
        "must be between 1 and 2147483646",
    ),
    ("uid-string", TENANT + "    uid: '1000'\n", 5, "tenants[0].uid", "must be an int, got string"),
    ("gid-negative", TENANT + "    gid: -1\n", 5, "tenants[0].gid", "must be between 1 and"),
    (
        "uid-collision-explicit",
        TENANT
        + "    uid: 300000\n  - name: b\n    hosts: [b.example]\n    program: prog.py\n    uid: 300000\n",
        9,
        "tenants[1].uid",
        "tenant 'b' gets uid 300000, already used by tenant 'a' (line 5)",
    ),
    (
        "env-not-mapping",
        TENANT + "    env: [A]\n",
        5,
        "tenants[0].env",
        "must be a mapping of strings to strings, got list",
    ),
    (
        "env-int-value",
        TENANT + "    env:\n      PORT: 80\n",
        6,
        "tenants[0].env.PORT",
        "must be a string, got int",
    ),
    (
        "env-bool-value",
        TENANT + "    env:\n      DEBUG: true\n",
        6,
        "tenants[0].env.DEBUG",
        "must be a string, got bool",
    ),
    (
        "env-bad-name",
        TENANT + "    env:\n      1ABC: x\n",
        6,
        "tenants[0].env.1ABC",
        "variable names must match",
    ),
    ("env-nul", TENANT + '    env:\n      A: "x\\0y"\n', 6, "tenants[0].env.A", "NUL"),
    (
        "env-duplicate",
        TENANT + "    env:\n      A: x\n      A: y\n",
        7,
        "tenants[0].env.A",
        "duplicate key 'A' (first at line 6)",
    ),
    ("limits-not-mapping", TENANT + "    limits: 5\n", 5, "tenants[0].limits", "must be a mapping, got int"),
    (
        "limits-unknown",
        TENANT + "    limits:\n      memroy: 64MiB\n",
        6,
        "tenants[0].limits.memroy",
        "unknown key 'memroy'; did you mean 'memory'?",
    ),
    (
        "memory-too-small",
        TENANT + "    limits:\n      memory: 1MiB\n",
        6,
        "tenants[0].limits.memory",
        "must be at least 16MiB, got '1MiB'",
    ),
    ("memory-bool", TENANT + "    limits: {memory: true}\n", 5, "tenants[0].limits.memory", "got bool"),
    ("memory-float", TENANT + "    limits: {memory: 1.5}\n", 5, "tenants[0].limits.memory", "got float"),
    (
        "memory-lowercase-unit",
        TENANT + "    limits: {memory: 64mb}\n",
        5,
        "tenants[0].limits.memory",
        "unknown size unit 'mb'",
    ),
    (
        "max-body-too-big",
        TENANT + "    limits: {max_body: 2GiB}\n",
        5,
        "tenants[0].limits.max_body",
        "must be at most 1GiB, got '2GiB'",
    ),
    (
        "max-body-fraction",
        TENANT + "    limits: {max_body: 1.3K}\n",
        5,
        "tenants[0].limits.max_body",
        "not a whole number of bytes",
    ),
    (
        "max-response-zero",
        TENANT + "    limits: {max_response: 0}\n",
        5,
        "tenants[0].limits.max_response",
        "must be at least 1B, got 0",
    ),
    (
        "timeout-zero",
        TENANT + "    limits: {request_timeout_ms: 0}\n",
        5,
        "tenants[0].limits.request_timeout_ms",
        "must be between 1 and 3600000, got 0",
    ),
    (
        "init-timeout-string",
        TENANT + "    limits: {init_timeout_ms: 30s}\n",
        5,
        "tenants[0].limits.init_timeout_ms",
        "must be an int, got string",
    ),
    (
        "concurrency-too-big",
        TENANT + "    limits: {concurrency: 100001}\n",
        5,
        "tenants[0].limits.concurrency",
        "must be between 1 and 100000",
    ),
    (
        "limits-duplicate",
        TENANT + "    limits:\n      memory: 64MiB\n      memory: 128MiB\n",
        7,
        "tenants[0].limits.memory",
        "duplicate key 'memory' (first at line 6)",
    ),
    ("yaml-merge-key", "<<: {log_level: info}\n" + TENANT, 1, "<<", "merge keys ('<<') are not supported"),
]


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config(base: Path, text: str, line: int, key: str, message: str) -> None:
    issues = issues_of(text, base)
    assert len(issues) == 1, issues
    issue = issues[0]
    assert (issue.file, issue.line, issue.key) == ("test.yaml", line, key)
    assert message in issue.message


def test_all_issues_are_collected_and_formatted(base: Path) -> None:
    text = (
        TENANT
        + "    engine: turbo\n    limits:\n      memory: 1MiB\n"
        + "  - name: a\n    hosts: [a.example]\n    program: prog.py\n"
    )
    with pytest.raises(ConfigError) as info:
        parse(text, base)
    assert [(i.line, i.key) for i in info.value.issues] == [
        (5, "tenants[0].engine"),
        (7, "tenants[0].limits.memory"),
        (8, "tenants[1].name"),
        (9, "tenants[1].hosts[0]"),
    ]
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert lines[1] == "test.yaml:7: tenants[0].limits.memory: must be at least 16MiB, got '1MiB'"


def test_config_error_pickles(base: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse("tenants: []\n", base)
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.issues == info.value.issues
    assert str(copy) == str(info.value)


def test_drain_ms_and_critical(base: Path) -> None:
    config = parse("drain_ms: 1500\n" + TENANT_EXTRA.format("critical: true"), base)
    assert config.drain_ms == 1500 and config.tenants[0].critical is True


# ---- good configs


def test_minimal(base: Path) -> None:
    config = parse(TENANT, base)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8080)
    assert (config.log_level, config.cgroup, config.cgroup_root) == ("info", "auto", "/sys/fs/cgroup")
    assert config.uid_base == 200000
    assert (config.admin_socket, config.metrics_listen) == ("/run/mayflyd/admin.sock", None)
    assert (config.log_format, config.access_log, config.shutdown_grace_ms) == ("logfmt", False, 10000)
    assert config.drain_ms == 0
    assert config.zygote is True
    assert config.defaults == BUILTIN_LIMITS
    assert config.source == "test.yaml"
    (tenant,) = config.tenants
    assert tenant.name == "a"
    assert tenant.hosts == ("a.example",)
    assert tenant.default is False
    assert tenant.critical is False
    assert tenant.program == (base / "prog.py").resolve()
    assert tenant.engine == "auto" and tenant.pool == 0 and not tenant.verify_rewind
    assert tenant.pool_idle_ms == 60_000
    assert tenant.gid == tenant.uid
    assert tenant.env == ()
    # pids and request_memory follow concurrency and memory when unset.
    assert tenant.limits == dataclasses.replace(BUILTIN_LIMITS, pids=64, request_memory=256 * MiB)
    assert (tenant.network, tenant.files, tenant.seccomp_action) == ("none", (), "eperm")
    assert config.tenant("a") is tenant
    with pytest.raises(KeyError):
        config.tenant("b")


def test_builtin_limits() -> None:
    assert BUILTIN_LIMITS == Limits(
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


FULL = """\
listen: "[::1]:9090"
log_level: debug
cgroup: v2
cgroup_root: /sys/fs/cgroup/mayflyd.slice
uid_base: 300000
defaults:
  limits:
    memory: 512MiB
    request_timeout_ms: 1000
    max_body: 2MiB
    max_response: 32MiB
    concurrency: 8
    init_timeout_ms: 10000
    cpu: 2
    pids: 20
    request_cpu_ms: 700
    request_memory: 64MiB
tenants:
  - name: hello
    hosts: [Hello.Localhost., "*.Example.com", localhost]
    default: true
    program: pkg
    engine: fork
    uid: 201000
    gid: 202000
    env: {ZED: "z", ALPHA: "a", EMPTY: ""}
    network: loopback
    files: [/usr/share]
    seccomp_action: kill
    limits:
      memory: 128MiB
      request_timeout_ms: 2000
      max_body: 0
      max_response: 1GiB
      concurrency: 100000
      init_timeout_ms: 3600000
      cpu: 0.25
      pids: 100001
      request_cpu_ms: 100
      request_memory: 100MiB
"""


def test_full(base: Path) -> None:
    config = parse(FULL, base)
    assert (config.listen_host, config.listen_port) == ("::1", 9090)
    assert (config.log_level, config.cgroup) == ("debug", "v2")
    assert config.cgroup_root == "/sys/fs/cgroup/mayflyd.slice"
    assert config.uid_base == 300000
    assert config.defaults == Limits(
        memory=512 * MiB,
        request_timeout_ms=1000,
        max_body=2 * MiB,
        max_response=32 * MiB,
        concurrency=8,
        init_timeout_ms=10000,
        cpu=2.0,
        pids=20,
        request_cpu_ms=700,
        request_memory=64 * MiB,
    )
    tenant = config.tenant("hello")
    assert tenant.hosts == ("hello.localhost", "*.example.com", "localhost")
    assert tenant.default is True
    assert tenant.program == (base / "pkg").resolve()
    assert (tenant.uid, tenant.gid) == (201000, 202000)
    assert tenant.env == (("ALPHA", "a"), ("EMPTY", ""), ("ZED", "z"))
    assert tenant.limits == Limits(
        memory=128 * MiB,
        request_timeout_ms=2000,
        max_body=0,
        max_response=1 * GiB,
        concurrency=100000,
        init_timeout_ms=3600000,
        cpu=0.25,
        pids=100001,
        request_cpu_ms=100,
        request_memory=100 * MiB,
    )
    assert (tenant.network, tenant.files, tenant.seccomp_action) == ("loopback", (Path("/usr/share"),), "kill")


def test_app_names_its_modules_file_or_package(base: Path) -> None:
    config = parse("tenants:\n  - {name: a, hosts: [a], app: 'prog:application'}\n"
                   "  - {name: b, hosts: [b], app: 'pkg.site.wsgi:app', interface: wsgi}\n", base)
    a, b = config.tenants
    assert (a.program, a.app, a.interface) == (base / "prog.py", "prog:application", "auto")
    assert (b.program, b.app, b.interface) == (base / "pkg", "pkg.site.wsgi:app", "wsgi")
    assert parse(TENANT, base).tenants[0].app == ""


def test_default_tenant_needs_no_hosts(base: Path) -> None:
    config = parse("tenants:\n  - name: fallback\n    default: true\n    program: prog.py\n", base)
    assert config.tenants[0].hosts == ()
    assert config.tenants[0].default is True


def test_defaults_merge_key_by_key(base: Path) -> None:
    text = """\
    defaults:
      limits: {memory: 64MiB, concurrency: 4}
    tenants:
      - name: a
        hosts: [a.example]
        program: prog.py
        limits: {concurrency: 2, max_body: 10kB}
      - name: b
        hosts: [b.example]
        program: prog.py
    """
    config = parse(text, base)
    assert config.defaults == Limits(
        memory=64 * MiB,
        request_timeout_ms=5000,
        max_body=1 * MiB,
        max_response=16 * MiB,
        concurrency=4,
        init_timeout_ms=30000,
        cpu=1.0,
        pids=0,
        request_cpu_ms=5000,
        request_memory=0,
    )
    assert config.tenant("a").limits == Limits(
        memory=64 * MiB,  # from defaults
        request_timeout_ms=5000,  # built in
        max_body=10_000,  # own
        max_response=16 * MiB,
        concurrency=2,  # own beats defaults
        init_timeout_ms=30000,
        cpu=1.0,
        pids=64,  # follows concurrency
        request_cpu_ms=5000,
        request_memory=64 * MiB,  # follows memory
    )
    assert config.tenant("b").limits == dataclasses.replace(config.defaults, pids=64, request_memory=64 * MiB)


def test_configs_compare_by_value_for_reload(base: Path) -> None:
    first, second = parse(FULL, base), parse(FULL, base)
    assert first == second
    assert hash(first.tenants) == hash(second.tenants)
    changed = parse(FULL.replace("concurrency: 100000", "concurrency: 99"), base)
    assert changed.tenant("hello") != first.tenant("hello")


# ---- sizes

GOOD_SIZES = [
    (0, 0),
    (4096, 4096),
    ("100B", 100),
    ("100", 100),
    ("512KiB", 512 * KiB),
    ("64K", 64 * KiB),
    ("128MiB", 128 * MiB),
    ("64M", 64 * MiB),
    ("1GiB", GiB),
    ("1G", GiB),
    ("1.5GiB", 3 * GiB // 2),
    ("2TiB", 2 * 1024 * GiB),
    ("500kB", 500_000),
    ("10MB", 10_000_000),
    ("1GB", 1_000_000_000),
    ("128 MiB", 128 * MiB),
    (" 1.5K ", 1536),
]


@pytest.mark.parametrize(("value", "expected"), GOOD_SIZES)
def test_parse_size_good(value: object, expected: int) -> None:
    assert parse_size(value) == expected


BAD_SIZES = [
    (True, "got bool"),
    (-1, "must not be negative"),
    (1.5, "got float"),
    (None, "got NoneType"),
    ("", "not a size"),
    ("MiB", "not a size"),
    ("-1MiB", "not a size"),
    ("1.MiB", "not a size"),
    ("64mb", "unknown size unit 'mb'"),
    ("64KB", "unknown size unit 'KB'"),
    ("64mib", "unknown size unit 'mib'"),
    ("1.3K", "not a whole number of bytes"),
    ("0.5B", "not a whole number of bytes"),
    ("1e6", "not a size"),
]


@pytest.mark.parametrize(("value", "message"), BAD_SIZES)
def test_parse_size_bad(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert message in str(info.value)


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1, 1024, 16 * MiB, GiB, 1536)] == [
        "0B",
        "1B",
        "1KiB",
        "16MiB",
        "1GiB",
        "1536B",
    ]


# ---- listen

GOOD_LISTEN = [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:1", ("0.0.0.0", 1)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:80", ("::", 80)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
]


@pytest.mark.parametrize(("value", "expected"), GOOD_LISTEN)
def test_parse_listen_good(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


BAD_LISTEN = [
    ("127.0.0.1:0", "between 1 and 65535, got 0"),
    ("127.0.0.1:65536", "between 1 and 65535, got 65536"),
    ("[::1]:0", "between 1 and 65535, got 0"),
    ("127.0.0.1", "expected HOST:PORT"),
    ("127.0.0.1:", "port must be a number"),
    ("127.0.0.1:http", "port must be a number"),
    ("127.0.0.1:-1", "port must be a number"),
    (":8080", "missing host"),
    ("::1:8080", "must be in brackets"),
    ("[::1:8080", "missing ']'"),
    ("[::1]8080", "expected [IPv6]:PORT"),
    ("[127.0.0.1]:80", "is not an IPv6 address"),
    ("1.2.3.999:80", "is not an IPv4 address"),
    ("bad_host:80", "invalid label"),
]


@pytest.mark.parametrize(("value", "message"), BAD_LISTEN)
def test_parse_listen_bad(value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_listen(value)
    assert message in str(info.value)


def test_trusted_proxies_are_kept_as_networks(base: Path) -> None:
    assert parse(TENANT, base).trusted_proxies == ()
    config = parse('trusted_proxies: ["10.0.0.0/8", "192.0.2.7", "2001:DB8::/32", "::1"]\n' + TENANT, base)
    assert config.trusted_proxies == ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32", "::1/128")


@pytest.mark.parametrize(("value", "message"), [
    ("10.0.0.1/8", "host bits set past the /8 prefix: write the network '10.0.0.0/8' or the single address"),
    ("2001:db8::1/32", "write the network '2001:db8::/32'"),
    ("10.0.0.0/33", "must be a number from 0 to 32"),
    ("10.0.0.0/x", "must be a number from 0 to 32"),
    ("example.com", "is not an IPv4 or IPv6 address"),
    ("[::1]", "without brackets"),
    ("fe80::1%eth0", "with a zone"),
    ("", "must be an IP address or network"),
])
def test_parse_network_bad(value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_network(value)
    assert message in str(info.value)


def test_too_many_trusted_proxies(base: Path) -> None:
    many = ", ".join(f'"10.0.{i // 256}.{i % 256}"' for i in range(1025))
    (issue,) = issues_of(f"trusted_proxies: [{many}]\n" + TENANT, base)
    assert (issue.key, issue.message) == ("trusted_proxies", "at most 1024 networks, got 1025")


# ---- uid derivation


def test_uid_derivation_is_stable(base: Path) -> None:
    config = parse(
        "uid_base: 100000\ntenants:\n  - name: hello\n    hosts: [h]\n    program: prog.py\n    gid: 5000\n",
        base,
    )
    tenant = config.tenant("hello")
    assert tenant.uid == 100000 + zlib.crc32(b"hello") % 65536
    assert tenant.uid == 142630  # pinned: changing the formula changes file owners on disk
    assert tenant.gid == 5000


def test_derived_uid_collision_names_both_tenants(base: Path) -> None:
    # "tbyt" and "tdaa" have the same crc32 modulo 65536.
    assert zlib.crc32(b"tbyt") % 65536 == zlib.crc32(b"tdaa") % 65536
    text = ("tenants:\n  - name: tbyt\n    hosts: [a]\n    program: prog.py\n"
            "  - name: tdaa\n    hosts: [b]\n    program: prog.py\n")
    (issue,) = issues_of(text, base)
    assert (issue.line, issue.key) == (5, "tenants[1].uid")
    assert "tenant 'tdaa'" in issue.message and "tenant 'tbyt' (line 2)" in issue.message
    assert "explicit uid" in issue.message
    # The suggested fix works.
    config = parse(text + "    uid: 250000\n", base)
    assert config.tenant("tdaa").uid == 250000


# ---- files and paths


def test_program_relative_to_config_file(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf_dir = base / "etc"
    (conf_dir / "programs").mkdir(parents=True)
    (conf_dir / "programs" / "app.py").write_text("")
    path = conf_dir / "mayflyd.yaml"
    path.write_text("tenants:\n  - name: app\n    hosts: [app]\n    program: programs/app.py\n")
    monkeypatch.chdir(base)  # the current directory must not matter
    config = load_config(path)
    assert config.tenant("app").program == (conf_dir / "programs" / "app.py").resolve()
    assert config.source == str(path)


def test_program_absolute(base: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    text = f"tenants:\n  - name: a\n    hosts: [a]\n    program: {base / 'prog.py'}\n"
    config = parse_config(text, source="<string>", base_dir=elsewhere)
    assert config.tenant("a").program == (base / "prog.py").resolve()


def test_load_config_real_file(base: Path) -> None:
    path = base / "mayflyd.yaml"
    path.write_text(FULL)
    assert load_config(str(path)) == parse_config(FULL, source=str(path), base_dir=base)


def test_load_config_errors_name_the_file(base: Path) -> None:
    path = base / "bad.yaml"
    path.write_text(TENANT + "    engine: turbo\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value) == f"{path}:5: tenants[0].engine: must be one of auto, fork, reset, got 'turbo'"
    )


def test_load_config_missing_file(base: Path) -> None:
    path = base / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.key) == (str(path), 0, "")
    assert "cannot read" in issue.message
    assert str(info.value).startswith(f"{path}: cannot read")


def test_yaml_syntax_error_line(base: Path) -> None:
    text = "listen: 127.0.0.1:8080\ntenants:\n  - name: a\n    hosts: [a, b\n    program: prog.py\n"
    (issue,) = issues_of(text, base)
    assert issue.line == 5
    assert issue.key == ""
    assert issue.message.startswith("YAML syntax error:")


def test_yaml_syntax_error_bad_indent(base: Path) -> None:
    text = "tenants:\n  - name: a\n    hosts: [a]\n   program: prog.py\n"
    (issue,) = issues_of(text, base)
    assert issue.line == 4
    assert "YAML syntax error" in issue.message


def test_two_yaml_documents_are_an_error(base: Path) -> None:
    (issue,) = issues_of(TENANT + "---\n" + TENANT, base)
    assert issue.line == 5
    assert "single document" in issue.message


def test_default_config_path() -> None:
    path = default_config_path()
    assert path.name == "mayflyd.yaml"
    assert path.parent.name == "default_config"
    assert path.parent.parent.name == "mayflyd"


def test_the_default_pool_is_the_cores_the_daemon_may_run_on() -> None:
    """Not os.cpu_count(): a daemon pinned to one core gets one worker per tenant."""
    from mayflyd.supervisor.tenant import default_pool
    assert default_pool() == len(os.sched_getaffinity(0))
    pinned = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c",
                             "from mayflyd.supervisor.tenant import default_pool; print(default_pool())"],
                            capture_output=True, text=True, check=True)
    assert pinned.stdout.strip() == "1"


# ---- warm-up requests


def test_warm_up_targets(base: Path) -> None:
    config = parse(TENANT + "    warm_up: ['/', '/items/1?q=x&y=%20']\n", base)
    assert config.tenants[0].warm_up == ("/", "/items/1?q=x&y=%20")
    assert parse(TENANT, base).tenants[0].warm_up == ()


@pytest.mark.parametrize(("value", "message"), [
    ("'/'", "must be a list of request targets"),
    ("['items']", "must be a path starting with '/'"),
    ("['/a b']", "without spaces or '#'"),
    ("['/a#b']", "without spaces or '#'"),
    ("['/caf\u00e9']", "printable ASCII"),
    ("[" + ", ".join(["'/'"] * 17) + "]", "at most 16 targets, got 17"),
])
def test_warm_up_errors(base: Path, value: str, message: str) -> None:
    (issue,) = issues_of(TENANT + f"    warm_up: {value}\n", base)
    assert issue.key.startswith("tenants[0].warm_up") and message in issue.message
