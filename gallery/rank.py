"""kNN hits → per-individual scores → top-k with `new_individual` at the threshold.

Training evaluates with these functions and the service answers with them, so the figures a
bundle was tuned on are the figures the service delivers. Everything is vectorised numpy over a
batch of queries: no per-row Python.

Conventions: individuals are integer codes ≥ 0. In hit arrays a code < 0 means "no hit" (faiss
returns -1 when it has fewer than k neighbours). In ranked output `NEW` stands for
`new_individual` and `EMPTY` pads rows that have fewer than top_k candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "EMPTY",
    "NEW",
    "NEW_INDIVIDUAL",
    "Ranking",
    "best_per_individual",
    "rank",
]

NEW_INDIVIDUAL = "new_individual"
NEW = -1
EMPTY = -2


@dataclass(frozen=True)
class Ranking:
    """Top-k answers for Q queries.

    codes: (Q, k) individual codes, NEW or EMPTY. scores: (Q, k) similarity of each candidate
    (the threshold for NEW, -inf for EMPTY). evidence: (Q, k) column in the hit arrays of the
    hit that gave each candidate its score (-1 for NEW and EMPTY).
    """

    codes: np.ndarray
    scores: np.ndarray
    evidence: np.ndarray


def best_per_individual(
    sims: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collapse hits to one per individual: its best similarity.

    sims, labels: (Q, K) hits. Returns (codes, scores, columns), each (Q, K), ordered by score
    descending; slots beyond a row's distinct individuals hold EMPTY / -inf / -1.
    """
    sims = np.asarray(sims, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if sims.shape != labels.shape or sims.ndim != 2:
        raise ValueError(f"sims {sims.shape} and labels {labels.shape} must be equal (Q, K)")
    n_queries, k = sims.shape
    # Gathers use one row index: np.take_along_axis builds index arrays on every call, and for
    # one query (the service's lone photo) that cost more than rank's twelve gathers.
    rows = np.arange(n_queries)[:, None]
    # Sort hits by similarity first: faiss already does, but callers may filter or merge.
    order = np.argsort(-sims, axis=1, kind="stable")
    sims = sims[rows, order]
    labels = labels[rows, order]
    # A hit is kept when it is valid and no earlier (better) hit has the same individual.
    same = labels[:, :, None] == labels[:, None, :]
    earlier = np.tril(np.ones((k, k), dtype=bool), k=-1)
    keep = (labels >= 0) & ~(same & earlier).any(axis=2)
    # Move kept hits to the front, keeping their order.
    front = np.argsort(~keep, axis=1, kind="stable")
    kept = keep[rows, front]
    codes = np.where(kept, labels[rows, front], EMPTY)
    scores = np.where(kept, sims[rows, front], -np.inf).astype(np.float32)
    columns = np.where(kept, order[rows, front], -1)
    assert codes.shape == (n_queries, k)
    return codes, scores, columns


def rank(
    sims: np.ndarray,
    labels: np.ndarray,
    threshold: float | np.ndarray,
    top_k: int = 5,
) -> Ranking:
    """Rank individuals for each query, with `new_individual` as a candidate scored `threshold`.

    `new_individual` goes after every individual whose best similarity reaches the threshold,
    so it lands where the threshold ranks it (first when nothing is that similar). `threshold`
    may be one number or one per query (per-species thresholds).
    """
    codes, scores, columns = best_per_individual(sims, labels)
    n_queries = codes.shape[0]
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float32), (n_queries,))
    # Pad so that there are always top_k individual slots to draw from.
    width = max(top_k, codes.shape[1])
    if codes.shape[1] < width:
        extra = width - codes.shape[1]
        codes = np.pad(codes, ((0, 0), (0, extra)), constant_values=EMPTY)
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        columns = np.pad(columns, ((0, 0), (0, extra)), constant_values=-1)
    # As the seeds do: individuals at or above the threshold stay ahead of new_individual.
    position = (scores >= thresholds[:, None]).sum(axis=1)
    slot = np.arange(top_k)[None, :]
    is_new = slot == position[:, None]
    source = np.where(slot < position[:, None], slot, slot - 1).clip(0)
    rows = np.arange(n_queries)[:, None]
    out_codes = np.where(is_new, NEW, codes[rows, source])
    out_scores = np.where(is_new, thresholds[:, None], scores[rows, source]).astype(np.float32)
    out_columns = np.where(is_new, -1, columns[rows, source])
    return Ranking(codes=out_codes, scores=out_scores, evidence=out_columns)
