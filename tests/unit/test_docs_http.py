"""docs/http.md's table is the list of cases that tests/integration/test_http_cases.py runs."""
from __future__ import annotations

from pathlib import Path

from tests.integration.test_http_cases import CASES, COMMAND, main, render, splice

DOCS = Path(__file__).resolve().parents[2] / "docs" / "http.md"


def test_docs_http_md_is_up_to_date() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert splice(text, render()) == text, f"docs/http.md's table differs from the cases; run `{COMMAND}`"


def test_every_case_is_a_row() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| ") and not line.startswith("| Case ")]
    assert len(rows) == len(CASES)


def test_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "http.md"
    stale.write_text(DOCS.read_text(encoding="utf-8").replace("| 414, then close |", "| 400, then close |"),
                     encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert main(["--write", str(stale)]) == 0
    assert main(["--check", str(stale)]) == 0
