"""bench/ranking.py runs in quick mode and both rankings agree (no timing asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ranking.py"


def test_ranking_bench_quick(capsys) -> None:
    spec = importlib.util.spec_from_file_location("bench_ranking", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick"])
    assert result["same"] == 300
    assert "identical top-5" in capsys.readouterr().out
