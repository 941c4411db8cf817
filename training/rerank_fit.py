"""Re-ranking fitted at export: calibrations, fusion and the fused new_individual threshold.

On the runs' open-set validation (individuals never trained on), embedded by the bundle's own
pipeline as serving embeds them (gallery photos with their catalogue boxes, queries through
the detector), each query's global top-B shortlist is scored by `app.reranker.Reranker`, the
re-ranking serving runs. `gallery.rerank.fit_fusion` is fitted on those (query, shortlisted
photo) pairs, for each fusion asked for; the threshold is swept on the fused probability with
training.evaluate's grid and sweep, and its curve by gallery size with
`training.evaluate.curve_by_size`. A pair is matched once: smaller galleries' shortlists reuse
the pairs already scored and match only the new ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np

from app.decode import open_image
from app.matcher_spec import CurvePoint, LocalMethod, RerankSpec
from app.pipeline import Pipeline
from app.reranker import LocalMatcher, Reranker
from gallery.calibration import CalibrationTable
from gallery.keypoints import LocalFeatures
from gallery.metrics import SweepResult, sweep_thresholds
from gallery.rank import NEW, best_per_individual
from gallery.rerank import Fusion, FusionMethod, fit_fusion
from training.catalogue import Photo
from training.config import EvalConfig
from training.evaluate import EmbeddedSet, curve_by_size, knn_hits, sweep, sweep_grid
from training.splits import EvalSet

__all__ = [
    "FUSION_CHOICES",
    "OpenSetPhotos",
    "PairScores",
    "RerankFit",
    "embed_open_set",
    "fit_rerank",
    "search",
    "top1_known",
]

FUSION_CHOICES = ("mean", "logistic", "auto")
_EMBED_BATCH = 32
# Pairs per matcher call: LightGlue's attention holds (pairs, heads, K, K) floats at once.
_PAIRS_PER_CALL = 64
# Local scores are never read by Reranker.local_scores' fusion; this one stands in until the
# fitted one exists.
_UNFITTED = Fusion(
    global_calibration=CalibrationTable(x=[0.0], y=[0.0]),
    local_calibration=CalibrationTable(x=[0.0], y=[0.0]),
)


@dataclass(frozen=True)
class OpenSetPhotos:
    """The open-set validation embedded by a bundle: vectors and, with a matcher, the crops'
    local features (gallery and queries in the EvalSet's order)."""

    embedded: EmbeddedSet
    gallery_local: LocalFeatures | None
    query_local: LocalFeatures | None


def embed_open_set(pipeline: Pipeline, eval_set: EvalSet, *, local: bool) -> OpenSetPhotos:
    """Gallery photos with their catalogue boxes (as `whaleid gallery import` registers them),
    queries as photos arrive at POST /identify (cropped by the bundle's detector, whole
    photos when it has none); `local`: the crops' keypoints too."""

    def embed(photos: list[Photo], with_boxes: bool) -> tuple[np.ndarray, LocalFeatures | None]:
        vectors = [np.zeros((0, pipeline.embedding_dim), dtype=np.float32)]
        parts = []
        for start in range(0, len(photos), _EMBED_BATCH):
            part = photos[start : start + _EMBED_BATCH]
            images = [open_image(p.path) for p in part]
            boxes = [p.box for p in part] if with_boxes else None
            out = pipeline.embed(images, boxes=boxes, local=local)
            vectors.append(out.vectors)
            if out.local is not None:
                parts.append(out.local)
        return np.concatenate(vectors), LocalFeatures.concat(parts) if parts else None

    gallery, gallery_local = embed(eval_set.gallery, with_boxes=True)
    queries, query_local = embed(eval_set.queries, with_boxes=False)
    return OpenSetPhotos(EmbeddedSet(eval_set, gallery, queries), gallery_local, query_local)


class PairScores:
    """Local scores of (query, gallery photo) pairs by `Reranker.local_scores`, each pair
    matched once, on first asking."""

    def __init__(
        self, matcher: LocalMatcher, queries: LocalFeatures, gallery: LocalFeatures
    ) -> None:
        self.reranker = Reranker(matcher, _UNFITTED)
        self.queries = queries
        self.gallery = gallery
        self.known = np.full((len(queries), len(gallery)), np.nan)
        self.matched = 0

    def scores(self, index: np.ndarray, shortlist: int) -> np.ndarray:
        """(Q, W) local scores of each query against the gallery photos `index` (Q, W) names
        (-1: an empty slot), its first `shortlist` columns matched, NaN elsewhere."""
        index = np.asarray(index, dtype=np.int64)
        width = min(shortlist, index.shape[1])
        head = index[:, :width]
        missing = []
        for q, row in enumerate(head):
            photos = np.unique(row[row >= 0])
            missing.append(photos[np.isnan(self.known[q, photos])])
        batch: list[int] = []
        for q, todo in enumerate(missing):
            if todo.size:
                batch.append(q)
            pending = sum(missing[b].size for b in batch)
            if batch and (pending >= _PAIRS_PER_CALL or q == len(missing) - 1):
                self._match(batch, [missing[b] for b in batch])
                batch = []
        out = np.full(index.shape, np.nan)
        rows = np.arange(len(index))[:, None]
        out[:, :width] = np.where(head >= 0, self.known[rows, head.clip(0)], np.nan)
        return out

    def _match(self, queries: Sequence[int], photos: Sequence[np.ndarray]) -> None:
        width = max(len(p) for p in photos)
        candidates = [self.gallery.take(p) for p in photos]
        local, _ = self.reranker.local_scores(self.queries.take(list(queries)), candidates, width)
        for row, (q, p) in enumerate(zip(queries, photos, strict=True)):
            self.known[q, p] = local[row, : len(p)]
        self.matched += sum(len(p) for p in photos)


def search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product kNN as training.evaluate.knn_hits searches, answering gallery rows:
    (Q, k) cosines and row indices (-1 past the gallery's end)."""
    k = max(1, min(k, len(gallery)))
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    sims, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims.astype(np.float32), rows.astype(np.int64)


def top1_known(scores: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of known queries whose best-scored individual is theirs (new_individual aside)."""
    codes, _, _ = best_per_individual(scores, labels)
    known = truth != NEW
    return float((codes[known, 0] == truth[known]).mean()) if known.any() else float("nan")


@dataclass
class RerankFit:
    """What `fit_rerank` chose, and the figures it was chosen on."""

    spec: RerankSpec
    sweep: SweepResult
    figures: dict[str, float] = field(default_factory=dict)
    pairs_matched: int = 0
    # The whole validation's shortlists: (Q, W) cosines, individual codes, local scores.
    shortlists: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def _fused_grid(fused: np.ndarray, step: float) -> np.ndarray:
    """training.evaluate's grid on probabilities: below 0 and above 1 are all alike."""
    return np.unique(np.clip(sweep_grid(fused, step), 0.0, 1.0))


def fit_rerank(
    photos: OpenSetPhotos,
    matcher: LocalMatcher,
    cfg: EvalConfig,
    *,
    method: LocalMethod = "lightglue",
    shortlist: int = 20,
    fusion: str = "auto",
    ransac_px: float = 8.0,
    seed: int = 0,
    pairs: PairScores | None = None,
) -> RerankFit:
    """Fit the fusion of global cosines and `matcher`'s local scores on the validation's
    shortlists, tune the new_individual threshold and its curve on the fused probability.

    `fusion` "auto" fits both methods and keeps the one with the higher validation MAP@5. The
    figures hold both: fused (map5, map5_known, map5_new, top1_known, threshold) and, on the
    same embeddings, global only (global_*), and each fusion's MAP@5 (fusion_<method>_map5).
    `pairs`: local scores already known for these photos with this matcher (a benchmark's
    cache); by default every pair is matched here.
    """
    if fusion not in FUSION_CHOICES:
        raise ValueError(f"fusion {fusion!r}: choose among {', '.join(FUSION_CHOICES)}")
    if photos.gallery_local is None or photos.query_local is None:
        raise ValueError("the open-set photos were embedded without local features")
    embedded = photos.embedded
    labels_g = embedded.eval_set.gallery_labels
    truth = embedded.eval_set.query_truth
    pairs = pairs or PairScores(matcher, photos.query_local, photos.gallery_local)

    def shortlisted(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Serving ranks the B shortlisted photos and nothing else (Engine._reranked): so does
        # the fit. A longer list would rank unmatched photos at their global probability
        # alone, above matched ones whose few matches pull the fused probability down.
        rows = np.flatnonzero(keep)
        sims, found = search(embedded.gallery[rows], embedded.queries, shortlist)
        index = np.where(found >= 0, rows[found.clip(0)], -1)
        labels = np.where(index >= 0, labels_g[index.clip(0)], -1)
        return sims, labels, pairs.scores(index, shortlist)

    everything = np.ones(len(labels_g), dtype=bool)
    sims, labels, local = shortlisted(everything)
    valid = labels >= 0
    hits = (labels == truth[:, None])[valid]

    methods: list[FusionMethod] = ["mean", "logistic"] if fusion == "auto" else [fusion]  # type: ignore[list-item]
    fits: dict[str, tuple[Reranker, np.ndarray, SweepResult]] = {}
    for how in methods:
        fitted = fit_fusion(sims[valid], local[valid], hits, method=how)
        reranker = Reranker(matcher, fitted)
        fused = reranker.rerank(sims, labels, pairs.queries, [], 1.0, local=(local, [])).fused
        grid = _fused_grid(fused, cfg.threshold_step)
        fits[how] = (reranker, fused, sweep_thresholds(fused, labels, truth, grid))
    chosen = max(methods, key=lambda how: float(fits[how][2].map_all.max()))
    reranker, fused, result = fits[chosen]

    def fused_hits(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sims, labels, local = shortlisted(keep)
        return reranker.rerank(
            sims, labels, pairs.queries, [], 1.0, local=(local, [])
        ).fused, labels

    curve = curve_by_size(labels_g, truth, result, fused_hits, cfg.curve_draws, seed=seed)
    figures = {**result.at(result.best_threshold), "top1_known": top1_known(fused, labels, truth)}
    global_result = sweep(embedded, cfg)
    global_sims, global_labels = knn_hits(
        embedded.gallery, labels_g, embedded.queries, cfg.neighbours
    )
    figures |= {f"global_{k}": v for k, v in global_result.at(global_result.best_threshold).items()}
    figures["global_top1_known"] = top1_known(global_sims, global_labels, truth)
    figures |= {f"fusion_{how}_map5": float(fits[how][2].map_all.max()) for how in methods}
    figures |= {
        "queries": float(len(truth)),
        "queries_new": float((truth == NEW).sum()),
        "gallery": float(len(labels_g)),
    }
    spec = RerankSpec(
        method=method,
        shortlist=shortlist,
        ransac_px=ransac_px,
        fusion=reranker.fusion,
        threshold=result.best_threshold,
        threshold_curve=[CurvePoint.model_validate(p) for p in curve],
        cv_metrics={k: float(v) for k, v in figures.items() if v == v},
    )
    return RerankFit(
        spec=spec,
        sweep=result,
        figures=figures,
        pairs_matched=pairs.matched,
        shortlists=(sims, labels, local),
    )
