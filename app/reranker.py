"""The one re-ranking: a global shortlist, scored by local matches, fused, ranked.

Export's calibration and threshold tuning, `whaleid evaluate`-style studies (bench/rerank.py),
`whaleid predict` and the service all call `Reranker.rerank`, so the figures a bundle is tuned
on are the figures it serves. Inputs are plain arrays: the shortlist's global cosines and
individual codes (Q, B) as faiss and `gallery.rank` use them, the queries' local features and,
per query, its B candidates' (from the gallery store, or from an evaluation's own arrays).

Two local methods, both torch-free: the bundle's LightGlue (ONNX) and mutual nearest
descriptors + RANSAC in numpy (`gallery.local_match`), cheaper on a CPU host. The fusion and
its threshold were fitted for one of them (`RerankSpec.method`); serving uses that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.local_features import OnnxLightGlue
from app.manifest import Manifest
from app.matcher_spec import LocalMethod, MatcherSpec, RerankSpec
from gallery.keypoints import LocalFeatures
from gallery.local_match import verified_pairs
from gallery.rank import Ranking, rank
from gallery.rerank import Fusion, fuse

__all__ = [
    "LightGlueLocal",
    "LocalMatcher",
    "MutualNNLocal",
    "PairMatches",
    "Reranked",
    "Reranker",
    "open_local_matcher",
]


@dataclass(frozen=True)
class PairMatches:
    """One query against B candidates: (B,) match counts (the local score) and, per
    candidate, the (M, 2) matched slots (query slot, candidate slot)."""

    counts: np.ndarray
    pairs: list[np.ndarray]


class LocalMatcher(Protocol):
    """Matches one query crop's features against each of B candidates'."""

    def match_many(
        self, jobs: Sequence[tuple[LocalFeatures, LocalFeatures]]
    ) -> list[PairMatches]: ...


class LightGlueLocal:
    """The bundle's LightGlue; every job's pairs go through onnxruntime in one run."""

    def __init__(self, lightglue: OnnxLightGlue) -> None:
        self.lightglue = lightglue

    def match_many(self, jobs: Sequence[tuple[LocalFeatures, LocalFeatures]]) -> list[PairMatches]:
        sizes = [len(candidates) for _, candidates in jobs]
        if sum(sizes) == 0:
            return [PairMatches(np.zeros(0, np.int64), []) for _ in jobs]
        queries = LocalFeatures.concat(
            [q.take(np.zeros(n, dtype=np.int64)) for (q, _), n in zip(jobs, sizes, strict=True)]
        )
        candidates = LocalFeatures.concat([c for _, c in jobs if len(c)])
        matches = self.lightglue.match_rows(queries, candidates)
        out, start = [], 0
        for n in sizes:
            rows = matches.matches[start : start + n]
            pairs = [np.stack([np.flatnonzero(r >= 0), r[r >= 0]], axis=1) for r in rows]
            out.append(PairMatches((rows >= 0).sum(axis=1).astype(np.int64), pairs))
            start += n
        return out


class MutualNNLocal:
    """Mutual nearest descriptors, verified by one similarity transform (numpy)."""

    def __init__(self, ransac_px: float) -> None:
        self.ransac_px = ransac_px

    def match_many(self, jobs: Sequence[tuple[LocalFeatures, LocalFeatures]]) -> list[PairMatches]:
        out = []
        for query, candidates in jobs:
            if len(query) != 1:
                raise ValueError(f"match one query crop at a time, got {len(query)}")
            pairs = [
                verified_pairs(
                    query.keypoints[0],
                    query.descriptors[0],
                    query.mask[0],
                    candidates.keypoints[b],
                    candidates.descriptors[b],
                    candidates.mask[b],
                    threshold=self.ransac_px,
                )
                for b in range(len(candidates))
            ]
            out.append(PairMatches(np.array([len(p) for p in pairs], np.int64), pairs))
        return out


def open_local_matcher(
    bundle_dir: Path,
    spec: MatcherSpec,
    method: LocalMethod,
    *,
    ransac_px: float = 8.0,
    providers: Sequence[str] | None = None,
    spinning: bool = False,
) -> LocalMatcher:
    """The bundle's local matcher for `method`."""
    if method == "mutual_nn":
        return MutualNNLocal(ransac_px)
    return LightGlueLocal(
        OnnxLightGlue(Path(bundle_dir) / spec.matcher_file, spec, providers, spinning=spinning)
    )


@dataclass(frozen=True)
class Reranked:
    """The ranking on fused probabilities, and what it was made of: (Q, B) local scores (NaN
    where a candidate was not matched) and each query's PairMatches."""

    ranking: Ranking
    fused: np.ndarray
    local: np.ndarray
    matches: list[PairMatches]


class Reranker:
    """Fuse a global shortlist with local matches, as a bundle's RerankSpec says."""

    def __init__(self, matcher: LocalMatcher, fusion: Fusion) -> None:
        self.matcher = matcher
        self.fusion = fusion

    @classmethod
    def from_manifest(
        cls,
        bundle_dir: Path,
        manifest: Manifest,
        providers: Sequence[str] | None = None,
        *,
        spinning: bool = False,
    ) -> Reranker | None:
        """The bundle's reranker, or None when it has no re-ranking."""
        if manifest.matcher is None or manifest.rerank is None:
            return None
        spec: RerankSpec = manifest.rerank
        matcher = open_local_matcher(
            bundle_dir,
            manifest.matcher,
            spec.method,
            ransac_px=spec.ransac_px,
            providers=providers,
            spinning=spinning,
        )
        return cls(matcher, spec.fusion)

    def local_scores(
        self, queries: LocalFeatures, candidates: Sequence[LocalFeatures], width: int
    ) -> tuple[np.ndarray, list[PairMatches]]:
        """(Q, width) match counts of each query against its candidates (NaN past a query's
        candidates), and the PairMatches."""
        if len(candidates) != len(queries):
            raise ValueError(f"{len(candidates)} candidate sets for {len(queries)} queries")
        jobs = [(queries.take([q]), candidates[q]) for q in range(len(queries))]
        matches = self.matcher.match_many(jobs)
        local = np.full((len(queries), width), np.nan)
        for q, m in enumerate(matches):
            local[q, : len(m.counts)] = m.counts
        return local, matches

    def rerank(
        self,
        sims: np.ndarray,
        labels: np.ndarray,
        queries: LocalFeatures,
        candidates: Sequence[LocalFeatures],
        threshold: float | np.ndarray,
        top_k: int = 5,
        *,
        local: tuple[np.ndarray, list[PairMatches]] | None = None,
    ) -> Reranked:
        """Rank individuals on the fused probability of each shortlisted photo.

        sims, labels: (Q, B) the global shortlist (cosines, individual codes; codes < 0 are
        empty slots); queries: Q crops' features; candidates[q]: the features of query q's
        first len(candidates[q]) shortlisted photos (the rest keep their global probability).
        `local`: scores already computed by `local_scores` (the service matches in its
        batcher's worker, then ranks here).
        """
        sims = np.asarray(sims, dtype=np.float32)
        scores, matches = local or self.local_scores(queries, candidates, sims.shape[1])
        # gallery.rerank.rerank is fuse + rank; fused once here, since the caller keeps it too.
        fused = fuse(sims, scores, self.fusion)
        ranking = rank(fused, labels, threshold, top_k)
        return Reranked(ranking=ranking, fused=fused, local=scores, matches=matches)
