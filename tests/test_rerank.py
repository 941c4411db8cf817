"""Fusion of a global similarity and a local score: calibrated, monotone, and deciding the
ranking where the global score alone gets it wrong."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.rank import NEW
from gallery.rerank import Fusion, fit_fusion, fuse, rerank


def _validation_pairs(
    rng: np.random.Generator, n: int, local_informative: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs where the global cosine is weakly informative (overlapping distributions) and the
    local match count is strongly so (a true pair has many matches, an impostor a few)."""
    hits = rng.random(n) < 0.3
    global_sims = np.where(hits, rng.normal(0.55, 0.12, n), rng.normal(0.45, 0.12, n))
    if local_informative:
        local = np.where(hits, rng.poisson(30, n), rng.poisson(3, n)).astype(np.float64)
    else:
        local = rng.poisson(8, n).astype(np.float64)
    return global_sims, local, hits


@pytest.mark.parametrize("method", ["mean", "logistic"])
def test_true_pair_outscores_impostor_that_global_prefers(method: str) -> None:
    g, local, hits = _validation_pairs(np.random.default_rng(0), 4000)
    fusion = fit_fusion(g, local, hits, method=method)  # type: ignore[arg-type]
    # The impostor looks more alike globally, but only the true pair has many local matches.
    fused = fuse(np.array([[0.50, 0.60]]), np.array([[35.0, 2.0]]), fusion)
    assert fused[0, 0] > fused[0, 1]
    assert fused[0, 0] > 0.5 > fused[0, 1]
    # And fused probabilities separate the validation pairs better than either score alone.
    p = fuse(g, local, fusion)
    assert _auc(p, hits) > max(_auc(g, hits), 0.9)


def test_fused_probability_never_falls_as_a_score_rises() -> None:
    g, local, hits = _validation_pairs(np.random.default_rng(1), 3000)
    for method in ("mean", "logistic"):
        fusion = fit_fusion(g, local, hits, method=method)  # type: ignore[arg-type]
        sims = np.linspace(0, 1, 41)
        counts = np.linspace(0, 60, 41)
        grid = fuse(sims[:, None].repeat(41, 1), counts[None, :].repeat(41, 0), fusion)
        assert np.all(np.diff(grid, axis=0) >= 0) and np.all(np.diff(grid, axis=1) >= 0)


def test_a_matcher_that_adds_nothing_cannot_reorder_candidates() -> None:
    g, local, hits = _validation_pairs(np.random.default_rng(2), 4000, local_informative=False)
    fusion = fit_fusion(g, local, hits, method="mean")
    sims = np.array([[0.7, 0.6, 0.5, 0.4]])
    counts = np.array([[2.0, 9.0, 30.0, 1.0]])  # noise, by construction of the validation
    fused = fuse(sims, counts, fusion)
    assert list(np.argsort(-fused[0], kind="stable")) == [0, 1, 2, 3]
    logistic = fit_fusion(g, local, hits, method="logistic")
    assert logistic.weights is not None and logistic.weights[2] < 0.2 * logistic.weights[1]


def test_rerank_ranks_individuals_on_the_fused_probability() -> None:
    g, local, hits = _validation_pairs(np.random.default_rng(3), 4000)
    fusion = fit_fusion(g, local, hits)
    # Query 0: individual 7 wins globally, individual 3 locally; query 1: nothing matches.
    sims = np.array([[0.62, 0.55, 0.50], [0.48, 0.46, 0.40]])
    counts = np.array([[1.0, 40.0, 38.0], [2.0, 1.0, 0.0]])
    labels = np.array([[7, 3, 3], [7, 3, 5]])
    ranking = rerank(sims, counts, labels, fusion, threshold=0.5, top_k=3)
    assert ranking.codes[0, 0] == 3 and ranking.evidence[0, 0] == 1
    assert ranking.codes[1, 0] == NEW
    np.testing.assert_allclose(ranking.scores[0, 0], fuse(sims, counts, fusion)[0, 1])


def test_unmatched_candidates_keep_their_global_probability() -> None:
    g, local, hits = _validation_pairs(np.random.default_rng(4), 2000)
    fusion = fit_fusion(g, local, hits)
    fused = fuse(np.array([[0.6, 0.6]]), np.array([[np.nan, 20.0]]), fusion)
    from gallery.calibration import IsotonicCalibration

    p_global = IsotonicCalibration(fusion.global_calibration).predict([0.6])
    np.testing.assert_allclose(fused[0, 0], p_global[0])
    assert Fusion.model_validate_json(fusion.model_dump_json()) == fusion


def _auc(scores: np.ndarray, hits: np.ndarray) -> float:
    """Area under the ROC curve by its definition: P(a true pair outscores an impostor)."""
    pos, neg = scores[hits], scores[~hits]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + ties / 2)
