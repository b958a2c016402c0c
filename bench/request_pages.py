"""Which pages one seed request writes in a reset worker, and why:

    python -m bench.request_pages [--program PATH [--app MODULE:ATTR] [--warm-up /]] [--runs 5] [--json OUT]

Run it with each interpreter to compare (each needs mayflyd installed). One
plain process, no daemon and no walls: it loads the program and warms the
daemon's request path the way a host does (load_program, on_init,
warm_up_request_path, the after-rewind hook, gc.collect + gc.freeze),
then, as the reset engine does with a worker, forks a child per
measurement from that sealed state. The child tracks every writable
private mapping with the rewind's own tracker (mayflyd._mayfly.DirtyTracker)
and runs one request through the worker's callables: the after-rewind
hook, then the program's RequestPath on a Request like the one the C binding
passes (made once, before sealing). Every request in a worker starts from the same snapshot, so
one request from the sealed state is what each of them writes.

Each written page is classed by mapping (/proc/self/maps) and by cause:
what the page holds (objects alive before the request, found from
gc.get_objects() and their referents; libpython's symbols; the thread and
interpreter states; the frames' data stack) and whether its bytes changed
(a refcount taken and dropped leaves a written page with the same bytes).
"Who" compares children that stop earlier: nothing (the tool's own cost),
the hook, a handler that returns a constant (the daemon's request path),
the seed's handler. Attribution is by page, first match:
a page holding both a long-lived object and a new one counts once.
"""
from __future__ import annotations

import argparse
import bisect
import ctypes
import functools
import gc
import itertools
import json
import mmap
import os
import struct
import subprocess
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import SEED

PAGE = mmap.PAGESIZE
_SPECIAL = ("[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]")
# Who wrote a page: the first child (in this order) whose window wrote it.
PHASES = ("empty window (the tool; any request too)", "after-rewind hook", "daemon request path",
          "tenant handler")


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/self/maps, with the label the tables use."""

    start: int
    end: int
    perms: str
    offset: int
    path: str
    label: str = ""

    @property
    def tracked(self) -> bool:
        """What the rewind tracks: writable private mappings but the kernel's own."""
        return self.perms[1] == "w" and self.perms[3] == "p" and self.path not in _SPECIAL


def _file_label(path: str) -> str:
    name = os.path.basename(path)
    if name.startswith("libpython"):
        return "libpython .data/.bss"
    if name.startswith("python"):
        return "python executable"
    if name.startswith("_mayfly"):
        return "_mayfly .so data"
    if name.startswith("libc.so") or name.startswith("libc-"):
        return "libc .data/.bss (malloc, stdio)"
    return "other .so data"


def parse_maps(text: str) -> list[Mapping]:
    """/proc/PID/maps lines, labelled by what they are; anonymous ones as
    such, even those holding a library's .bss (see library_extents)."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        path = parts[5].strip() if len(parts) == 6 else ""
        if path == "[heap]":
            label = "[heap] (glibc brk)"
        elif path.startswith("[stack"):
            label = "[stack]"
        elif path.startswith("["):
            label = path
        elif path.startswith("/"):
            label = _file_label(path)
        else:
            label = ANONYMOUS
        out.append(Mapping(start, end, parts[1], int(parts[2], 16), path, label))
    return out


ANONYMOUS = "anonymous (obmalloc arenas, mmap)"


def _load_span(path: str) -> tuple[int, int] | None:
    """[first, end) of an ELF64 file's PT_LOAD segments, in its own addresses."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return None
            phoff, = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return None
    spans = []
    for i in range(phnum):
        p_type, _flags, _offset, vaddr, _paddr, _filesz, memsz = struct.unpack_from("<IIQQQQQ", table, i * phentsize)
        if p_type == 1:  # PT_LOAD
            spans.append((vaddr, vaddr + memsz))
    return (min(s for s, _ in spans), max(e for _, e in spans)) if spans else None


def library_extents(maps: list[Mapping], span: Callable[[str], tuple[int, int] | None] = _load_span
                    ) -> list[tuple[int, int, str]]:
    """(start, end, label) of each file's whole image: its .bss past the
    file's pages is an anonymous mapping, and may be merged with the
    anonymous mappings next to it."""
    out = []
    for m in maps:
        if m.offset != 0 or not m.path.startswith("/"):
            continue
        extent = span(m.path)
        if extent is not None:
            first, end = extent
            base = m.start - (first & ~(PAGE - 1))
            out.append((base + first, (base + end + PAGE - 1) & ~(PAGE - 1), m.label))
    return out


def label_of(maps: list[Mapping], extents: list[tuple[int, int, str]], address: int) -> str:
    starts = [m.start for m in maps]
    i = bisect.bisect_right(starts, address) - 1
    if i < 0 or address >= maps[i].end:
        return "unmapped"
    if maps[i].label == ANONYMOUS:
        for start, end, label in extents:
            if start <= address < end:
                return label
    return maps[i].label


# ---- what a page holds ----

_DESCRIPTORS = (types.GetSetDescriptorType, types.MemberDescriptorType, property, classmethod, staticmethod)


def _group(obj: object) -> str:
    if isinstance(obj, types.CodeType):
        return "code objects"
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                        types.MethodDescriptorType, types.WrapperDescriptorType)):
        return "functions, methods"
    if isinstance(obj, _DESCRIPTORS):
        return "descriptors, properties"
    if isinstance(obj, type):
        return "types"
    if isinstance(obj, dict):
        return "dicts (globals, __dict__s)"
    if isinstance(obj, str):
        return "strings"
    if isinstance(obj, tuple):
        return "tuples"
    if isinstance(obj, types.ModuleType):
        return "modules"
    if isinstance(obj, (int, float, bytes)):
        return "numbers, bytes"
    if isinstance(obj, (list, set, frozenset)):
        return "lists, sets"
    return "other objects"


def _immortal(address: int) -> bool:
    """3.12+: Py_INCREF skips an object whose refcount's low 32 bits are negative."""
    return sys.version_info >= (3, 12) and ctypes.c_int32.from_address(address).value < 0


def reachable(roots: Iterable[object], depth: int) -> dict[int, object]:
    """roots and their referents, depth levels down, by address."""
    seen: dict[int, object] = {}
    level = list(roots)
    for _ in range(depth):
        nxt = []
        for obj in level:
            if id(obj) in seen:
                continue
            seen[id(obj)] = obj
            nxt.extend(gc.get_referents(obj))
        level = nxt
    return seen


@dataclass
class ObjectIndex:
    """Address intervals of objects alive before the request: [start, end) and group."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    mortal: list[bool] = field(default_factory=list)
    type_names: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, roots: Iterable[object], existed: Callable[[int, object], bool], depth: int = 3) -> ObjectIndex:
        """The objects reachable from roots (depth levels of referents) that
        existed(address, object) says were there before the request."""
        seen = reachable(roots, depth)
        index = cls()
        for address, obj in sorted(seen.items()):
            if not existed(address, obj):
                continue
            try:
                size = sys.getsizeof(obj)
            except Exception:  # noqa: BLE001 - some objects refuse; their header still counts
                size = 16
            index.starts.append(address)
            index.ends.append(address + size)
            index.groups.append(_group(obj))
            index.mortal.append(not _immortal(address))
            index.type_names.append(type(obj).__name__)
        return index

    def groups_in(self, start: int, end: int) -> Counter[str]:
        """Groups of the mortal objects whose header is in [start, end): the
        ones whose refcounts a request can take and drop."""
        lo, hi = bisect.bisect_left(self.starts, start), bisect.bisect_left(self.starts, end)
        return Counter(g for g, m in zip(self.groups[lo:hi], self.mortal[lo:hi], strict=True) if m)

    def _at(self, address: int) -> int | None:
        i = bisect.bisect_right(self.starts, address) - 1
        return i if i >= 0 and address < self.ends[i] else None

    def owner(self, address: int) -> str | None:
        i = self._at(address)
        return None if i is None else self.groups[i]

    def type_name(self, address: int) -> str | None:
        i = self._at(address)
        return None if i is None else self.type_names[i]


@dataclass(frozen=True)
class Symbols:
    """libpython's data symbols (nm), at their run-time addresses."""

    starts: list[int]
    ends: list[int]
    names: list[str]

    @classmethod
    def load(cls, maps: list[Mapping]) -> Symbols:
        lib = next((m for m in maps if m.label == "libpython .data/.bss" and m.offset == 0), None)
        if lib is None:
            return cls([], [], [])
        out = subprocess.run(["nm", "--defined-only", "-S", lib.path], capture_output=True, text=True).stdout
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] in "bBdD":
                rows.append((lib.start + int(parts[0], 16), int(parts[1], 16), parts[3]))
        rows.sort()
        return cls([r[0] for r in rows], [r[0] + r[1] for r in rows], [r[2] for r in rows])

    def in_range(self, start: int, end: int) -> list[str]:
        """Names of the symbols overlapping [start, end), largest first."""
        i = bisect.bisect_left(self.starts, end)
        found = []
        # Back from the last symbol starting before end; _PyRuntime (hundreds
        # of KiB) is the only symbol so large that the walk goes far.
        while i > 0:
            i -= 1
            if self.ends[i] > start:
                found.append((self.ends[i] - self.starts[i], self.names[i]))
            elif start - self.starts[i] > 1 << 21:
                break
        return [name for _, name in sorted(found, reverse=True)]


@dataclass(frozen=True)
class Landmarks:
    """Addresses the interpreter does not show to Python code, read with ctypes."""

    tstate: int
    interp: int
    datastack: tuple[int, int]  # the frames' chunk holding the caller's frame; (0, 0) if not found


def _landmarks() -> Landmarks:
    api = ctypes.pythonapi
    api.PyThreadState_Get.restype = ctypes.c_void_p
    api.PyInterpreterState_Get.restype = ctypes.c_void_p
    frame = sys._getframe(1)
    # PyFrameObject: PyObject_HEAD, f_back, then f_frame (3.11 to 3.13): the
    # _PyInterpreterFrame, which lives in a data-stack chunk whose header
    # (previous, size, top) starts a page at or below it.
    iframe = ctypes.c_void_p.from_address(id(frame) + 24).value or 0
    chunk = (0, 0)
    page = iframe & ~(PAGE - 1)
    for _ in range(64):
        size = ctypes.c_size_t.from_address(page + 8).value
        if size % PAGE == 0 and 0 < size <= 1 << 24 and page + size > iframe:
            chunk = (page, page + size)
            break
        page -= PAGE
    return Landmarks(api.PyThreadState_Get() or 0, api.PyInterpreterState_Get() or 0, chunk)


_OBMALLOC_WORDS = ("pool", "arena", "obmalloc", "_mi_")

# The causes, as the tables name them.
REFCOUNT = "refcounts of long-lived objects (same bytes after)"
CHANGED = "long-lived objects changed"
CODE = "code objects changed (bytecode caches, counters)"
INTERP = "interpreter state (_PyRuntime: gc, caches)"
TSTATE = "thread state"
STATIC = "static types, other C globals"
OBMALLOC = "allocator state (obmalloc, C globals)"
FRAMES = "frames (C stack, data stack)"
NEW = "new objects, freed memory (obmalloc pools, malloc)"
CLIB = "C library state"


def page_cause(page: int, maps_label: str, changed: list[int], index: ObjectIndex, symbols: Symbols,
               marks: Landmarks) -> tuple[str, str]:
    """Why a written page was written, from what it holds (first match):
    the cause and, for long-lived objects, their group ("" otherwise)."""
    end = page + PAGE
    if maps_label == "[stack]" or marks.datastack[0] <= page < marks.datastack[1]:
        return FRAMES, ""
    if page <= marks.tstate < end:
        return TSTATE, ""
    names = symbols.in_range(page, end)
    if names:
        if any(w in n for n in names for w in _OBMALLOC_WORDS):
            return OBMALLOC, ""
        if page <= marks.interp < end or "_PyRuntime" in names:
            return INTERP, ""
        return STATIC, ""
    owners = [o for o in (index.owner(a) for a in changed) if o is not None]
    if owners:
        group = Counter(owners).most_common(1)[0][0]
        return (CODE if group == "code objects" else CHANGED), group
    held = index.groups_in(page, end)
    if held:
        # Changed bytes outside every indexed object (a dict's table, a
        # list's items) still change long-lived memory.
        return (CHANGED if changed else REFCOUNT), held.most_common(1)[0][0]
    if maps_label.startswith("anonymous") or maps_label.startswith("[heap]"):
        return NEW, ""
    return CLIB, ""


# ---- one measurement, in a child forked from the sealed process ----

@dataclass(frozen=True)
class Window:
    pages: list[int]                # written pages
    changed: dict[int, list[int]]   # page -> addresses of the 8-byte words whose value changed
    new_mappings: int
    before: Callable[[int], int | None]  # the 8-byte word at an address before the window


def _measure(steps: Steps) -> Window:
    from mayflyd import _mayfly
    maps = [m for m in parse_maps(Path("/proc/self/maps").read_text()) if m.tracked]
    whole = [(m.start, m.end) for m in maps]
    tracker = _mayfly.DirtyTracker()
    for m in maps:
        tracker.track(m.start, m.end - m.start)
    # The tool's own objects out of the young generation, its count back to
    # the sealed state's zero: else a collection in the window, which a
    # worker would not run there, walks them.
    gc.freeze()
    # The copy, to tell changed pages from pages written back with the
    # same bytes: in a mapping of its own, made after the list of tracked ones.
    copy = mmap.mmap(-1, sum(e - s for s, e in whole), flags=mmap.MAP_PRIVATE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(copy))
    offsets: list[tuple[int, int, int]] = []
    at = 0
    for s, e in whole:
        ctypes.memmove(base + at, s, e - s)
        offsets.append((s, e, at))
        at += e - s
    ranges = _critical(tracker, whole, steps)
    after = parse_maps(Path("/proc/self/maps").read_text())
    pages = [p for s, e in ranges for p in range(s, e, PAGE)]
    changed: dict[int, list[int]] = {}
    starts = [o[0] for o in offsets]
    for p in pages:
        s, _e, off = offsets[bisect.bisect_right(starts, p) - 1]
        old = (ctypes.c_uint64 * (PAGE // 8)).from_address(base + off + p - s)
        new = (ctypes.c_uint64 * (PAGE // 8)).from_address(p)
        changed[p] = [p + 8 * i for i in range(PAGE // 8) if old[i] != new[i]]
    known = {(m.start, m.end) for m in maps}
    new_maps = sum(1 for m in after if m.tracked and (m.start, m.end) not in known)
    tracker.close()

    def before(address: int, keep: mmap.mmap = copy) -> int | None:
        s, e, off = offsets[max(0, bisect.bisect_right(starts, address) - 1)]
        if not s <= address <= e - 8:
            return None
        return int(ctypes.c_uint64.from_address(base + off + address - s).value)
    return Window(pages, changed, new_maps, before)


def _in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """work() in a child forked from this process; its JSON-able answer."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = 0
        try:
            data = json.dumps(work()).encode()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            data, code = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode(), 1
        with os.fdopen(write_fd, "wb") as out:
            out.write(data)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    answer: dict[str, Any] = json.loads(data)
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return answer


# ---- the seed program, loaded and sealed as a host does ----

Steps = tuple[Callable[[], object] | None, Callable[..., object] | None, Callable[[], tuple[object, ...]] | None]


def _window(hook: Callable[[], object] | None, runner: Callable[..., object] | None,
            build: Callable[[], tuple[object, ...]] | None) -> None:
    """What a worker does for one request, cut short where a step is None."""
    if hook is not None:
        hook()
    if build is not None:
        args = build()
        if runner is not None:
            runner(*args)


def _critical(tracker: Any, whole: list[tuple[int, int]], steps: Steps) -> list[tuple[int, int]]:
    """The measured stretch. Warmed before sealing, like the daemon's own
    code, so that its bytecode's caches are not written in the window;
    what remains (its frames, None's refcount) an empty window measures."""
    tracker.protect(whole)
    _window(*steps)
    result: list[tuple[int, int]] = tracker.scan()
    return result


# What the front end hands a worker for `wrk`'s GET /, as py_requests.c
# decodes it. Made once, before sealing: the binding builds these objects
# in C (6 strings, a list, a tuple: one pool page or two, which the
# request's own objects share), where building them in Python would add
# the refcounts of every method and constant it used.
_ARGS = (1, "GET", "/", "", [("Host", "t0.bench.localhost")], b"", "127.0.0.1:40000")


@dataclass(frozen=True)
class Sealed:
    phases: list[Steps]        # one window per phase (PHASES), each doing what the one before did and more
    parts: dict[str, Steps]    # pieces of the daemon's request path, each alone


def _seal(program_path: Path, app: str = "", warm_up: list[str] | None = None) -> Sealed:
    """Load the program (or the app in program_path) and seal the process as a host does."""
    from mayflyd import _mayfly
    from mayflyd.host import program as program_module
    from mayflyd.host.warm_up_requests import send_warm_up_requests
    from mayflyd.host.wsgi import load_app
    program_module.warm_up_request_path()
    if app:
        program = load_app(program_path, app)
    else:
        program = program_module.load_program(program_path)
        program.init()
    if warm_up:
        send_warm_up_requests(program.request_path(), warm_up, _ARGS[4][0][1], 16)
    constant = types.ModuleType("mayflyd_constant")
    constant.on_client_request = lambda: (lambda: ("text/plain", "x"))  # type: ignore[attr-defined]
    _after_rewind = _mayfly.reseed_random
    # The worker builds each request's Request in C and calls its program's
    # RequestPath from C; here the Request is built once, before sealing,
    # and reused (the worker's fresh one shares the pool pages the request's
    # other objects write anyway).
    request_args = itertools.repeat((program_module.Request(
        id=_ARGS[0], method=_ARGS[1], path=_ARGS[2], query=_ARGS[3], headers=_ARGS[4], body=_ARGS[5],
        client=_ARGS[6]),)).__next__
    runner = program.request_path().respond
    noop = (Program := program_module.Program(constant)).request_path().respond
    # The tool's own code, warm; never the tenant's handler (a host does not run it).
    idle = _mayfly.DirtyTracker()
    for _ in range(program_module.WARM_UP_CALLS):
        _critical(idle, [], (_after_rewind, noop, request_args))
    idle.close()
    sys.stdout.flush()
    gc.collect()
    _mayfly.immortalize_tracked()
    gc.freeze()
    # C callables (partial), so that no cold bytecode of the tool's runs in the window.
    request = functools.partial(program_module.Request, id=1, method="GET", path="/", query="",
                                headers=_ARGS[4], body=b"", client=_ARGS[6])
    parts: dict[str, Steps] = {
        "Request(...) (unquote, Headers)": (request, None, None),
        "Program.call, constant handler": (functools.partial(Program.call, request()), None, None),
        "normalize(the seed's answer)": (functools.partial(program_module.normalize, ("text/plain", "x")),
                                         None, None),
        "_flush_std_streams()": (program_module._flush_std_streams, None, None),
        "after-rewind hook": (_after_rewind, None, None),
    }
    return Sealed([(None, None, None), (_after_rewind, None, None), (_after_rewind, noop, request_args),
                   (_after_rewind, runner, request_args)], parts)


def _classify_child(steps: Steps) -> dict[str, Any]:
    marks = _landmarks()
    result = _measure(steps)
    maps = parse_maps(Path("/proc/self/maps").read_text())
    extents = library_extents(maps)
    gc.unfreeze()  # frozen objects are not listed by gc.get_objects()
    # Built after the window (building it before would move the request's
    # allocations); an object made since, maybe in memory the request used
    # and freed, had another type pointer (ob_type, at +8) in the copy.
    index = ObjectIndex.build([*gc.get_objects(), *sys.modules.values()],
                              lambda address, obj: result.before(address + 8) == id(type(obj)))
    symbols = Symbols.load(maps)
    rows = []
    for p in result.pages:
        label = label_of(maps, extents, p)
        cause, objects = page_cause(p, label, result.changed[p], index, symbols, marks)
        rows.append({"page": p, "mapping": label, "changed": len(result.changed[p]), "cause": cause,
                     "objects": objects,
                     "changed_types": sorted({t for t in map(index.type_name, result.changed[p]) if t}),
                     "symbols": symbols.in_range(p, p + PAGE)[:4]})
    return {"pages": rows, "new_mappings": result.new_mappings}


def _pages_child(steps: Steps) -> dict[str, Any]:
    return {"pages": _measure(steps).pages}


# ---- tables ----

def table(rows: list[dict[str, Any]], row_key: str, col_key: str, title: str) -> str:
    """A markdown table of page counts, row_key by col_key, with totals."""
    cols = [c for c, _ in Counter(r[col_key] for r in rows).most_common()]
    by_row = Counter(r[row_key] for r in rows)
    cells = Counter((r[row_key], r[col_key]) for r in rows)
    lines = [f"| {title} | " + " | ".join(cols) + " | total |", "|---" * (len(cols) + 2) + "|"]
    for name, n in by_row.most_common():
        lines.append(f"| {name} | " + " | ".join(str(cells[(name, c)] or "") for c in cols) + f" | {n} |")
    totals = Counter(r[col_key] for r in rows)
    lines.append("| total | " + " | ".join(str(totals[c]) for c in cols) + f" | {len(rows)} |")
    return "\n".join(lines)


def who(pages: int, phase_sets: list[set[int]]) -> str:
    """The first phase whose window wrote the page; the last phase otherwise."""
    for name, pages_of in zip(PHASES, phase_sets, strict=False):
        if pages in pages_of:
            return name
    return PHASES[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.request_pages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--program", type=Path, default=SEED)
    parser.add_argument("--app", default="", help="module:attribute of a WSGI or ASGI app in --program")
    parser.add_argument("--warm-up", action="append", default=[], metavar="TARGET",
                        help="a warm-up request's target, as the tenant key warm_up (repeatable)")
    parser.add_argument("--runs", type=int, default=5, help="seed requests measured (each in its own child)")
    parser.add_argument("--json", type=Path, help="write every classified page here")
    args = parser.parse_args(argv)
    sealed = _seal(args.program, args.app, args.warm_up)
    phase_sets = [set(_in_child(lambda w=w: _pages_child(w))["pages"])  # type: ignore[misc]
                  for w in sealed.phases[:-1]]
    parts = {name: len(set(_in_child(lambda w=w: _pages_child(w))["pages"]) - phase_sets[0])  # type: ignore[misc]
             for name, w in sealed.parts.items()}
    runs = [_in_child(lambda: _classify_child(sealed.phases[-1])) for _ in range(args.runs)]
    counts = [len(r["pages"]) for r in runs]
    chosen = sorted(runs, key=lambda r: len(r["pages"]))[len(runs) // 2]
    rows = chosen["pages"]
    for r in rows:
        r["who"] = who(r["page"], phase_sets)
    version = sys.version.split()[0]
    print(f"#### CPython {version}\n")
    print(f"One seed request writes {len(rows)} pages (median of {args.runs} requests, each from the sealed state: "
          f"{min(counts)} to {max(counts)}); {len(phase_sets[0])} of them the tool's own (an empty window), "
          f"{sum(1 for r in rows if r['changed'] == 0)} written with the same bytes after; "
          f"new mappings: {chosen['new_mappings']}.\n")
    print(table(rows, "cause", "mapping", "cause \\ mapping"))
    print()
    print(table(rows, "who", "mapping", "who \\ mapping"))
    print()
    held = [r for r in rows if r["objects"]]
    print(table(held, "objects", "cause", "long-lived objects on the page"))
    print()
    print("Pieces of the request path, each run alone (pages beyond the empty window's; "
          "pieces share pages, so these do not add up): "
          + ", ".join(f"{name} {n}" for name, n in parts.items()) + "\n")
    changed = Counter(t for r in rows for t in r["changed_types"])
    print("Types of the long-lived objects whose bytes changed (pages): "
          + ", ".join(f"{t} ({n})" for t, n in changed.most_common(12)) + "\n")
    syms = Counter(s for r in rows for s in r["symbols"])
    print("libpython symbols on written pages: " + ", ".join(f"{s} ({n})" for s, n in syms.most_common(12)))
    if args.json:
        args.json.write_text(json.dumps({"python": version, "counts": counts, "pages": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
