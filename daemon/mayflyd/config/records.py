"""One record per config key: its name, kind, default, range and meaning.

The parser takes its known keys, required keys, type and range checks from
these tables; the model's dataclass defaults are read from them; and the key
tables of docs/config.md are generated from them (mayflyd.config.docs). A
new key is one record here, one field in model.py and, if its kind is new,
one reader in the parser. What a kind means in YAML (e.g. "size" accepts
128MiB) is written once, in the parser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from .sizes import GiB, MiB

__all__ = [
    "DEFAULTS_KEYS",
    "LIMIT",
    "LIMIT_KEYS",
    "MAX_ID",
    "NO_DEFAULT",
    "TENANT",
    "TENANT_KEYS",
    "TOP",
    "TOP_KEYS",
    "UID_SPAN",
    "Key",
    "Kind",
    "by_name",
]

# How a value is written and checked. bool, int, size, cores and choice use
# the record's range or choices; the others name a check of their own.
Kind = Literal[
    "bool", "int", "id", "size", "cores", "choice",
    "listen", "networks", "abs_path", "socket_path", "cgroup_prefix",
    "tenant_name", "host_names", "program", "app", "directory", "packages", "env", "paths", "targets",
    "mapping", "limits", "tenants",
]  # fmt: skip


class _NoDefault:
    """The default of a key that is required or derived from other keys."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Final = _NoDefault()


@dataclass(frozen=True, slots=True, kw_only=True)
class Key:
    name: str
    kind: Kind
    doc: str  # the meaning, in Markdown, for docs/config.md
    # The model's value when the key is absent (e.g. bytes for a size), or
    # NO_DEFAULT: then the key is required or its value derived elsewhere.
    default: Any = NO_DEFAULT
    required: bool = False
    shown_default: str = ""  # the docs' words for a derived default
    low: float | None = None  # inclusive range of int, id, size and cores
    high: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""  # a regular expression the whole value (or env name) matches
    range_note: str = ""  # a rule across keys, or a check the kind makes, for the docs
    keys: tuple[Key, ...] = ()  # the keys of a "mapping"
    fields: tuple[str, ...] = ()  # model fields it fills, when not the one of its name


MAX_ID: Final = 2**31 - 2  # 2^31-1 is reserved by some tools as "no id"
UID_SPAN: Final = 65536  # derived uids are uid_base + crc32(name) % UID_SPAN
MAX_WARM_UP_TARGETS: Final = 16
MAX_NETWORKS: Final = 1024  # trusted_proxies: the front end's MF_ROUTE_MAX_PROXIES
WARM_UP_ROUNDS: Final = 16  # requests per warm-up target: CPython specialises after a few calls
_HOUR_MS: Final = 3_600_000

LIMIT_KEYS: Final = (
    Key(name="memory", kind="size", default=256 * MiB, low=16 * MiB,
        doc="Total memory of the tenant: all of its processes together."),
    Key(name="request_timeout_ms", kind="int", default=5000, low=1, high=_HOUR_MS,
        doc="Wall-clock time allowed for one request."),
    Key(name="max_body", kind="size", default=1 * MiB, low=0, high=1 * GiB,
        doc="Largest request body accepted."),
    Key(name="max_response", kind="size", default=16 * MiB, low=1, high=1 * GiB,
        doc="Largest response body a program may return."),
    Key(name="concurrency", kind="int", default=32, low=1, high=100_000,
        doc="Requests of this tenant handled at once (the fork engine runs at most 4096 at once,"
            " the reset engine at most its `pool`); more wait in the `queue`."),
    Key(name="queue", kind="int", default=256, low=0, high=100_000,
        doc="Requests that wait, first come first served, while `concurrency` are running; beyond,"
            " a request is refused with 503 and `Retry-After: 1`. A waiting request's time counts"
            " against its `request_timeout_ms`."),
    Key(name="init_timeout_ms", kind="int", default=30000, low=1, high=_HOUR_MS,
        doc="Time allowed to import the program and run its `on_init()`."),
    Key(name="cpu", kind="cores", default=1.0, low=0.01, high=1024.0,
        doc="CPU share of the whole tenant (cgroup cpu quota), e.g. `0.5` for half a core."),
    # 0 (and request_memory's 0) means: follow the other limits, so that
    # raising concurrency or lowering memory alone never makes a config invalid.
    Key(name="pids", kind="int", default=0, shown_default="`concurrency + 16`, at least 64",
        low=2, high=1_000_000, range_note="more than `concurrency`",
        doc="Processes of the tenant at once: its host and one per request in flight"
            " (cgroup pids limit, and RLIMIT_NPROC for the tenant's uid)."),
    Key(name="request_cpu_ms", kind="int", default=5000, low=1, high=_HOUR_MS,
        doc="CPU time one request may use; over it the sandbox is killed and the client gets 504."),
    Key(name="request_memory", kind="size", default=0, shown_default="the tenant's `memory`",
        low=1 * MiB, range_note="at most `memory`",
        doc="Memory one request may allocate beyond its host's (RLIMIT_AS); over it the program"
            " sees MemoryError (a 500 unless it handles it)."),
)  # fmt: skip

DEFAULTS_KEYS: Final = (
    Key(name="limits", kind="limits", shown_default="built-in values",
        doc="Merged key by key over the built-in defaults."),
)

TOP_KEYS: Final = (
    Key(name="listen", kind="listen", default=("127.0.0.1", 8080), fields=("listen_host", "listen_port"),
        range_note="port 1..65535",
        doc="Address the HTTP front end listens on. The host is an IPv4 address, a host name, or a"
            " bracketed IPv6 address (`[::]:8080` for all addresses)."),
    Key(name="log_level", kind="choice", default="info", choices=("debug", "info", "warning", "error"),
        doc="Lowest level logged. Lower case only."),
    Key(name="cgroup", kind="choice", default="auto", choices=("auto", "v1", "v2", "none"),
        doc="Which cgroup hierarchy enforces the tenants' memory limits. `auto` detects it."
            " With `none`, memory limits are not enforced."),
    Key(name="cgroup_root", kind="abs_path", default="/sys/fs/cgroup",
        doc="For v1, the directory that holds the controller mounts. For v2, the delegated cgroup2"
            " directory mayflyd creates the tenant groups in."),
    Key(name="cgroup_prefix", kind="cgroup_prefix", default="mayflyd",
        pattern=r"[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,3}",
        range_note="1-4 names of `[A-Za-z0-9_.-]`, no `..`",
        doc="Tenant cgroups are created as `<prefix>/<tenant name>` under each controller (v1) or"
            " under `cgroup_root` (v2). Give two daemons on one machine different prefixes."),
    Key(name="uid_base", kind="int", default=200000, low=1, high=MAX_ID - UID_SPAN,
        doc="The first uid/gid used for tenants that have no explicit `uid`"
            " (see [uids](#uids-and-gids))."),
    Key(name="admin_socket", kind="socket_path", default="/run/mayflyd/admin.sock",
        range_note="at most 107 bytes",
        shown_default="`/run/mayflyd/admin.sock` as root; without root `$XDG_RUNTIME_DIR/mayflyd/admin.sock`,"
                      " else `/tmp/mayflyd-UID/admin.sock`",
        doc="The admin API's Unix socket (status, reload, metrics). Created mode 0600; a missing"
            " parent directory is created 0700, an existing one must belong to the daemon's user or root"
            " and not be writable by group or others."),
    Key(name="metrics_listen", kind="listen", default=None, range_note="port 1..65535",
        doc="Also serve `GET /metrics` and `GET /healthz` over TCP here (no admin route)."),
    Key(name="log_format", kind="choice", default="logfmt", choices=("logfmt", "json"),
        doc="One event per line on stderr, in this format."),
    Key(name="access_log", kind="bool", default=False,
        doc="One log line per request (method, path, status, duration, tenant, request id, client address)."),
    Key(name="trusted_proxies", kind="networks", default=(), range_note="at most 1024; no host bits past the prefix",
        doc="Proxies (IPv4 or IPv6 addresses, or networks like `10.0.0.0/8`) whose word on the client"
            " is believed: a connection from one may begin with a PROXY protocol header (v1 or v2), and"
            " a request from one names its client in `Forwarded` or `X-Forwarded-For`"
            " ([HTTP](http.md#clients-behind-a-proxy)). The client's address becomes `request.client`"
            " (`REMOTE_ADDR`) and the access log's `client`. Empty: nobody is trusted."),
    Key(name="header_timeout_ms", kind="int", default=60_000, low=1, high=_HOUR_MS,
        doc="Time a client has to send a request's head, from its first byte (and a new"
            " connection's first byte), and then its body: else `408` and the connection is closed."
            " Takes effect at the next restart."),
    Key(name="idle_timeout_ms", kind="int", default=75_000, low=1, high=_HOUR_MS,
        doc="How long a keep-alive connection may stay idle between requests (or not read its"
            " answer) before it is closed. Takes effect at the next restart."),
    Key(name="front_threads", kind="int", default=0, shown_default="one per core the daemon may run on",
        low=1, high=1024,
        doc="Event loops of the HTTP front end, one thread each. Takes effect at the next restart."),
    Key(name="front_uid", kind="id", default=65534, low=1, high=MAX_ID,
        doc="The unprivileged uid (and gid) the HTTP front end runs as when the daemon runs as root:"
            " the process that reads clients' bytes holds no capability. Takes effect at the next restart."),
    Key(name="shutdown_grace_ms", kind="int", default=10000, low=0, high=_HOUR_MS,
        doc="On SIGTERM/SIGINT, how long requests in flight may take to finish."
            " A second signal stops at once."),
    Key(name="drain_ms", kind="int", default=0, low=0, high=600_000,
        doc="On SIGTERM/SIGINT, how long the daemon first goes on accepting and serving as usual while"
            " `GET /healthz` answers 503 `draining`, so that a load balancer takes the node out before"
            " it stops listening; then it stops as `shutdown_grace_ms` says. During the drain, answers"
            " carry `Connection: close`, so that keep-alive clients reconnect (to another node). A"
            " second signal ends the drain at once. A reload changes it for the next stop. Under systemd the"
            " daemon extends its stop timeout by as much ([service](service.md#health-checks-and-draining))."),
    Key(name="zygote", kind="bool", default=True,
        doc="Fork each tenant's host from one pre-warmed interpreter: an idle fork-engine tenant"
            " then costs about 1.9 MiB and starts in about 10 ms, instead of a whole Python"
            " (about 12.4 MiB, 65 to 81 ms). Hosts forked from one zygote share its address-space"
            " layout and string-hash secret; `false` gives every host its own"
            " ([design](design.md#hosts-forked-from-the-zygote)). Takes effect at the next restart."),
    Key(name="defaults", kind="mapping", keys=DEFAULTS_KEYS, shown_default="none",
        doc="Holds only `limits`. It overrides the built-in limits for every tenant."),
    Key(name="tenants", kind="tenants", required=True,
        doc="The programs to serve."),
)  # fmt: skip

TENANT_KEYS: Final = (
    Key(name="name", kind="tenant_name", required=True, pattern=r"[a-z0-9][a-z0-9_-]{0,62}",
        doc="Unique name. It appears in logs, metrics, cgroup names and the status API."),
    Key(name="hosts", kind="host_names", default=(),
        doc="Host names this tenant serves, matched against the request's `Host` (see"
            " [host names](#host-names)). The list may be empty only for the default tenant."
            " No host may belong to two tenants."),
    Key(name="default", kind="bool", default=False,
        doc="Serves requests whose host matches no tenant. At most one tenant may be the default."),
    Key(name="critical", kind="bool", default=False,
        doc="Whether the node is unhealthy (`GET /healthz` answers 503) while this tenant's program"
            " cannot load or its host is in a crash loop. Any tenant that is starting or restarting"
            " its host counts against the node; a non-critical tenant that is down is only reported."),
    Key(name="root", kind="directory", default=None,
        doc="A directory holding the tenant's code, shown read-only in its sandbox and first on its"
            " `sys.path`: a program of several files imports its siblings (`import helpers`). With"
            " `root`, `program` and `app` are looked for inside it (a relative `program` is relative"
            " to `root`) and must not lead out of it. A relative `root` is resolved from the config"
            " file's directory. Without `root`, the sandbox sees only the program's file or package."),
    Key(name="program", kind="program", shown_default="required unless `app` is given",
        doc="The tenant's program: a `.py` file, or a directory that contains `__init__.py`. A"
            " relative path is resolved from the config file's directory (from `root` when given),"
            " not from the current directory. The program must exist when the config is loaded. A"
            " tenant gives either `program` or `app`."),
    Key(name="app", kind="app", default="", shown_default="none",
        pattern=r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*",
        range_note="`module:attribute`",
        doc="A WSGI or ASGI app to serve instead of a `program`, spelt `module:attribute` as gunicorn"
            " and uvicorn spell it (`hello:app`, `site.wsgi:application`). The module's first name is"
            " a `.py` file or a package directory next to the config file, or inside `root` when given;"
            " that file or package (or `root`) is what the tenant's sandbox sees, as a `program`"
            " would be. The app is imported and built once in the host, before the seal; every request"
            " then runs in its own sandbox. See [WSGI and ASGI apps](design.md#wsgi-and-asgi-apps)."),
    Key(name="interface", kind="choice", default="auto", choices=("auto", "wsgi", "asgi"),
        doc="How `app` is called. `auto`: by the callable's signature (an `async def`, or three"
            " parameters, is ASGI; two are WSGI). An explicit value the signature contradicts fails"
            " the load."),
    Key(name="packages", kind="packages", default=None,
        range_note="installed by the daemon's Python version",
        doc="A directory of installed packages (`pip install --target DIR`, or a venv's"
            " `site-packages`) that only this tenant imports. It is shown read-only in the sandbox at"
            " the same path and put on `sys.path` ahead of the daemon's own `site-packages`, after"
            " `root`, before the program or app is imported. Install it with the same"
            " Python version as the daemon: a directory holding compiled modules, wheel tags or a"
            " `pythonX.Y` path of another version is refused. A relative path is resolved from the"
            " config file's directory. See [packages](#packages-of-a-tenant)."),
    Key(name="warm_up", kind="targets", default=(), shown_default="none",
        range_note=f"at most {MAX_WARM_UP_TARGETS}; each `/path` or `/path?query`",
        doc="Requests the host sends its own program or app before the seal, each"
            f" {WARM_UP_ROUNDS} times: `GET` with the tenant's first host name, answers discarded. Code a"
            " sandbox starts cold (a framework's lazy set-up, its routing tables, CPython's"
            " specialised bytecode) then starts warm in every request: a Flask hello world serves"
            " several times faster. They are real requests of the program's, in the host: what they"
            " change stays for every request (a counter they raise, a file they write), so name only"
            " paths whose GET has no effect. See [warm-up requests](design.md#warm-up-requests)."),
    Key(name="engine", kind="choice", default="auto", choices=("auto", "fork", "reset"),
        doc="How each request gets its sandbox. `fork`: a copy-on-write fork of the sealed host per"
            " request. `reset`: a pool of workers forked once, each rewound to its snapshot after every"
            " request ([docs/reset-engine.md](reset-engine.md)); it needs Linux 6.7+ (userfaultfd async"
            " write-protect, `PAGEMAP_SCAN`), and on an older kernel the tenant fails to start with that"
            " reason. `auto`: `reset` where the kernel can, else `fork`; the daemon logs which at start."
            " Use `fork` where a tenant's program must not be trusted with one user's data while"
            " serving another: see the reset engine's limits."),
    # 256 is MF_RESET_MAX_WORKERS in csrc/engine/reset_engine.h.
    Key(name="pool", kind="int", default=0, low=1, high=256,
        shown_default="the number of cores the daemon may run on (its CPU affinity: `taskset`, a cpuset)",
        doc="Reset engine: the most workers this tenant may have, each serving one request at a time."
            " The host starts one and adds one whenever a request waits with none idle; requests wait in"
            " the host (up to `concurrency`). Each worker is two processes (it and the template holding"
            " its snapshot, which shares the host's pages until they are written), charged to the"
            " tenant's `memory` and `pids`; a worker that cannot start (out of memory) is retried after"
            " 1 s while requests wait."),
    # An idle reset tenant keeps a worker (and its template) this long; the
    # request after that pays for forking one again.
    Key(name="pool_idle_ms", kind="int", default=60_000, low=0, high=86_400_000,
        doc="Reset engine: a worker idle this long exits, down to none, freeing its snapshot (an idle"
            " tenant then costs about what a fork one does); the next request forks one again (about"
            " 10 ms for the seed program). `0`: workers never retire."),
    Key(name="verify_rewind", kind="bool", default=False,
        doc="Reset engine, for tests: after each rewind, compare every tracked page with the snapshot;"
            " a difference is logged with its address and the worker is replaced. Costs a full memory"
            " comparison per request."),
    Key(name="uid", kind="id", shown_default="derived", low=1, high=MAX_ID,
        doc="The uid the tenant's processes run as. It may not be 0. See [uids](#uids-and-gids)."),
    Key(name="gid", kind="id", shown_default="same as the uid", low=1, high=MAX_ID,
        doc="The gid the tenant's processes run as."),
    Key(name="env", kind="env", default=(), pattern=r"[A-Za-z_][A-Za-z0-9_]*",
        doc="Added to the program's `os.environ`. Values must be strings, so quote numbers and"
            " booleans (`PORT: \"80\"`, `DEBUG: \"true\"`). Values may not contain NUL."),
    Key(name="limits", kind="limits", shown_default="`defaults.limits`",
        doc="Merged key by key over `defaults.limits`."),
    Key(name="network", kind="choice", default="none", choices=("none", "loopback", "full"),
        doc="What the sandbox may reach. `none`: a network namespace of its own with nothing in it,"
            " and no sockets but Unix ones. `loopback`: its own loopback (not the host's: the daemon"
            " and other local services stay out of reach), TCP/UDP sockets allowed. `full`: the host's"
            " network. No other address family (vsock, netlink, packet, ...), in `on_init()` or in a"
            " request."),
    Key(name="files", kind="paths", default=(),
        doc="Extra files or directories the program may read, shown read-only at the same path."),
    Key(name="seccomp_action", kind="choice", default="eperm", choices=("eperm", "kill"),
        doc="What a denied system call does: fail with EPERM, or kill the request's sandbox"
            " (the client gets a 502)."),
)  # fmt: skip


def by_name(keys: Sequence[Key]) -> Mapping[str, Key]:
    return MappingProxyType({key.name: key for key in keys})


TOP: Final = by_name(TOP_KEYS)
TENANT: Final = by_name(TENANT_KEYS)
LIMIT: Final = by_name(LIMIT_KEYS)
