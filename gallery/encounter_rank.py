"""An encounter's shortlist → one ranked answer, each candidate with the photo that found it.

The photos of one encounter are searched together (`IndexReplica.shortlist`, one row of hits
per photo, each under its own viewpoint); `gallery.encounter.fuse` turns the rows into one
score per individual, and `gallery.rank.rank` places `new_individual` among them as it does for
one photo. A candidate's evidence is the gallery photo that gave the individual its best
similarity to any of the encounter's photos, and `evidence_photo` says which of them. A photo
that could not have found an individual (no gallery photo of it on that photo's side) abstains
from that individual's score instead of counting as a miss.
"""

from __future__ import annotations

import numpy as np

from gallery.encounter import Fusion, fuse
from gallery.rank import EMPTY, NEW, NEW_INDIVIDUAL, rank
from gallery.records import Candidate
from gallery.shortlist import Shortlist

__all__ = ["rank_encounter"]


def rank_encounter(
    found: Shortlist,
    *,
    threshold: float,
    top_k: int = 5,
    fusion: Fusion = "top2",
    visible: np.ndarray | None = None,
) -> list[Candidate]:
    """The encounter's top_k candidates, `new_individual` among them at `threshold`.
    visible: (P, individuals) which individuals each photo could have found
    (`IndexReplica.encounter_shortlist`); the others' photos abstain."""
    fused = fuse(found.sims, found.codes, fusion, visible)
    ranking = rank(fused.sims, fused.labels, threshold, top_k)
    candidates: list[Candidate] = []
    for code, score, column in zip(
        ranking.codes[0], ranking.scores[0], ranking.evidence[0], strict=True
    ):
        if code == EMPTY:
            continue
        if code == NEW:
            candidates.append(Candidate(NEW_INDIVIDUAL, float(score), None, None, None))
            continue
        photo, hit = int(fused.photo[column]), int(fused.column[column])
        candidates.append(
            Candidate(
                individual_id=found.names[int(code)],
                score=float(score),
                species=found.species[int(code)],
                evidence_image_id=int(found.image_ids[photo, hit]),
                evidence_similarity=float(found.sims[photo, hit]),
                evidence_photo=photo,
            )
        )
    return candidates
