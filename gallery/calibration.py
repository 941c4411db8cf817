"""Scores → P(same individual | score), fitted on validation pairs and stored as a small table.

A global cosine and a number of local matches are on scales that cannot be added; calibrated,
each is a probability, and probabilities can be fused (`gallery.rerank`). The calibration is
isotonic (pool adjacent violators): the only assumption is that a higher score never means a
lower chance of the same animal. A score that says nothing about identity calibrates to a flat
line at the base rate, and so gets no say in the fusion.

Fitting runs at export time on the open-set validation; serving only interpolates in the
table (numpy, no sklearn), which travels in the manifest as `CalibrationTable`. The shape
follows wildlife-tools' small calibration classes: `fit(scores, hits)`, `predict(scores)`.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CalibrationTable", "IsotonicCalibration", "pool_adjacent_violators"]

MAX_KNOTS = 64


class CalibrationTable(BaseModel):
    """A monotone piecewise-linear map: probability `y[i]` at score `x[i]`, linear between
    knots, flat beyond the ends."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: list[float] = Field(min_length=1, description="scores, non-decreasing")
    y: list[float] = Field(min_length=1, description="P(same individual), non-decreasing")

    @model_validator(mode="after")
    def _monotone(self) -> CalibrationTable:
        if len(self.x) != len(self.y):
            raise ValueError(f"x has {len(self.x)} knots, y {len(self.y)}")
        if any(b < a for a, b in pairwise(self.x)) or any(b < a for a, b in pairwise(self.y)):
            raise ValueError("calibration knots must be non-decreasing in x and y")
        if self.y[0] < 0 or self.y[-1] > 1:
            raise ValueError("calibrated probabilities must lie in [0, 1]")
        return self


def pool_adjacent_violators(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to `values` in weighted least squares.

    Each violation (a value below its predecessor) merges the two blocks into their weighted
    mean, merging backwards as long as the order is still violated. O(n).
    """
    means: list[float] = []
    totals: list[float] = []
    sizes: list[int] = []
    for value, weight in zip(values.tolist(), weights.tolist(), strict=True):
        means.append(value)
        totals.append(weight)
        sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            weight_sum = totals[-2] + totals[-1]
            merged = (means[-2] * totals[-2] + means[-1] * totals[-1]) / weight_sum
            size = sizes[-2] + sizes[-1]
            del means[-1], totals[-1], sizes[-1]
            means[-1], totals[-1], sizes[-1] = merged, weight_sum, size
    return np.repeat(np.asarray(means), sizes)


class IsotonicCalibration:
    """P(same | score), monotone, learnt from scored pairs with known truth."""

    def __init__(self, table: CalibrationTable | None = None) -> None:
        self.table = table

    def fit(
        self, scores: np.ndarray, hits: np.ndarray, *, max_knots: int = MAX_KNOTS
    ) -> IsotonicCalibration:
        """Fit on (N,) scores and (N,) hits (True: the pair shows one individual)."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        hits = np.asarray(hits, dtype=np.float64).ravel()
        if scores.shape != hits.shape or scores.size == 0:
            raise ValueError(f"need as many hits as scores, got {scores.shape}, {hits.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("calibration scores must be finite")
        # Equal scores are one point with their mean hit rate, weighted by their count.
        x, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
        rate = np.bincount(inverse, weights=hits) / counts
        fitted = pool_adjacent_violators(rate, counts.astype(np.float64))
        # Keep the ends of each flat block: interpolation between them is the fitted line.
        change = np.flatnonzero(np.diff(fitted) != 0)
        keep = np.unique(np.r_[0, change, change + 1, len(x) - 1])
        if len(keep) > max_knots:
            keep = keep[np.unique(np.linspace(0, len(keep) - 1, max_knots).round().astype(int))]
        self.table = CalibrationTable(x=x[keep].tolist(), y=fitted[keep].tolist())
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, the shape of `scores`."""
        if self.table is None:
            raise ValueError("the calibration has not been fitted")
        scores = np.asarray(scores, dtype=np.float64)
        return np.interp(scores, self.table.x, self.table.y).astype(np.float32)

    def to_dict(self) -> dict[str, list[float]]:
        if self.table is None:
            raise ValueError("the calibration has not been fitted")
        return self.table.model_dump()

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> IsotonicCalibration:
        return cls(CalibrationTable.model_validate(data))
