"""gallery.encounter.fuse: several photos' hits → one row, against a per-individual reference."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.encounter import FUSIONS, FusedHits, Fusion, fuse
from gallery.rank import NEW, rank

A, B, C = 0, 1, 2


def _reference(sims: np.ndarray, labels: np.ndarray, how: str) -> dict[int, float]:
    """Per individual: each photo's best similarity to it, else that photo's weakest hit."""
    out: dict[int, float] = {}
    for m in {int(x) for x in labels.ravel() if x >= 0}:
        per = []
        for s, lab in zip(sims, labels, strict=True):
            mine = [float(v) for v, x in zip(s, lab, strict=True) if x == m]
            valid = [float(v) for v, x in zip(s, lab, strict=True) if x >= 0]
            per.append(max(mine) if mine else (min(valid) if valid else -1.0))
        per.sort(reverse=True)
        out[m] = {"max": per[0], "mean": float(np.mean(per)), "top2": float(np.mean(per[:2]))}[how]
    return out


@pytest.mark.parametrize("how", FUSIONS)
def test_fuse_matches_the_reference(how: Fusion) -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        photos, k = int(rng.integers(1, 5)), int(rng.integers(1, 8))
        labels = rng.integers(-1, 6, size=(photos, k))
        sims = np.sort(rng.uniform(-0.2, 1, size=(photos, k)), axis=1)[:, ::-1].copy()
        fused = fuse(sims, labels, how)
        expected = _reference(sims, labels, how)
        got = dict(zip(fused.labels[0].tolist(), fused.sims[0].tolist(), strict=True))
        assert got.keys() == expected.keys()
        for m, value in expected.items():
            assert got[m] == pytest.approx(value, abs=1e-6)
        # The evidence is a real hit of that individual, the best over all photos.
        for j, m in enumerate(fused.labels[0]):
            p, col = fused.photo[j], fused.column[j]
            assert labels[p, col] == m
            assert sims[p, col] == pytest.approx(sims[labels == m].max())


def test_three_photos_rank_the_animal_first_where_one_photo_does_not() -> None:
    # Each photo alone has a different impostor just ahead of the true animal A.
    labels = np.array([[B, A, C], [C, A, B], [A, B, C]])
    sims = np.array([[0.80, 0.78, 0.50], [0.79, 0.77, 0.40], [0.76, 0.50, 0.45]])
    threshold = 0.6
    alone = rank(sims[:1], labels[:1], threshold)
    assert alone.codes[0, 0] == B
    fused = fuse(sims, labels, "top2")
    ranked = rank(fused.sims, fused.labels, threshold)
    assert ranked.codes[0, 0] == A and ranked.scores[0, 0] == pytest.approx(0.775)
    # max lets the sharpest impostor match decide; mean and top2 do not.
    assert rank(*_row(fuse(sims, labels, "max")), threshold).codes[0, 0] == B
    assert rank(*_row(fuse(sims, labels, "mean")), threshold).codes[0, 0] == A
    # The evidence for A is its best photo: the first, column 1.
    a = list(fused.labels[0]).index(A)
    assert (fused.photo[a], fused.column[a]) == (0, 1)


def test_an_encounter_of_new_animal_stays_new() -> None:
    labels = np.array([[A, B], [B, C]])
    sims = np.array([[0.4, 0.3], [0.35, 0.2]])
    fused = fuse(sims, labels, "mean")
    assert rank(fused.sims, fused.labels, 0.6).codes[0, 0] == NEW


def test_no_hits_and_bad_input() -> None:
    fused = fuse(np.zeros((2, 3)), np.full((2, 3), -1), "top2")
    assert fused.sims.shape == (1, 0)
    assert rank(fused.sims, fused.labels, 0.5).codes[0, 0] == NEW
    with pytest.raises(ValueError, match="equal"):
        fuse(np.zeros((2, 3)), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="fusion"):
        fuse(np.zeros((1, 1)), np.zeros((1, 1), dtype=int), "median")  # type: ignore[arg-type]


def _row(fused: FusedHits) -> tuple[np.ndarray, np.ndarray]:
    return fused.sims, fused.labels
