"""Type stub of the C helper, mayflyd._mayfly (csrc/python/). Checked against the
built module by tests/unit/test_stub_matches_module.py.

serve_reset, DirtyTracker and HOT_LEARN_REWINDS exist only in builds with the
reset engine (x86_64, see setup.py); the supervisor checks with hasattr()
(supervisor/daemon.py) before any tenant runs on it."""
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

MAGIC: int
PROTOCOL_VERSION: int
MAX_PAYLOAD: int
MAX_HEAD: int
MAX_HEADERS: int
MAX_DATA_CHANNELS: int
MAX_FRONT_LOOPS: int
MSG_WORKER_CHANNEL: int
MSG_WORKER_GONE: int
MSG_DISPATCHED: int
FRAME_HEADER_SIZE: int
BODY_STREAMED: int
MSG_REQUEST: int
MSG_CANCEL: int
MSG_SHUTDOWN: int
MSG_DATA_CHANNEL: int
MSG_READY: int
MSG_LOAD_FAILED: int
MSG_CHILD_EXIT: int
MSG_REQUEST_FAILED: int
MSG_REQ_HEAD: int
MSG_REQ_BODY: int
MSG_REQ_END: int
MSG_RESP_HEAD: int
MSG_RESP_BODY: int
MSG_RESP_END: int
MSG_REQ_WHOLE: int
MSG_RESP_WHOLE: int
MSG_WORKER_REPLACED: int
MSG_WORKER_READY: int
MSG_REQUEST_DONE: int
MSG_WORKER_FAILED: int
ENGINE_FORK: int
ENGINE_RESET: int
EXIT_TIMED_OUT: int
EXIT_CANCELLED: int
EXIT_CPU_EXCEEDED: int
EXIT_OUT_OF_MEMORY: int
REQUEST_BODY_CAP: int
FORK_MAX_CHILDREN: int
FORK_GRACE_MS: int
CHILD_EXIT_HANDLER: int
CHILD_EXIT_BAD_REQUEST: int
CHILD_EXIT_SETUP: int
HOT_LEARN_REWINDS: int  # reset engine only

Headers = list[tuple[str, str]]

class HeadersBase:
    """Header fields looked up case-insensitively, repeated ones joined by ', '."""

    def __init__(self, raw: Headers) -> None: ...
    def __getitem__(self, name: str) -> str: ...
    def __iter__(self) -> Iterator[str]: ...
    def __len__(self) -> int: ...
    def __contains__(self, name: object) -> bool: ...
    def get(self, name: str, default: Any = None) -> Any: ...
    def raw(self) -> Headers: ...


class RequestBase:
    """A request's fields; program.py's Request adds its Python side and
    names its headers mapping class in _headers_type."""

    id: int
    method: str
    raw_path: str
    path: str
    query: str
    headers: Any  # the subclass's _headers_type, made when first read
    body: bytes
    client: str

    def __init__(self, *, id: int, method: str, path: str, query: str, headers: Headers, body: bytes,
                 client: str) -> None: ...


class RequestPath:
    """A program's request path: its handler called with a request built
    in C, the response normalised and encoded in C."""

    def __init__(self, handler: Callable[..., object], takes_request: bool, request_type: type[RequestBase],
                 response_type: type,
                 normalize: Callable[[object], tuple[int, Headers, bytes | Iterable[object]]], *,
                 report: Callable[[BaseException, Any], None] | None = None) -> None: ...
    def respond(self, request: RequestBase) -> tuple[int, list[tuple[bytes, bytes]], bytes]: ...


# A RequestPath, or any callable taking a request's fields (the engine tests' runners).
Runner = RequestPath | Callable[[int, str, str, str, Headers, bytes, str], tuple[int, Headers, bytes]]
StopHook = Callable[[], object]  # run in one sandbox when the host stops (stop_sandbox.h)
# imports the program, runs on_init(), returns the runner, or it and the stop hook (None: none)
Loader = Callable[[], Runner | tuple[Runner, StopHook | None]]

def struct_layout() -> dict[str, tuple[int, dict[str, tuple[int, int]]]]: ...
def immortalize_tracked() -> int: ...
def drop_privileges(uid: int, gid: int, set_groups: bool = True) -> None: ...
HostWalls = tuple[bool, int, int, int, list[str] | None, bytes | None]  # root, nproc, uid, gid, paths, filter
def build_host_walls(walls: HostWalls) -> None: ...
def zygote_fork(ctrl_fd: int, oom_fd: int, stdout_fd: int, stderr_fd: int, walls: HostWalls, *,
                user_namespace: bool = ..., cgroup_version: int = ..., cgroup_base: str = ..., cgroup_group: str = ...,
                network: str = ..., hostname: str = ..., parent_pidfd: int = ...) -> int: ...
def enter_user_namespace() -> None: ...
def enter_namespaces(network: str, hostname: str) -> None: ...  # returns only in the new pid 1
def seccomp_load(bpf: bytes) -> None: ...
def set_parent_death_signal(signum: int, expected_ppid: int) -> None: ...
def set_oom_score_adj(value: int) -> None: ...
def enter_minimal_root(paths: Sequence[str]) -> list[str]: ...
def cgroup_detect(base: str) -> int: ...
def cgroup_setup(version: int, base: str, group: str, memory_max: int, pids_max: int = 0,
                 cpu_quota_us: int = 0, cpu_period_us: int = 100000) -> None: ...
def cgroup_join(version: int, base: str, group: str, pid: int) -> None: ...
def cgroup_remove(version: int, base: str, group: str) -> None: ...
def cgroup_stats(version: int, base: str, group: str) -> dict[str, int]: ...
# With load (which returns the runner; runner is then None), the binding
# loads the program, seals the host and never returns once serving: the
# host exits from C (csrc/python/py_seal.h).
def serve_fork(ctrl_fd: int, runner: Runner | None, close_in_child: Sequence[int],
               request_filter: bytes = b"", cpu_ms: int = 0, memory_bytes: int = 0, nofile: int = 0,
               concurrency: int = 4096, queue: int = 256, oom_fd: int = -1, *, load: Loader | None = None,
               gc_freeze: Callable[[], None] | None = None, pid_one: bool = False,
               stop_timeout_ms: int = 0) -> None: ...
# reset engine only
def serve_reset(ctrl_fd: int, runner: Runner | None, close_in_child: Sequence[int],
                after_rewind: Callable[[], None], request_filter: bytes = b"", cpu_ms: int = 0, memory_bytes: int = 0,
                nofile: int = 0, pool_size: int = 1, idle_ms: int = 0, verify: bool = False,
                concurrency: int = 256, queue: int = 256, oom_fd: int = -1, front_loops: int = 1, *,
                load: Loader | None = None, gc_freeze: Callable[[], None] | None = None,
                pid_one: bool = False, stop_timeout_ms: int = 0) -> None: ...
def reseed_random() -> None: ...
def response_start(status: int, headers: Sequence[tuple[str | bytes, str | bytes]]) -> None:
    """In a sandbox, while a request's handler runs: send the head of a
    streamed response (its length not known) on the request's channel.
    RuntimeError outside a request or when called twice; OSError if the
    channel fails (the front end went away)."""
def response_can_stream() -> bool:
    """Whether response_start() would start a stream now: in a sandbox's
    request, not started yet (out of a sandbox, a body is whole)."""
def response_write(data: bytes | bytearray | memoryview) -> None:
    """After response_start(): send body bytes (blocks while the client is
    slow). RuntimeError outside a request or before response_start()."""
def encode_response(req_id: int, status: int, headers: Headers, body: bytes) -> list[bytes]: ...
def decode_request(req_id: int, packets: Sequence[bytes]) -> tuple[str, str, str, Headers, bytes, str]: ...


# reset engine only
class DirtyTracker:
    """Pages written in tracked ranges (userfaultfd async write-protect +
    PAGEMAP_SCAN). Ranges are (start, end) byte addresses, end exclusive."""

    def __init__(self) -> None: ...
    def track(self, address: int, length: int) -> None: ...
    def collect(self, cap: int = 256) -> list[tuple[int, int]]: ...  # written, re-protected
    def scan(self, cap: int = 256, joined: bool = False) -> list[tuple[int, int]]: ...  # written, left unprotected
    def protect(self, ranges: Sequence[tuple[int, int]]) -> None: ...
    def close(self) -> None: ...


