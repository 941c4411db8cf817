"""Several photos of one encounter → one row of per-individual scores.

Researchers photograph an animal several times in one sighting; one answer from all of them is
more reliable than one answer per photo (Wildbook #333; Happywhale's winners averaged crops).
Each photo is searched on its own; `fuse` turns the photos' hits into one hit row with one score
per individual, which `gallery.rank.rank` then ranks as it ranks a single photo's hits.

Fusion rules (`FUSIONS`):
- `max`: an individual scores its best similarity to any photo (one sharp photo decides);
- `mean`: the mean over photos (every photo must agree);
- `top2`: the mean of its two best photos (one blurred or off-angle photo cannot veto, one
  lucky impostor match cannot decide).
A photo whose hits do not include an individual contributes that photo's lowest hit similarity
for it: the individual is no closer than that, so this is the most it can have scored. A photo
that could not have found the individual at all (`visible`: it shows a side of which the
gallery holds no photo of that individual) abstains: the other photos decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["FUSIONS", "FusedHits", "Fusion", "fuse"]

Fusion = Literal["max", "mean", "top2"]
FUSIONS: tuple[Fusion, ...] = ("max", "mean", "top2")


@dataclass(frozen=True)
class FusedHits:
    """One row of hits for a whole encounter, shaped for `gallery.rank.rank`.

    sims, labels: (1, M), one column per distinct individual found by any photo.
    photo, column: (M,), the photo and its hit column that gave each individual its best
    similarity: the evidence to show for it.
    """

    sims: np.ndarray
    labels: np.ndarray
    photo: np.ndarray
    column: np.ndarray


def fuse(
    sims: np.ndarray,
    labels: np.ndarray,
    how: Fusion = "top2",
    visible: np.ndarray | None = None,
) -> FusedHits:
    """Fuse the hits of P photos, sims and labels (P, K) (labels < 0: no hit), into one row.

    visible: optional (P, C) bool indexed by label: photo p was compared with at least one
    gallery photo of individual c (a viewpoint filter hides the others). None: all were."""
    sims = np.asarray(sims, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if sims.shape != labels.shape or sims.ndim != 2 or sims.shape[0] < 1:
        raise ValueError(f"sims {sims.shape} and labels {labels.shape} must be equal (P, K)")
    if how not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {how!r}")
    valid = labels >= 0
    individuals = np.unique(labels[valid])
    if individuals.size == 0:
        empty = np.empty((1, 0), dtype=np.float32)
        none = np.empty(0, dtype=np.int64)
        return FusedHits(empty, empty.astype(np.int64), none, none)
    n_photos = sims.shape[0]
    floor = np.where(valid, sims, np.inf).min(axis=1)  # (P,): each photo's weakest hit
    floor = np.where(np.isfinite(floor), floor, -1.0).astype(np.float32)
    # per[p, m]: photo p's best similarity to individual m, or its floor where not a hit.
    per = np.repeat(floor[:, None], individuals.size, axis=1)
    best_col = np.full((n_photos, individuals.size), -1, dtype=np.int64)
    for p in range(n_photos):
        # Hits in descending order of similarity, so the first hit of an individual is its best:
        # walk them backwards so that the best one is written last.
        for k in np.argsort(sims[p], kind="stable"):
            if valid[p, k]:
                m = np.searchsorted(individuals, labels[p, k])
                per[p, m] = sims[p, k]
                best_col[p, m] = k
    evidence_photo = np.where(best_col >= 0, per, -np.inf).argmax(axis=0)
    evidence_col = best_col[evidence_photo, np.arange(individuals.size)]
    if visible is not None:
        # A photo abstains where it could not have seen the individual (one that found it
        # always could).
        seen = np.asarray(visible, dtype=bool)[:, individuals] | (best_col >= 0)
        per = np.where(seen, per, np.nan)
    fused = _combine(per, how)
    return FusedHits(
        sims=fused[None, :].astype(np.float32),
        labels=individuals[None, :],
        photo=evidence_photo.astype(np.int64),
        column=evidence_col,
    )


def _combine(per: np.ndarray, how: Fusion) -> np.ndarray:
    """Fuse (P, M) per-photo scores; NaN: the photo abstains (at least one photo never does)."""
    if how == "max":
        return np.nanmax(per, axis=0)
    if how == "mean":
        return np.nanmean(per, axis=0)
    # Sorting the negation is descending with NaN still last: the two best real scores lead.
    top = -np.sort(-per, axis=0)[: min(2, per.shape[0])]
    return np.nanmean(top, axis=0)
