"""A query's nearest gallery photos, and how a ranking of them becomes candidates.

The replica answers a search with a `Shortlist` under its read lock, resolving each hit's
individual there and then; ranking (global, or re-ranked by local matches, which takes long
and must not hold the lock) happens after, and `candidates` turns its codes into answers with
the names as they were when the photos were found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gallery.rank import EMPTY, NEW, NEW_INDIVIDUAL, Ranking
from gallery.records import Candidate

__all__ = ["Shortlist"]


@dataclass(frozen=True)
class Shortlist:
    """(Q, B) hits: cosines, image ids (-1: none) and individual codes (-1: none), with the
    name and species of every code present."""

    sims: np.ndarray
    image_ids: np.ndarray
    codes: np.ndarray
    names: dict[int, str]
    species: dict[int, str | None]

    def __len__(self) -> int:
        return int(self.sims.shape[0])

    def candidates(
        self,
        ranking: Ranking,
        *,
        matches: np.ndarray | None = None,
        points: Sequence[Sequence[np.ndarray | None]] | None = None,
    ) -> list[list[Candidate]]:
        """Each query's ranked candidates, evidence from the hit that scored each.

        matches: (Q, B) local match counts (NaN: not matched) and points[q][b]: (M, 4) matched
        keypoints in photo pixels, when the ranking was re-ranked by local matches.
        """
        results: list[list[Candidate]] = []
        for q in range(len(ranking.codes)):
            row: list[Candidate] = []
            for code, score, column in zip(
                ranking.codes[q], ranking.scores[q], ranking.evidence[q], strict=True
            ):
                if code == EMPTY:
                    continue
                if code == NEW:
                    row.append(Candidate(NEW_INDIVIDUAL, float(score), None, None, None))
                    continue
                count = None if matches is None else matches[q, column]
                row.append(
                    Candidate(
                        individual_id=self.names[int(code)],
                        score=float(score),
                        species=self.species[int(code)],
                        evidence_image_id=int(self.image_ids[q, column]),
                        evidence_similarity=float(self.sims[q, column]),
                        evidence_matches=None if count is None or np.isnan(count) else int(count),
                        evidence_points=None if points is None else points[q][column],
                    )
                )
            results.append(row)
        return results
