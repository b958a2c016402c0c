"""The README's test command is the one CI runs: .ci/run's last line stands
verbatim in the README's shell block that sets up and runs the tests."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _shell_blocks(markdown: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in markdown.splitlines():
        if line.startswith("```"):
            if current is None and line.strip() == "```sh":
                current = []
            elif current is not None:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    command = ci_lines[-1].strip()
    blocks = _shell_blocks((REPO / "README.md").read_text())
    test_blocks = [b for b in blocks if any("run the tests" in line for line in b)]
    assert len(test_blocks) == 1, "the README has one shell block that sets up and runs the tests"
    commands = [line.strip() for line in test_blocks[0] if line.strip() and not line.lstrip().startswith("#")]
    assert commands == [command], f"README runs {commands}, .ci/run runs {command!r}"
