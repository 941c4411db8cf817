"""training.rerank_fit on a constructed open set, with the numpy matcher (no model, seconds):
where the global embedding barely knows the animals and their marks match, the fitted fusion
beats global only on the validation it was tuned on; each pair is matched once."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.reranker import MutualNNLocal
from gallery.catalogue import Photo
from gallery.keypoints import LocalFeatures
from gallery.rank import NEW
from training.config import EvalConfig
from training.evaluate import EmbeddedSet
from training.rerank_fit import OpenSetPhotos, PairScores, fit_rerank
from training.splits import build_eval_set

SIDE, K, D = 256.0, 48, 32


def _marks(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    points = rng.uniform(20, SIDE - 20, size=(K, 2))
    descriptors = rng.normal(size=(K, D))
    return points, descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)


def _photo(rng: np.random.Generator, marks: tuple[np.ndarray, np.ndarray]) -> LocalFeatures:
    """Another photo of the same marks: shifted, rotated, scaled, noisy, a third replaced."""
    points, descriptors = marks
    angle, scale = rng.uniform(-0.2, 0.2), rng.uniform(0.85, 1.15)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (points - SIDE / 2) @ rotation.T + SIDE / 2 + rng.uniform(-10, 10, 2)
    moved += rng.normal(0, 0.7, moved.shape)
    noisy = descriptors + rng.normal(0, 0.15, descriptors.shape)
    lost = rng.random(K) < 1 / 3
    fresh_points, fresh_descriptors = _marks(rng)
    moved[lost], noisy[lost] = fresh_points[lost], fresh_descriptors[lost]
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return LocalFeatures(
        keypoints=moved[None].astype(np.float32),
        scores=np.ones((1, K), np.float32),
        descriptors=noisy[None].astype(np.float32),
        mask=np.ones((1, K), bool),
        frames=np.array([[0.0, 0.0, 1.0]], np.float32),
    )


def _open_set(seed: int) -> OpenSetPhotos:
    """30 gallery animals (one photo each, 20 of them queried twice) and 10 new animals queried
    twice; global vectors only weakly tied to the animal."""
    rng = np.random.default_rng(seed)
    animals = [f"a{i:02d}" for i in range(40)]
    marks = {a: _marks(rng) for a in animals}
    centres = {a: rng.normal(size=16) for a in animals}

    def photo(animal: str, n: int) -> tuple[Photo, np.ndarray, LocalFeatures]:
        vector = 0.35 * centres[animal] + rng.normal(size=16)
        path = Path(f"{animal}-{n}.jpg")
        return (
            Photo(path.name, path, "s", animal),
            vector / np.linalg.norm(vector),
            _photo(rng, marks[animal]),
        )

    gallery = [photo(a, 0) for a in animals[:30]]
    queries = [photo(a, n) for a in animals[10:] for n in (1, 2)]
    eval_set = build_eval_set([g[0] for g in gallery], [q[0] for q in queries])
    embedded = EmbeddedSet(
        eval_set,
        np.stack([g[1] for g in gallery]).astype(np.float32),
        np.stack([q[1] for q in queries]).astype(np.float32),
    )
    return OpenSetPhotos(
        embedded,
        LocalFeatures.concat([g[2] for g in gallery]),
        LocalFeatures.concat([q[2] for q in queries]),
    )


def test_fused_beats_global_where_marks_match() -> None:
    photos = _open_set(seed=0)
    truth = photos.embedded.eval_set.query_truth
    assert (truth == NEW).sum() == 20 and (truth != NEW).sum() == 40
    fit = fit_rerank(
        photos, MutualNNLocal(5.0), EvalConfig(curve_draws=0), method="mutual_nn", shortlist=10
    )
    figures = fit.figures
    assert figures["map5"] > figures["global_map5"] + 0.2, figures
    assert figures["top1_known"] > figures["global_top1_known"] + 0.2, figures
    spec = fit.spec
    assert spec.method == "mutual_nn" and spec.shortlist == 10
    local = spec.fusion.local_calibration
    assert local.y[-1] > 0.9 and local.y[0] < 0.2  # many matches: the same animal
    assert spec.cv_metrics["map5"] == figures["map5"]
    assert spec.fusion.method in ("mean", "logistic")
    assert {"fusion_mean_map5", "fusion_logistic_map5"} <= set(figures)
    chosen = figures[f"fusion_{spec.fusion.method}_map5"]
    assert chosen == max(figures["fusion_mean_map5"], figures["fusion_logistic_map5"])
    assert [p.images for p in spec.threshold_curve] == [30]
    # Fitted on what serving ranks: the B shortlisted photos, every one of them matched
    # (an unmatched tail at its global probability alone would outrank weak matches).
    assert fit.shortlists is not None
    sims, labels, local = fit.shortlists
    assert sims.shape[1] == labels.shape[1] == local.shape[1] == 10
    assert not np.isnan(local[labels >= 0]).any()


def test_pairs_are_matched_once_and_as_the_matcher_says() -> None:
    photos = _open_set(seed=1)
    assert photos.query_local is not None and photos.gallery_local is not None
    matcher = MutualNNLocal(5.0)
    pairs = PairScores(matcher, photos.query_local, photos.gallery_local)
    index = np.array([[3, 1, 2, -1], [0, 0, 5, 7]])
    first = pairs.scores(index, shortlist=3)
    assert pairs.matched == 5  # (0,3) (0,1) (0,2) (1,0) (1,5): a repeated photo counts once
    assert np.isnan(first[:, 3]).all() and np.isnan(first[0, 3])
    again = pairs.scores(index[:, :2], shortlist=2)
    assert pairs.matched == 5
    np.testing.assert_array_equal(again, first[:, :2])
    direct = matcher.match_many(
        [(photos.query_local.take([0]), photos.gallery_local.take([3, 1, 2]))]
    )[0].counts
    np.testing.assert_array_equal(first[0, :3], direct)
