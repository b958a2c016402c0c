"""daemon/mayflyd/_mayfly.pyi declares exactly what mayflyd._mayfly has:
mypy checks the daemon against the stub, so a name missing from it (or
left in it after the C side dropped it) goes unchecked."""
from __future__ import annotations

import ast
from pathlib import Path

from mayflyd import _mayfly

STUB = Path(__file__).resolve().parents[2] / "daemon" / "mayflyd" / "_mayfly.pyi"


def stub_names() -> set[str]:
    """Functions, classes and annotated constants; plain assignments in a
    stub are type aliases, which the module does not have."""
    names = set()
    for node in ast.parse(STUB.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def test_the_stub_declares_what_the_module_has() -> None:
    module = {name for name in dir(_mayfly) if not name.startswith("__")}
    stub = stub_names()
    assert not module - stub, f"in mayflyd._mayfly but not in {STUB.name}: {sorted(module - stub)}"
    assert not stub - module, f"in {STUB.name} but not in mayflyd._mayfly: {sorted(stub - module)}"


def test_the_stub_classes_declare_their_methods_and_attributes() -> None:
    for node in ast.parse(STUB.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        declared = {f.name for f in node.body if isinstance(f, ast.FunctionDef) and not f.name.startswith("_")}
        declared |= {f.target.id for f in node.body if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)}
        present = {n for n in dir(getattr(_mayfly, node.name)) if not n.startswith("_")}
        assert declared == present, f"{node.name}: stub only {sorted(declared - present)}, " \
                                    f"module only {sorted(present - declared)}"
