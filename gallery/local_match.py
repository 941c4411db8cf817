"""The cheap local matcher: mutual nearest descriptors, then the matches one transform explains.

LightGlue reasons over all keypoints of both crops at once and costs a transformer per pair; on a
CPU host with a long shortlist that is too slow. This is the classic alternative, numpy only:
pair each keypoint with its most similar descriptor on the other side when that choice is
mutual, then keep the pairs that a single similarity (or affine) transform maps onto each other
within a few pixels (RANSAC). The number of such inliers is the local score: the same animal
seen again yields many mutually consistent pairs, a different one a handful of chance pairs
that no one transform agrees with.

Inputs are the extractor's padded arrays (`gallery.keypoints.LocalFeatures`'s fields):
keypoints (K, 2) in pixels, unit descriptors (K, D), a mask of real slots.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = [
    "Transform",
    "inlier_counts",
    "mutual_nearest",
    "ransac",
    "verified_pairs",
]

Transform = Literal["similarity", "affine"]
_MINIMAL = {"similarity": 2, "affine": 3}  # points that determine one transform


def mutual_nearest(
    descriptors0: np.ndarray,
    mask0: np.ndarray,
    descriptors1: np.ndarray,
    mask1: np.ndarray,
    *,
    min_similarity: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j) where j is i's most similar real descriptor and i is j's, at or above
    `min_similarity` (cosine). Returns (index0, index1, similarity), each (M,)."""
    sim = np.asarray(descriptors0, np.float32) @ np.asarray(descriptors1, np.float32).T
    valid = mask0[:, None] & mask1[None, :]
    sim = np.where(valid, sim, -np.inf)
    if sim.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    best1 = sim.argmax(axis=1)  # for each slot of 0, its best slot of 1
    best0 = sim.argmax(axis=0)
    index0 = np.arange(len(best1))
    similarity = sim[index0, best1]
    keep = (best0[best1] == index0) & mask0 & (similarity >= min_similarity)
    return index0[keep], best1[keep], similarity[keep].astype(np.float32)


def _fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[complex, complex]:
    """Least-squares w = a·z + b over complex points: rotation, uniform scale, shift."""
    zc, wc = src.mean(), dst.mean()
    dz, dw = src - zc, dst - wc
    norm = float(np.sum(np.abs(dz) ** 2))
    a = complex(np.sum(np.conj(dz) * dw) / norm) if norm > 0 else 1.0 + 0j
    return a, complex(wc - a * zc)


def _similarity_hypotheses(
    z: np.ndarray, w: np.ndarray, samples: np.ndarray, max_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (H, M) of the similarity through each sampled pair, and which are usable."""
    z0, z1 = z[samples[:, 0]], z[samples[:, 1]]
    w0, w1 = w[samples[:, 0]], w[samples[:, 1]]
    dz = z1 - z0
    usable = np.abs(dz) > 1e-3
    a = np.where(usable, (w1 - w0) / np.where(usable, dz, 1), 1)
    scale = np.abs(a)
    usable &= (scale >= 1 / max_scale) & (scale <= max_scale)
    b = w0 - a * z0
    residual = np.abs(a[:, None] * z[None, :] + b[:, None] - w[None, :])
    return residual, usable


def _affine_hypotheses(
    p: np.ndarray, q: np.ndarray, samples: np.ndarray, max_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Residuals (H, M) of the affine map through each sampled triple, and which are usable."""
    ones = np.ones((len(samples), 3, 1))
    src = np.concatenate([p[samples], ones], axis=2)  # (H, 3, 3) rows [x y 1]
    det = np.linalg.det(src)
    usable = np.abs(det) > 1e-3
    src[~usable] = np.eye(3)
    maps = np.linalg.solve(src, q[samples])  # (H, 3, 2): [x y 1] @ map = [x' y']
    linear = maps[:, :2, :]
    area = np.abs(np.linalg.det(linear))  # the squared scale, roughly
    usable &= (area >= max_scale**-2) & (area <= max_scale**2)
    moved = np.concatenate([p, np.ones((len(p), 1))], axis=1) @ maps  # (H, M, 2)
    return np.linalg.norm(moved - q[None], axis=2), usable


def ransac(
    points0: np.ndarray,
    points1: np.ndarray,
    *,
    threshold: float,
    transform: Transform = "similarity",
    iterations: int = 256,
    max_scale: float = 4.0,
    seed: int = 0,
) -> np.ndarray:
    """(M,) bool: the correspondences one transform maps within `threshold` px, after RANSAC
    over `iterations` minimal samples and one least-squares refit on the best consensus.

    Fewer correspondences than a minimal sample plus one prove nothing: no inliers then.
    `max_scale` rejects transforms that shrink or grow by more (a collapsed fit can make many
    points agree). A fixed seed: the same pair always scores the same.
    """
    p = np.asarray(points0, dtype=np.float64).reshape(-1, 2)
    q = np.asarray(points1, dtype=np.float64).reshape(-1, 2)
    m = len(p)
    minimal = _MINIMAL[transform]
    if m <= minimal:
        return np.zeros(m, dtype=bool)
    rng = np.random.default_rng(seed)
    # Distinct indices per sample: the first `minimal` of a random permutation of each row.
    samples = np.argsort(rng.random((iterations, m)), axis=1)[:, :minimal]
    if transform == "similarity":
        z, w = p[:, 0] + 1j * p[:, 1], q[:, 0] + 1j * q[:, 1]
        residual, usable = _similarity_hypotheses(z, w, samples, max_scale)
    else:
        residual, usable = _affine_hypotheses(p, q, samples, max_scale)
    counts = np.where(usable, (residual < threshold).sum(axis=1), -1)
    best = int(counts.argmax())
    if counts[best] <= minimal:
        return np.zeros(m, dtype=bool)
    inliers = residual[best] < threshold
    # One refit on the consensus: the minimal sample's noise no longer sets the transform.
    if transform == "similarity":
        a, b = _fit_similarity(z[inliers], w[inliers])
        refit = np.abs(a * z + b - w) < threshold
    else:
        src = np.concatenate([p[inliers], np.ones((int(inliers.sum()), 1))], axis=1)
        maps = np.linalg.lstsq(src, q[inliers], rcond=None)[0]
        moved = np.concatenate([p, np.ones((m, 1))], axis=1) @ maps
        refit = np.linalg.norm(moved - q, axis=1) < threshold
    return refit if refit.sum() >= inliers.sum() else inliers


def verified_pairs(
    keypoints0: np.ndarray,
    descriptors0: np.ndarray,
    mask0: np.ndarray,
    keypoints1: np.ndarray,
    descriptors1: np.ndarray,
    mask1: np.ndarray,
    *,
    threshold: float,
    transform: Transform = "similarity",
    min_similarity: float = 0.0,
    iterations: int = 256,
) -> np.ndarray:
    """(M, 2) slot pairs (i in crop 0, j in crop 1): mutual nearest neighbours that one
    transform maps within `threshold` px. Arrays of one crop each: (K, ...)."""
    i0, i1, _ = mutual_nearest(
        descriptors0, mask0, descriptors1, mask1, min_similarity=min_similarity
    )
    inliers = ransac(
        keypoints0[i0],
        keypoints1[i1],
        threshold=threshold,
        transform=transform,
        iterations=iterations,
    )
    return np.stack([i0[inliers], i1[inliers]], axis=1).astype(np.int64)


def inlier_counts(
    keypoints0: np.ndarray,
    descriptors0: np.ndarray,
    mask0: np.ndarray,
    keypoints1: np.ndarray,
    descriptors1: np.ndarray,
    mask1: np.ndarray,
    *,
    threshold: float,
    transform: Transform = "similarity",
    min_similarity: float = 0.0,
    iterations: int = 256,
) -> np.ndarray:
    """The local score of one query against B candidates: (B,) geometrically verified mutual
    nearest neighbours. Query arrays are (K, ...), candidates' (B, K, ...)."""
    counts = np.zeros(len(keypoints1), dtype=np.int64)
    for b in range(len(keypoints1)):
        pairs = verified_pairs(
            keypoints0,
            descriptors0,
            mask0,
            keypoints1[b],
            descriptors1[b],
            mask1[b],
            threshold=threshold,
            transform=transform,
            min_similarity=min_similarity,
            iterations=iterations,
        )
        counts[b] = len(pairs)
    return counts
