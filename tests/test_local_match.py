"""The numpy matcher on constructed keypoint sets whose true correspondences are known."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.local_match import inlier_counts, mutual_nearest, ransac


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _scene(rng: np.random.Generator, k: int = 200, d: int = 128) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, 256, (k, 2)), _unit(rng.normal(size=(k, d)))


def _seen_again(
    rng: np.random.Generator, points: np.ndarray, desc: np.ndarray, keep: float = 0.6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same keypoints under a rotation + scale + shift, with pixel noise, descriptor noise,
    and only a share of them seen again (the rest replaced by new keypoints)."""
    angle, scale = 0.3, 0.8
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rot.T + [20.0, -10.0] + rng.normal(0, 0.7, points.shape)
    noisy = _unit(desc + rng.normal(0, 0.08, desc.shape))
    seen = rng.random(len(points)) < keep
    fresh_points, fresh_desc = _scene(rng, len(points), desc.shape[1])
    return (
        np.where(seen[:, None], moved, fresh_points),
        np.where(seen[:, None], noisy, fresh_desc),
        seen,
    )


def test_mutual_nearest_finds_the_true_pairs_and_respects_masks() -> None:
    rng = np.random.default_rng(0)
    points, desc = _scene(rng)
    _, desc1, seen = _seen_again(rng, points, desc)
    mask0 = np.ones(len(desc), dtype=bool)
    mask1 = np.ones(len(desc), dtype=bool)
    i0, i1, sim = mutual_nearest(desc, mask0, desc1, mask1, min_similarity=0.5)
    assert (i0 == i1).mean() > 0.98 and seen[i0].all() and (sim >= 0.5).all()
    assert len(i0) > 0.9 * seen.sum()
    # Masked slots (padding) never take part.
    mask1[:50] = False
    i0, i1, _ = mutual_nearest(desc, mask0, desc1, mask1)
    assert (i1 >= 50).all()


@pytest.mark.parametrize("transform", ["similarity", "affine"])
def test_ransac_keeps_the_consistent_matches(transform: str) -> None:
    rng = np.random.default_rng(1)
    points, desc = _scene(rng)
    points1, _, seen = _seen_again(rng, points, desc)
    # Correspondences by index: the seen ones are true, the others are outliers.
    inliers = ransac(points, points1, threshold=4.0, transform=transform)  # type: ignore[arg-type]
    assert inliers[seen].mean() > 0.95
    assert inliers[~seen].mean() < 0.05


def test_the_same_scene_scores_far_above_a_different_one() -> None:
    rng = np.random.default_rng(2)
    points, desc = _scene(rng)
    again, desc_again, seen = _seen_again(rng, points, desc)
    other, desc_other = _scene(rng)
    mask = np.ones(len(points), dtype=bool)
    counts = inlier_counts(
        points,
        desc,
        mask,
        np.stack([again, other]),
        np.stack([desc_again, desc_other]),
        np.stack([mask, mask]),
        threshold=4.0,
    )
    assert counts[0] > 0.8 * seen.sum()
    assert counts[1] <= 5
    # Deterministic: the same pair always gets the same score.
    assert ransac(points, again, threshold=4.0).sum() == ransac(points, again, threshold=4.0).sum()


def test_too_few_correspondences_prove_nothing() -> None:
    assert not ransac(np.zeros((2, 2)), np.ones((2, 2)), threshold=1.0).any()
    assert ransac(np.zeros((0, 2)), np.zeros((0, 2)), threshold=1.0).shape == (0,)
