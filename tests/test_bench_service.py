"""bench/service.py runs in quick mode on the session's bundle: every row is measured, the ratios
are there, and the raw models, the HTTP service and the seed-style torch pipeline agree on the
top-1 (no timing asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "service.py"
# Run first in the suite (alphabetically), this test may pay for the whole `bundle` setup: two
# tiny runs, the detector and the export, 45 min at worst on a loaded 2-core host.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]
ROWS = {"raw", "raw_spin", "service_c1", "service_c8", "raw_turns", "service_c1_turns", "seed"}


def test_service_bench_quick(
    bundle: Path,
    tiny_run: Path,
    tiny_run_b: Path,
    detector_run: Path,
    catalogue: Path,
    tmp_path: Path,
    capsys,
) -> None:
    spec = importlib.util.spec_from_file_location("bench_service", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    argv = ["--quick", "--bundle", str(bundle), "--run", str(tiny_run), "--run", str(tiny_run_b)]
    argv += ["--detector-run", str(detector_run), "--catalogue", str(catalogue)]
    argv += ["--gallery", str(tmp_path / "gallery.db")]
    result = module.main(argv)

    queries = result["queries"]
    assert queries == module.QUICK_QUERIES
    assert set(result["rows"]) == ROWS
    for row in result["rows"].values():
        assert row["images"] == queries  # one pass in quick mode
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p95_ms"]
    assert set(result["ratios"]) == {
        f"service_c{c}/{row}" for c in (1, 8) for row in ("raw", "raw_spin", "seed")
    } | {"service_c1_turns/raw_turns"}
    # The service answers with the raw models' exact embeddings and ranking: the same top-1.
    assert result["agreement_with_raw"]["raw_spin"] == 1.0
    assert result["agreement_with_raw"]["service_c1"] == 1.0
    assert result["agreement_with_raw"]["service_c8"] == 1.0
    assert result["agreement_with_raw"]["service_c1_turns"] == 1.0
    # torch against onnxruntime, ultralytics' letterbox against the ONNX detector's: a box or
    # a near tie may differ (6 of 160 queries in the full run), so "most", not all.
    assert result["agreement_with_raw"]["seed"] >= 4 / queries
    out = capsys.readouterr().out
    assert "| pipeline | images | images/s | p50 ms | p95 ms |" in out
    assert "(b)/(a) = " in out and "(b)/(c) = " in out and "(b)/(a) in turns = " in out


def test_camera_size_queries_are_the_same_photos_made_large(catalogue: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_service_camera", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from app.decode import decode_image

    paths = sorted((catalogue / "images").rglob("*.jpg"))[:2]
    queries = [module.BenchPhoto(p.name, "fin", "dolphin", p.read_bytes()) for p in paths]
    large = module.camera_size(queries, 1200)
    for small, big in zip(queries, large, strict=True):
        assert (big.image, big.individual_id, big.species) == (small.image, "fin", "dolphin")
        original, made = decode_image(small.content), decode_image(big.content)
        assert max(made.size) == 1200
        assert abs(made.width / made.height - original.width / original.height) < 0.01
