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
    (size,) = result["sizes"]
    assert size["n"] == 3000
    rows = {(r["kind"], r.get("nprobe") or r.get("ef_search")): r for r in size["rows"]}
    assert {kind for kind, _ in rows} == {"flat", "ivf-flat", "ivf-sq8", "hnsw"}
    # Probing every cell is exact search: the IVF must then agree with flat entirely.
    widest = max(v for k, v in rows if k == "ivf-flat")
    assert rows[("ivf-flat", widest)]["recall50"] == 1.0
    assert rows[("ivf-flat", widest)]["map5"] == rows[("flat", None)]["map5"]
    assert set(size["cold_start"]) >= {"before_flat_s", "flat_from_store_s", "flat_from_snapshot_s"}
    assert "| flat (exact) |" in capsys.readouterr().out
    text = results.read_text()
    assert "## Other (issue 1)\n\nkept" in text and text.count("## Gallery at scale") == 1
    module.main(["--quick", "--results", str(results), "--no-cold-start"])  # rewritten in place
    assert results.read_text().count("## Gallery at scale") == 1
