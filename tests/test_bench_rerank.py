"""bench/rerank.py runs in quick mode on DogFaceNet (skipped where the data is absent): every
method gets figures, each a share, and each matcher a cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rerank import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_rerank_bench_quick(dogfacenet: Path, tmp_path: Path, capsys) -> None:
    assert main(["--data", str(dogfacenet), "--workdir", str(tmp_path), "--quick"]) == 0
    result = json.loads(next(tmp_path.glob("rerank-*.json")).read_text())
    methods = result["methods"]
    assert {"global", "lightglue", "numpy"} <= set(methods)
    assert {"fused lightglue (mean)", "fused numpy (logistic)"} <= set(methods)
    for row in methods.values():
        for key in ("map5", "top1_known", "map5_new"):
            assert 0.0 <= row[key] <= 1.0
    costs = result["cpu_seconds"]
    assert costs["lightglue_per_pair"] > 0 and costs["numpy_per_pair"] > 0
    assert result["keypoints_per_photo"] > 10
    assert "fused numpy (mean)" in capsys.readouterr().out
