"""bench/gallery.py runs in quick mode end to end (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gallery.py"


def test_gallery_bench_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_gallery", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other (issue 1)\n\nkept\n")
    result = module.main(["--quick", "--results", str(results)])
    assert result["hnsw_build"]["size"] == result["n"] == 2000
    assert 0.5 < result["hnsw"][0]["recall1_near"] <= 1.0
    assert set(result["cold_start"]) >= {"flat_from_store_s", "flat_from_snapshot_s"}
    assert "| flat (exact) |" in capsys.readouterr().out
    text = results.read_text()
    assert "## Other (issue 1)\n\nkept" in text and text.count("## Gallery (issue 6)") == 1
    module.main(["--quick", "--results", str(results)])  # rewritten in place, not appended
    assert results.read_text().count("## Gallery (issue 6)") == 1
