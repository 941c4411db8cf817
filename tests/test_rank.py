"""Ranking and MAP@5 against an independent reference: the seeds' per-query Python logic."""

from __future__ import annotations

import numpy as np
import pytest

from gallery.metrics import average_precision_at_k, map_at_k, sweep_thresholds
from gallery.rank import EMPTY, NEW, best_per_individual, rank


def reference_rank(sims, labels, threshold, top_k=5):
    """The Happywhale notebooks' loop: walk hits best first, one entry per individual, and put
    new_individual in front of the first individual whose score is below the threshold."""
    out = []
    for row_sims, row_labels in zip(sims, labels, strict=True):
        order = np.argsort(-row_sims, kind="stable")
        seen, preds = set(), []
        for j in order:
            label = int(row_labels[j])
            if label < 0 or label in seen:
                continue
            seen.add(label)
            preds.append((label, float(row_sims[j])))
        answer = []
        for label, score in preds:
            if score < threshold and NEW not in answer:
                answer.append(NEW)
            answer.append(label)
        if NEW not in answer:
            answer.append(NEW)
        answer = (answer + [EMPTY] * top_k)[:top_k]
        out.append(answer)
    return np.asarray(out)


def reference_map5(preds, truth):
    total = 0.0
    for row, t in zip(preds, truth, strict=True):
        for i, p in enumerate(row[:5]):
            if p == t:
                total += 1.0 / (i + 1)
                break
    return total / len(truth)


@pytest.mark.parametrize("seed", range(5))
def test_rank_matches_the_seeds_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_queries, k = 200, 30
    labels = rng.integers(-1, 12, size=(n_queries, k))  # few individuals → many repeats
    sims = rng.uniform(-0.2, 1.0, size=(n_queries, k)).astype(np.float32)
    for threshold in (-1.0, 0.3, 0.6, 0.95, 2.0):
        got = rank(sims, labels, threshold).codes
        np.testing.assert_array_equal(got, reference_rank(sims, labels, threshold))


def test_new_individual_lands_where_the_threshold_ranks_it() -> None:
    sims = np.array([[0.9, 0.8, 0.7, 0.5, 0.4, 0.3]], dtype=np.float32)
    labels = np.array([[3, 3, 1, 2, 4, 5]])
    ranking = rank(sims, labels, threshold=0.6, top_k=5)
    assert ranking.codes.tolist() == [[3, 1, NEW, 2, 4]]
    np.testing.assert_allclose(ranking.scores, [[0.9, 0.7, 0.6, 0.5, 0.4]], rtol=1e-6)
    assert ranking.evidence.tolist() == [[0, 2, -1, 3, 4]]
    # Nothing reaches the threshold: new_individual first.
    assert rank(sims, labels, threshold=0.95).codes[0, 0] == NEW
    # Everything above: new_individual does not make the top 5.
    assert NEW not in rank(sims, labels, threshold=0.0).codes[0]


def test_unsorted_hits_and_missing_hits() -> None:
    sims = np.array([[0.2, 0.9, 0.5, 0.1]], dtype=np.float32)
    labels = np.array([[7, 8, 7, -1]])
    ranking = rank(sims, labels, threshold=0.3, top_k=5)
    assert ranking.codes.tolist() == [[8, 7, NEW, EMPTY, EMPTY]]
    assert ranking.evidence.tolist() == [[1, 2, -1, -1, -1]]
    assert np.isneginf(ranking.scores[0, 3:]).all()


def test_per_query_thresholds() -> None:
    sims = np.array([[0.5, 0.4], [0.5, 0.4]], dtype=np.float32)
    labels = np.array([[1, 2], [1, 2]])
    codes = rank(sims, labels, threshold=np.array([0.45, 0.6]), top_k=3).codes
    assert codes.tolist() == [[1, NEW, 2], [NEW, 1, 2]]


def test_best_per_individual_keeps_the_best_hit() -> None:
    sims = np.array([[0.1, 0.7, 0.3, 0.7]], dtype=np.float32)
    labels = np.array([[4, 5, 4, 6]])
    codes, scores, columns = best_per_individual(sims, labels)
    assert codes[0, :3].tolist() == [5, 6, 4]
    np.testing.assert_allclose(scores[0, :3], [0.7, 0.7, 0.3])
    assert columns[0, :3].tolist() == [1, 3, 2]
    assert codes[0, 3] == EMPTY


def test_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="must be equal"):
        rank(np.zeros((2, 3)), np.zeros((2, 4), dtype=int), 0.5)


@pytest.mark.parametrize("seed", range(3))
def test_map5_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    preds = rng.integers(-1, 8, size=(500, 5))
    truth = rng.integers(-1, 8, size=500)
    assert map_at_k(preds, truth) == pytest.approx(reference_map5(preds, truth))


def test_map5_counts_only_the_first_correct_answer() -> None:
    preds = np.array([[1, 1, 2, 3, 4], [5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
    truth = np.array([1, 7, 0])
    assert average_precision_at_k(preds, truth).tolist() == [1.0, 1 / 3, 0.0]
    assert map_at_k(np.zeros((0, 5)), np.zeros(0)) == 0.0


def test_sweep_separates_known_and_new_and_finds_the_gap() -> None:
    # Known queries match their individual at 0.8; new queries' best hit is 0.4.
    sims = np.array([[0.8, 0.3], [0.8, 0.2], [0.4, 0.35], [0.4, 0.1]], dtype=np.float32)
    labels = np.array([[0, 1], [1, 0], [0, 1], [1, 0]])
    truth = np.array([0, 1, NEW, NEW])
    sweep = sweep_thresholds(sims, labels, truth, thresholds=np.linspace(0, 1, 101))
    assert 0.4 < sweep.best_threshold <= 0.8
    best = sweep.at(sweep.best_threshold)
    assert best["map5"] == pytest.approx(1.0)
    assert best["map5_known"] == pytest.approx(1.0) and best["map5_new"] == pytest.approx(1.0)
    low = sweep.at(0.0)  # new_individual never first: new queries score 1/3
    assert low["map5_known"] == pytest.approx(1.0)
    assert low["map5_new"] == pytest.approx(1 / 3)


@pytest.mark.parametrize(("seed", "hits"), [(0, 50), (1, 8), (2, 3)])
def test_sweep_equals_ranking_at_each_threshold(seed: int, hits: int) -> None:
    """The sweep's shortcut (new_individual's slot per threshold) scores exactly what ranking
    at every threshold and scoring the answers does: ties with the threshold, repeated
    individuals, missing hits and rows with fewer than five individuals included."""
    rng = np.random.default_rng(seed)
    n = 300
    sims = np.round(rng.uniform(0, 1, size=(n, hits)), 2).astype(np.float32)
    labels = rng.integers(-1, 12, size=(n, hits))
    truth = rng.integers(-1, 14, size=n)  # NEW, gallery individuals, and absent ones
    thresholds = np.round(np.linspace(-0.1, 1.1, 121), 2).astype(np.float32)
    sweep = sweep_thresholds(sims, labels, truth, thresholds)
    for i, threshold in enumerate(thresholds):
        scores = average_precision_at_k(rank(sims, labels, float(threshold)).codes, truth)
        assert sweep.map_all[i] == pytest.approx(scores.mean())
        assert sweep.map_known[i] == pytest.approx(scores[truth != NEW].mean())
        assert sweep.map_new[i] == pytest.approx(scores[truth == NEW].mean())
