"""Splits: folds stratified by individual, open-set individuals never trained on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from gallery.rank import NEW
from training.augment import augment, grid_shuffle
from training.catalogue import Photo
from training.config import AugmentConfig, DataConfig
from training.splits import build_eval_set, make_splits, stratified_folds


def _photos(counts: list[int]) -> list[Photo]:
    return [
        Photo(f"{i}_{j}.jpg", Path(f"{i}_{j}.jpg"), "orca", f"ind{i:02d}")
        for i, n in enumerate(counts)
        for j in range(n)
    ]


def test_splits_are_disjoint_by_individual() -> None:
    rng = np.random.default_rng(1)
    photos = _photos(rng.integers(1, 12, size=60).tolist())
    cfg = DataConfig(catalogue=Path("."), folds=4, fold=1, open_set_fraction=0.25)
    splits = make_splits(photos, cfg, seed=5)
    owner = {p.image: p.individual_id for p in photos}
    trained = {owner[n] for n in splits.train}
    held = {owner[n] for n in splits.open_set.gallery + splits.open_set.queries}
    assert len(held) == 15 and not trained & held
    assert not set(splits.train) & set(splits.val)
    assert len(splits.train) + len(splits.val) + len(splits.open_set.gallery) + len(
        splits.open_set.queries
    ) == len(photos)
    # One gallery photo per held-out gallery individual; the new ones have none.
    gallery_owners = Counter(owner[n] for n in splits.open_set.gallery)
    assert set(gallery_owners.values()) == {1}
    assert not set(gallery_owners) & set(splits.open_set.new_individuals)
    singles = {p.individual_id for p in photos} - {owner[n] for n in splits.train + splits.val}
    for name in singles:
        if sum(owner[p.image] == name for p in photos) == 1:
            assert name in splits.open_set.new_individuals
    assert make_splits(photos, cfg, seed=5) == splits  # seeded


def test_folds_are_stratified_by_individual() -> None:
    photos = _photos([8, 8, 4, 12, 5])
    folds = stratified_folds(photos, 4, np.random.default_rng(0))
    for name in {p.individual_id for p in photos}:
        mine = [f for p, f in zip(photos, folds, strict=True) if p.individual_id == name]
        counts = np.bincount(mine, minlength=4)
        assert counts.max() - counts.min() <= 1  # every fold gets its share
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1


def test_eval_set_truth_is_new_outside_the_gallery() -> None:
    photos = _photos([2, 2, 1])
    eval_set = build_eval_set(photos[:1] + photos[2:3], [photos[1], photos[3], photos[4]])
    assert eval_set.individuals == ["ind00", "ind01"]
    assert eval_set.query_truth.tolist() == [0, 1, NEW]
    assert eval_set.n_new == 1


def test_augment_is_seeded_and_keeps_the_size() -> None:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    everything = AugmentConfig.model_validate(
        {
            "affine": {"p": 1}, "resized_crop": {"p": 1}, "gray_p": 1, "blur": {"p": 1},
            "noise": {"p": 1}, "grid_shuffle": {"p": 1}, "color": {"p": 1}, "hflip_p": 1,
        }
    )  # fmt: skip
    a = augment(img, everything, np.random.default_rng([1, 2, 3]))
    b = augment(img, everything, np.random.default_rng([1, 2, 3]))
    assert a.size == img.size and np.array_equal(np.asarray(a), np.asarray(b))
    nothing = AugmentConfig.model_validate(
        {
            "affine": {"p": 0}, "resized_crop": {"p": 0}, "gray_p": 0, "blur": {"p": 0},
            "noise": {"p": 0}, "grid_shuffle": {"p": 0}, "color": {"p": 0}, "hflip_p": 0,
        }
    )  # fmt: skip
    assert np.array_equal(np.asarray(augment(img, nothing, np.random.default_rng(0))), img)


def test_grid_shuffle_moves_cells_only() -> None:
    pixels = np.arange(4 * 4 * 1).reshape(4, 4, 1)
    out = grid_shuffle(pixels, 2, np.random.default_rng(3))
    cells = lambda a: sorted(a[y : y + 2, x : x + 2].tobytes() for y in (0, 2) for x in (0, 2))  # noqa: E731
    assert cells(out) == cells(pixels)
