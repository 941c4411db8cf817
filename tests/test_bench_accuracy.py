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


def test_variants_train_with_their_overrides(dogfacenet: Path, tmp_path: Path) -> None:
    """--variant replaces the default rows: each trains with its own overrides."""
    done = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "accuracy.py"), "--quick",
            "--data", str(dogfacenet), "--workdir", str(tmp_path), "--json",
            str(tmp_path / "result.json"), "--variant", "old=",
            "--variant", "smooth=head.label_smoothing=0.1",
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| smooth |" in done.stdout and "known top-1" in done.stdout
    figures = json.loads((tmp_path / "result.json").read_text())
    assert list(figures) == ["old", "smooth"]
    assert all(0.0 <= row["top1_known"] <= 1.0 for row in figures.values())
    config = (tmp_path / "runs" / "smooth" / "config.yaml").read_text()
    assert "label_smoothing: 0.1" in config
    assert "label_smoothing: 0.0" in (tmp_path / "runs" / "old" / "config.yaml").read_text()
