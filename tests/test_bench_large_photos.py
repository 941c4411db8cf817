"""bench/large_photos.py on the session's bundle and catalogue: camera-size photos are made, each
step is timed, and the reduce-first letterbox finds the boxes the old one found (no speed
asserted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.preprocess import letterbox
from bench.large_photos import letterbox_before, main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]


def test_large_photos_bench_compares_the_letterboxes(
    bundle: Path, catalogue: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "large.json"
    argv = ["--bundle", str(bundle), "--catalogue", str(catalogue), "--side", "2400"]
    result = main([*argv, "--individuals", "4", "--per", "2", "--rounds", "1", "--json", str(out)])
    assert result["photos"] == 8 and max(result["photo_size"]) == 2400
    assert all(ms > 0 for ms in result["ms"].values())
    # The same detector on two letterboxes within a grey level of each other: the same animal.
    assert result["boxes_iou"]["mean"] >= 0.9 and result["cosine"]["mean"] >= 0.95
    assert set(result["top1"]) == {"before", "now", "now_against_before"}
    assert out.is_file() and "| letterbox, now (blocks averaged first) |" in capsys.readouterr().out


def test_the_old_letterbox_is_the_new_one_below_a_threefold_downscale() -> None:
    img = Image.fromarray(np.random.default_rng(5).integers(0, 255, (384, 512, 3), np.uint8))
    before, placement_before = letterbox_before(img, 160)
    now, placement_now = letterbox(img, 160)
    np.testing.assert_array_equal(before, now)
    assert placement_before == placement_now


def test_large_photos_bench_needs_two_photos_of_each(bundle: Path, catalogue: Path) -> None:
    with pytest.raises(SystemExit, match="--per must be at least 2"):
        main(["--bundle", str(bundle), "--catalogue", str(catalogue), "--per", "1"])
