"""MAP@5 as Happywhale defines it, and the threshold sweep that tunes `new_individual`.

Happywhale scores each query 1/rank of the first correct prediction among its five (0 when the
truth is not among them; later repeats of the truth do not count) and averages over queries.
A query of an individual not in the gallery has truth `new_individual` (code NEW).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gallery.rank import EMPTY, NEW, best_per_individual

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
    """MAP@k for every threshold; truth NEW marks queries of individuals not in the gallery.

    The same figures as ranking at each threshold (`rank`) and scoring the answers, without
    ranking again: the individuals' order does not depend on the threshold, only the slot
    `new_individual` takes (how many of a query's first k individuals reach it), so a sweep
    costs one ranking and one comparison per threshold."""
    if thresholds is None:
        thresholds = np.round(np.arange(-0.2, 1.0001, 0.01), 4)
    thresholds = np.asarray(thresholds, dtype=np.float32)
    truth = np.asarray(truth)
    is_new = truth == NEW
    codes, scores, _ = best_per_individual(sims, labels)
    codes, scores = _first(codes, EMPTY, k), _first(scores, -np.inf, k)
    # The truth's slot among the individuals (k where it is not among the first k).
    found = codes == truth[:, None]
    slot = np.where(found.any(axis=1), found.argmax(axis=1), k)
    table = np.zeros((len(thresholds), 3), dtype=np.float64)
    for start in range(0, len(thresholds), _CHUNK):
        chunk = thresholds[start : start + _CHUNK]
        # new_individual's slot at each threshold: after every individual that reaches it.
        new_slot = (scores[None, :, :] >= chunk[:, None, None]).sum(axis=2)  # (T, Q)
        rank_of_truth = np.where(is_new, new_slot, slot + (slot >= new_slot))
        ap = np.where(rank_of_truth < k, 1.0 / (rank_of_truth + 1), 0.0)
        table[start : start + len(chunk), 0] = ap.mean(axis=1) if ap.shape[1] else 0.0
        table[start : start + len(chunk), 1] = _mean(ap[:, ~is_new])
        table[start : start + len(chunk), 2] = _mean(ap[:, is_new])
    return SweepResult(thresholds, table[:, 0], table[:, 1], table[:, 2])


_CHUNK = 256  # thresholds per step: bounds the (T, Q, k) comparison's memory


def _first(values: np.ndarray, fill: float, k: int) -> np.ndarray:
    """The first k columns, padded with `fill` where there are fewer."""
    if values.shape[1] >= k:
        return values[:, :k]
    return np.pad(values, ((0, 0), (0, k - values.shape[1])), constant_values=fill)


def _mean(ap: np.ndarray) -> np.ndarray:
    return ap.mean(axis=1) if ap.shape[1] else np.full(ap.shape[0], np.nan)
