"""Isotonic calibration: monotone, checked against a brute-force reference, and round-tripped
through the table the manifest will carry."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from gallery.calibration import CalibrationTable, IsotonicCalibration, pool_adjacent_violators


def _brute_force_isotonic(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The best non-decreasing fit among all partitions into consecutive blocks, each at its
    weighted mean: the definition, tried exhaustively on a short sequence."""
    n = len(values)
    best, best_cost = None, np.inf
    for cuts in itertools.product([False, True], repeat=n - 1):
        edges = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        fit = np.concatenate(
            [
                np.full(b - a, np.average(values[a:b], weights=weights[a:b]))
                for a, b in itertools.pairwise(edges)
            ]
        )
        if np.any(np.diff(fit) < -1e-12):
            continue
        cost = float(np.sum(weights * (fit - values) ** 2))
        if cost < best_cost:
            best, best_cost = fit, cost
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(5))
def test_pool_adjacent_violators_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.random(9)
    weights = rng.integers(1, 4, size=9).astype(np.float64)
    np.testing.assert_allclose(
        pool_adjacent_violators(values, weights), _brute_force_isotonic(values, weights)
    )


def test_calibration_is_monotone_and_tracks_the_hit_rate() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 4000)
    hits = rng.random(4000) < scores**2  # P(same | s) = s²
    calibration = IsotonicCalibration().fit(scores, hits)
    grid = np.linspace(-0.5, 1.5, 201)
    p = calibration.predict(grid)
    assert np.all(np.diff(p) >= 0)
    assert p.min() >= 0 and p.max() <= 1
    inside = (grid > 0.15) & (grid < 0.95)
    assert np.abs(p[inside] - grid[inside] ** 2).max() < 0.12
    assert len(calibration.to_dict()["x"]) <= 64


def test_an_uninformative_score_calibrates_to_the_base_rate() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=3000)
    hits = rng.random(3000) < 0.2
    p = IsotonicCalibration().fit(scores, hits).predict(np.linspace(-1.5, 1.5, 31))
    assert np.abs(p - 0.2).max() < 0.1


def test_table_round_trip_and_validation() -> None:
    calibration = IsotonicCalibration().fit([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
    data = calibration.to_dict()
    again = IsotonicCalibration.from_dict(data)
    scores = np.array([0.0, 0.15, 0.25, 0.35, 1.0])
    np.testing.assert_array_equal(again.predict(scores), calibration.predict(scores))
    # (0, 1) then (0, 1) pooled to 0.5: violations are pooled, not kept.
    np.testing.assert_allclose(calibration.predict([0.1, 0.4]), [0.0, 1.0])
    np.testing.assert_allclose(calibration.predict([0.25]), [0.5])
    with pytest.raises(ValidationError):
        CalibrationTable(x=[0.0, 1.0], y=[0.8, 0.2])
    with pytest.raises(ValidationError):
        CalibrationTable(x=[0.0, 1.0], y=[0.5])
    with pytest.raises(ValueError):
        IsotonicCalibration().predict([0.5])
