"""bench/accuracy.py --quick: the benchmark's whole path on a tiny DogFaceNet subset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_quick_benchmark_prints_the_table(dogfacenet: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick",
            "--data", str(dogfacenet), "--workdir", str(tmp_path), "--json",
            str(tmp_path / "result.json"),
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| (c) (b) + flip TTA |" in done.stdout
    figures = json.loads((tmp_path / "result.json").read_text())
    assert len(figures) == 3
    for row in figures.values():
        assert 0.0 <= row["map5_known"] <= 1.0 and 0.0 <= row["map5_new"] <= 1.0
        assert 0.0 <= row["map5"] <= 1.0
