"""bench/encounters.py on a small synthetic catalogue with the toy bundle: every encounter
size and fusion is scored, on encounters cut from the same query photos, thresholds from the
bundle (as served, offsets for encounters included) and from the validation half."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.manifest import EncounterOffset, Manifest
from bench.encounters import main
from training.synth.writer import make_catalogue


def test_encounter_bench_runs_on_unseen_individuals(
    toy_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue = tmp_path / "cat"
    make_catalogue(catalogue, individuals=20, photos=4, species=2, seed=5, image_size=(96, 72))
    # The toy bundle with an offset for encounters of 2 photos (outside the fingerprint).
    bundle = Path(shutil.copytree(toy_bundle, tmp_path / "bundle"))
    manifest = Manifest.read(bundle)
    offsets = [EncounterOffset(photos=2, offset=0.1, encounters=30)]
    manifest.model_copy(update={"encounter_offsets": offsets}).write(bundle)
    out = tmp_path / "figures.json"
    args = ["--bundle", str(bundle), "--catalogue", str(catalogue), "--sizes", "1", "3"]
    assert main([*args, "--seeds", "0", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    # 2 seeds × (one photo + 3 fusions of 3 photos) × (served, validation-tuned)
    assert len(rows) == 2 * 4 * 2
    # Served as /identify serves: one photo at the bundle's threshold for the test gallery's
    # size (70% of 10 test individuals), three with the offset of the largest size tuned.
    served = {1: manifest.threshold_for(None, 7), 3: manifest.threshold_for(None, 7) + 0.1}
    for row in rows:
        for key in ("known_top1", "known_map5", "new_map5", "map5"):
            assert 0.0 <= row[key] <= 1.0
        if row["kind"] == "served":
            assert row["threshold"] == pytest.approx(served[row["photos"]], abs=1e-3)
    # Test individuals: 7 known with 3 query photos, 3 new with 4: one encounter of 3 each.
    assert {r["encounters"] for r in rows if r["photos"] == 3} == {10}
    assert {r["encounters"] for r in rows if r["photos"] == 1} == {7 * 3 + 3 * 4}
    assert "| 3 | top2 | validation-tuned" in capsys.readouterr().out


def test_individuals_a_bundle_trained_on_are_left_out(
    toy_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalogue = tmp_path / "cat"
    make_catalogue(catalogue, individuals=24, photos=4, species=1, seed=6, image_size=(96, 72))
    # A training catalogue of the first 4 individuals' rows (a run's train-catalogue).
    rows = (catalogue / "train.csv").read_text().splitlines()
    trained = sorted({line.split(",")[2] for line in rows[1:]})[:4]
    kept = [rows[0], *(line for line in rows[1:] if line.split(",")[2] in trained)]
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "train.csv").write_text("\n".join(kept) + "\n")
    (tmp_path / "trained" / "images").symlink_to(catalogue / "images")
    args = ["--bundle", str(toy_bundle), "--catalogue", str(catalogue), "--sizes", "1"]
    assert main([*args, "--seeds", "0", "--exclude", str(tmp_path / "trained")]) == 0
    assert "20 individuals, 80 photos" in capsys.readouterr().out
    # A seeded subset of those: the same one on every run.
    assert (
        main([*args, "--seeds", "0", "--exclude", str(tmp_path / "trained"), "--individuals", "12"])
        == 0
    )
    first = capsys.readouterr().out
    assert "12 individuals, 48 photos" in first
    assert (
        main([*args, "--seeds", "0", "--exclude", str(tmp_path / "trained"), "--individuals", "12"])
        == 0
    )
    assert capsys.readouterr().out == first
