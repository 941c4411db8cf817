"""bench/threshold.py runs in quick mode on the session's bundle (no figure asserted beyond
what the curve must do: the one threshold at the whole training gallery, lower below it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.manifest import Manifest
from bench.threshold import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def test_threshold_bench_quick(bundle: Path, tiny_run: Path, capsys) -> None:
    rows = main(["--bundle", str(bundle), "--run", str(tiny_run), "--quick"])["rows"]
    manifest = Manifest.read(bundle)
    small = {r["threshold_kind"]: r for r in rows if r["distractors"] == 4}
    whole = {r["threshold_kind"]: r for r in rows if r["distractors"] != 4}
    assert small["one"]["threshold"] == whole["one"]["threshold"] == manifest.threshold
    for row in (small["by size"], whole["by size"]):  # means over trials: sizes may differ
        expected = manifest.threshold_for(None, round(row["photos"]))
        assert row["threshold"] == pytest.approx(expected, abs=0.01)
    assert small["by size"]["threshold"] < whole["by size"]["threshold"] <= manifest.threshold
    assert "| newcomer first |" in capsys.readouterr().out
