"""bench/viewpoints.py --quick: both class_by rows on a tiny two-sided catalogue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.synth import make_catalogue

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_quick_benchmark_compares_both_class_by(tmp_path: Path) -> None:
    make_catalogue(tmp_path / "cat", individuals=16, photos=4, species=1, seed=5,
                   image_size=(128, 96), sides=2)  # fmt: skip
    done = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "viewpoints.py"), "--quick",
            "--catalogue", str(tmp_path / "cat"), "--workdir", str(tmp_path / "work"),
            "--json", str(tmp_path / "result.json"), "--set", "optim.batch_size=8",
        ],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| one photo | individual_viewpoint | 0 |" in done.stdout
    figures = json.loads((tmp_path / "result.json").read_text())
    assert list(figures) == ["individual-0", "individual_viewpoint-0"]
    for rows in figures.values():
        assert set(rows) == {"validation", "one photo", "both sides"}
        for row in rows.values():
            assert 0.0 <= row["top1_known"] <= 1.0 and 0.0 <= row["map5"] <= 1.0
        # A second side in the gallery turns other-side queries from new into known.
        assert rows["both sides"]["queries_known"] > rows["one photo"]["queries_known"]
    labels = json.loads((tmp_path / "work/runs/individual_viewpoint-0/labels.json").read_text())
    assert set(labels["viewpoints"]) == {"left", "right"}
