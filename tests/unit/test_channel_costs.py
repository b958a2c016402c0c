"""bench/channel_costs builds with -Werror and prints a row for every shape,
its per-request checks passing on an untouched channel. No timing is
asserted: tiny N."""
from __future__ import annotations

import shutil

import pytest

from bench import channel_costs


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_every_shape_runs_and_has_its_row(capsys: pytest.CaptureFixture[str]) -> None:
    assert channel_costs.main(["--n", "200", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| shape")]
    assert [row.split(" | ")[0][2:] for row in rows] == [label for label, _ in channel_costs.SHAPES]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert cells and all(float(c) > 0 for c in cells)
