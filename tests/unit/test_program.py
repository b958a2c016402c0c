"""The tenant program contract, run in-process (no sandbox)."""
from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest

from mayflyd import error_record
from mayflyd.host.program import ProgramError, Request, Response, load_program, normalize, report_exception


def _request(**kw: object) -> Request:
    fields: dict[str, object] = {"id": 1, "method": "GET", "path": "/", "query": "a=1&a=2",
                                 "headers": [("X-A", "1"), ("x-a", "2")], "body": b'{"k": 1}', "client": "c"}
    fields.update(kw)
    return Request(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("result,expected", [
    ("hé", (200, [("Content-Type", "text/plain; charset=utf-8")], "hé".encode())),
    (b"\x00", (200, [("Content-Type", "application/octet-stream")], b"\x00")),
    (("text/html", "<p>"), (200, [("Content-Type", "text/html")], b"<p>")),
    ((404, {"X-A": "1"}, "no"), (404, [("Content-Type", "text/plain; charset=utf-8"), ("X-A", "1")], b"no")),
    ((201, [("Content-Type", "a/b")], b"x"), (201, [("Content-Type", "a/b")], b"x")),
    ({"a": 1}, (200, [("Content-Type", "application/json")], b'{"a": 1}')),
    (None, (204, [], b"")),
    (Response("x", status=202, content_type="text/x"), (202, [("Content-Type", "text/x")], b"x")),
])
def test_normalize(result: object, expected: object) -> None:
    assert normalize(result) == expected


@pytest.mark.parametrize("result", [12, (True, {}, "x"), ("a", "b", "c", "d"), object()])
def test_normalize_rejects(result: object) -> None:
    with pytest.raises(TypeError):
        normalize(result)


def test_request_helpers() -> None:
    request = _request()
    assert request.headers["x-A"] == "1, 2"
    assert request.headers.raw() == [("X-A", "1"), ("x-a", "2")]
    assert request.args == {"a": ["1", "2"]}
    assert request.json() == {"k": 1}


def test_seed_form_and_request_form(tmp_path: Path) -> None:
    seed = load_program(Path(__file__).resolve().parents[2] / "config" / "programs" / "hello_pythran.py")
    status, headers, body = seed.call(_request())
    assert (status, headers) == (200, [("Content-Type", "text/plain")]) and body.startswith(b"\tthis is")
    (tmp_path / "rich.py").write_text("def on_client_request(r):\n    return r.method + r.path\n")
    assert load_program(tmp_path / "rich.py").call(_request(method="PUT", path="/x"))[2] == b"PUT/x"


def test_exception_is_a_500(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.py").write_text("def on_client_request(r):\n    raise KeyError('hidden')\n")
    status, _, body = load_program(tmp_path / "bad.py").call(_request())
    assert status == 500 and b"hidden" not in body
    # One record on fd 2, with the request and the whole traceback.
    (line,) = capfd.readouterr().err.encode().splitlines()
    record = error_record.decode(line)
    assert record is not None and record.req == _request().id and record.method == _request().method
    assert "raise KeyError('hidden')" in record.text and record.text.endswith("KeyError: 'hidden'")
    # From the program's own frame: Program.call's tells its author nothing.
    assert record.text.split("\n")[1].startswith(f'  File "{tmp_path / "bad.py"}"')


def test_a_file_program_is_the_module_importlib_would_make(tmp_path: Path) -> None:
    path = tmp_path / "mayfly_attrs_program.py"
    path.write_text("import sys\nSELF = sys.modules[__name__]\n"
                    "def on_client_request(r):\n    return __spec__.origin\n")
    module = load_program(path).module
    reference = importlib.util.module_from_spec(importlib.util.spec_from_file_location(path.stem, path))
    assert module.SELF is module and sys.modules[path.stem] is module
    assert (module.__name__, module.__file__) == (reference.__name__, reference.__file__)
    spec, expected = module.__spec__, reference.__spec__
    assert (spec.name, spec.origin, spec.has_location, spec.parent, spec.cached) == \
        (expected.name, expected.origin, expected.has_location, expected.parent, expected.cached)
    assert type(spec.loader) is type(expected.loader) and module.__loader__ is spec.loader
    assert spec.loader.get_filename(path.stem) == str(path)
    assert inspect.getsource(module.on_client_request).startswith("def on_client_request(r):")
    assert load_program(path).call(_request())[2] == str(path).encode()


def test_package_program(tmp_path: Path) -> None:
    pkg = tmp_path / "pkgprog"
    pkg.mkdir()
    (pkg / "helper.py").write_text("WORD = 'from-helper'\n")
    (pkg / "__init__.py").write_text("from .helper import WORD\ndef on_client_request(r):\n    return WORD\n")
    assert load_program(pkg).call(_request())[2] == b"from-helper"


@pytest.mark.parametrize("source,message", [
    ("x = 1\n", "no callable on_client_request"),
    ("def on_client_request(:\n", "SyntaxError"),
    ("import sys\nsys.exit(3)\ndef on_client_request(): pass\n", "SystemExit"),
])
def test_load_failures(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "p.py").write_text(source)
    with pytest.raises(ProgramError, match=message):
        load_program(tmp_path / "p.py")


def test_on_init_failure(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text("def on_init():\n    raise RuntimeError('nope')\n"
                                   "def on_client_request(): pass\n")
    with pytest.raises(ProgramError, match="on_init\\(\\) raised RuntimeError: nope"):
        load_program(tmp_path / "p.py").init()


def test_warm_up_runs_only_the_daemons_own_code(capsys: pytest.CaptureFixture[str]) -> None:
    from mayflyd.host.program import warm_up_request_path

    warm_up_request_path()
    assert capsys.readouterr() == ("", "")


def test_a_report_with_the_request_id_alone(capfd: pytest.CaptureFixture[str]) -> None:
    """What a sandbox reports where the Request itself could not be made."""
    print("first", flush=False)
    report_exception(ValueError("no request object"), 12)
    out, err = capfd.readouterr()
    assert out == "first\n"  # flushed before the record, so in order
    record = error_record.decode(err.encode())
    assert record == error_record.ErrorRecord(text="ValueError: no request object", req=12)


@pytest.mark.parametrize("source,found", [
    ("def on_client_request(): pass\n", False),
    ("def on_client_request(): pass\non_stop = 'not callable'\n", False),
    ("def on_client_request(): pass\ndef on_stop(): return 'stopped'\n", True),
    # Looked up after on_init(), which may define it.
    ("def on_client_request(): pass\ndef on_init():\n    global on_stop\n    on_stop = lambda: 'stopped'\n", True),
])
def test_the_stop_hook_is_the_programs_on_stop(tmp_path: Path, source: str, found: bool) -> None:
    (tmp_path / "p.py").write_text(source)
    program = load_program(tmp_path / "p.py")
    program.init()
    hook = program.stop_hook()
    assert (hook is not None) == found
    assert hook is None or hook() == "stopped"


def test_an_adapters_stop_hook_replaces_the_modules(tmp_path: Path) -> None:
    from types import ModuleType

    from mayflyd.host.program import Program
    module = ModuleType("app")
    module.on_stop = lambda: "the module's"  # type: ignore[attr-defined]
    # An app's module is no program: its on_stop is not the contract's.
    assert Program(module, handler=lambda r: "x").stop_hook() is None
    assert Program(module, handler=lambda r: "x", on_stop=lambda: "adapter's").stop_hook()() == "adapter's"  # type: ignore[misc]
