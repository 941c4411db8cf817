"""bench/steps.py on the session's tiny run: the lean embedder graph answers as the one torch's
exporter writes, and the normalisation equals the old formula to the bit (no speed asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.steps import BATCHES, main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_steps_bench_compares_like_with_like(tiny_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "steps.json"
    result = main(["--run", str(tiny_run), "--photos", "8", "--rounds", "1", "--json", str(out)])
    assert result["normalise_equal"] is True
    assert result["graph_max_abs_difference"] <= 1e-5
    for name in ("exported", "lean"):
        assert sorted(result["graph_ms"][name]) == sorted(BATCHES)
        assert all(ms > 0 for ms in result["graph_ms"][name].values())
    assert out.is_file() and "| embedder graph, batch 2 |" in capsys.readouterr().out


def test_steps_bench_refuses_too_few_photos(tiny_run: Path) -> None:
    with pytest.raises(SystemExit, match="--photos must be at least"):
        main(["--run", str(tiny_run), "--photos", "2"])
