"""bench/rerank.py runs in quick mode on DogFaceNet (skipped where the data is absent): a model
trained on dogs split from the test ones, every method gets figures, each a share, and each
matcher a cost per query."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rerank import main, parse_args, split
from gallery.catalogue import read_catalogue

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_rerank_bench_quick(dogfacenet: Path, tmp_path: Path, capsys) -> None:
    assert main(["--data", str(dogfacenet), "--workdir", str(tmp_path), "--quick"]) == 0
    result = json.loads(next(tmp_path.glob("rerank-*.json")).read_text())
    methods = result["methods"]
    assert {"global only", "local only, lightglue", "local only, mutual_nn"} <= set(methods)
    assert sum(name.startswith("fused, ") for name in methods) == 2
    for row in methods.values():
        for key in ("map5", "top1_known", "map5_new"):
            assert 0.0 <= row[key] <= 1.0
    costs = result["cpu_ms_per_query"]
    assert costs["lightglue B=4"] > 0 and costs["mutual_nn B=4"] > 0
    assert costs["global embed+search"] > 0
    assert result["keypoints_per_photo"] > 10
    assert result["test"]["queries"] > 0 and "global only" in capsys.readouterr().out


def test_test_dogs_are_never_trained_on(dogfacenet: Path, tmp_path: Path) -> None:
    args = parse_args(["--data", str(dogfacenet), "--test-known", "30", "--test-new", "10"])
    sp = split(args, dogfacenet, tmp_path)
    trained = {p.individual_id for p in read_catalogue(sp.train).photos}
    tested = {p.individual_id for p in sp.test_gallery + sp.test_queries}
    assert len(tested) == 40 and len(trained) == args.train_individuals
    assert not trained & tested
    # Known test dogs are queried with photos other than their gallery one.
    assert not {p.image for p in sp.test_gallery} & {p.image for p in sp.test_queries}
