"""MAP@5 as Happywhale defines it, and the threshold sweep that tunes `new_individual`.

Happywhale scores each query 1/rank of the first correct prediction among its five (0 when the
truth is not among them; later repeats of the truth do not count) and averages over queries.
A query of an individual not in the gallery has truth `new_individual` (code NEW).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gallery.rank import NEW, rank

__all__ = ["SweepResult", "average_precision_at_k", "map_at_k", "sweep_thresholds"]


def average_precision_at_k(predictions: np.ndarray, truth: np.ndarray, k: int = 5) -> np.ndarray:
    """Per-query score: 1/(1 + index of the first correct prediction in the top k), else 0.

    predictions: (Q, ≥k) codes; truth: (Q,) codes.
    """
    predictions = np.asarray(predictions)[:, :k]
    hit = predictions == np.asarray(truth)[:, None]
    first = hit.argmax(axis=1)
    return np.where(hit.any(axis=1), 1.0 / (first + 1), 0.0)


def map_at_k(predictions: np.ndarray, truth: np.ndarray, k: int = 5) -> float:
    """Mean of average_precision_at_k over queries (0.0 for no queries)."""
    scores = average_precision_at_k(predictions, truth, k)
    return float(scores.mean()) if scores.size else 0.0


@dataclass(frozen=True)
class SweepResult:
    """MAP@5 at each threshold, over all queries and for known and new queries apart."""

    thresholds: np.ndarray
    map_all: np.ndarray
    map_known: np.ndarray
    map_new: np.ndarray

    @property
    def best_index(self) -> int:
        return int(np.argmax(self.map_all))

    @property
    def best_threshold(self) -> float:
        return float(self.thresholds[self.best_index])

    def at(self, threshold: float) -> dict[str, float]:
        """The figures at the swept threshold nearest `threshold`."""
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        return {
            "threshold": float(self.thresholds[i]),
            "map5": float(self.map_all[i]),
            "map5_known": float(self.map_known[i]),
            "map5_new": float(self.map_new[i]),
        }


def sweep_thresholds(
    sims: np.ndarray,
    labels: np.ndarray,
    truth: np.ndarray,
    thresholds: Sequence[float] | np.ndarray | None = None,
    k: int = 5,
) -> SweepResult:
    """MAP@k for every threshold; truth NEW marks queries of individuals not in the gallery."""
    if thresholds is None:
        thresholds = np.round(np.arange(-0.2, 1.0001, 0.01), 4)
    thresholds = np.asarray(thresholds, dtype=np.float32)
    truth = np.asarray(truth)
    is_new = truth == NEW
    rows = []
    for threshold in thresholds:
        scores = average_precision_at_k(rank(sims, labels, float(threshold), k).codes, truth, k)
        rows.append(
            (
                scores.mean() if scores.size else 0.0,
                scores[~is_new].mean() if (~is_new).any() else np.nan,
                scores[is_new].mean() if is_new.any() else np.nan,
            )
        )
    table = np.asarray(rows, dtype=np.float64).reshape(len(thresholds), 3)
    return SweepResult(thresholds, table[:, 0], table[:, 1], table[:, 2])
