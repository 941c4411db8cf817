"""Which gallery photos a query may be compared with: the viewpoint rule, in one place.

The two sides of an animal carry different marks, so a left-side query is compared only with
left-side gallery photos: a right-side photo is no evidence for or against the animal. A photo
whose viewpoint is unknown (None) is compatible with every photo, so catalogues and galleries
without viewpoints are searched exactly as before. Training's evaluation and threshold tuning
apply this rule as the service does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UNKNOWN", "any_viewpoint", "compatible", "compatible_codes", "compatible_mask"]

UNKNOWN = -1  # the code of an unknown viewpoint, where labels are coded as integers


def compatible(query: str | None, gallery: str | None) -> bool:
    """Same label, or unknown on either side."""
    return query is None or gallery is None or query == gallery


def compatible_codes(query: np.ndarray | np.integer, gallery: np.ndarray) -> np.ndarray:
    """`compatible` over integer codes (UNKNOWN for no label), broadcast: the same rule for
    arrays, as the index's masks and the evaluation's (Q, G) mask need it."""
    query, gallery = np.asarray(query), np.asarray(gallery)
    return (query == gallery) | (query == UNKNOWN) | (gallery == UNKNOWN)


def any_viewpoint(viewpoints: Sequence[str | None]) -> bool:
    """Whether any photo carries a viewpoint label (else the rule never excludes anything)."""
    return any(v is not None for v in viewpoints)


def compatible_mask(
    queries: Sequence[str | None], gallery: Sequence[str | None]
) -> np.ndarray | None:
    """(Q, G) bool: query i may be compared with gallery photo j. None when no photo on either
    side has a viewpoint, so callers keep their unfiltered path exactly."""
    if not (any_viewpoint(queries) and any_viewpoint(gallery)):
        return None
    labels = sorted({v for v in [*queries, *gallery] if v is not None})
    code = {v: i for i, v in enumerate(labels)}
    q = np.array([code[v] if v is not None else UNKNOWN for v in queries], dtype=np.int64)
    g = np.array([code[v] if v is not None else UNKNOWN for v in gallery], dtype=np.int64)
    return compatible_codes(q[:, None], g[None, :])
