"""Embeddings → faiss kNN → per-individual ranking with new_individual → MAP@5 and the sweep.

Ranking and MAP@5 are gallery.rank and gallery.metrics, the code the service answers with, so
the threshold tuned here means the same thing in production. Thresholds are tuned on the
open-set validation individuals (never trained on) and only applied elsewhere.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn

from app.encounters import ENCOUNTER_FUSION
from app.preprocess import EmbedTransform
from gallery.encounter import fuse
from gallery.metrics import SweepResult, sweep_thresholds
from gallery.rank import NEW
from training.config import EvalConfig
from training.embed import embed_images
from training.splits import EvalSet

__all__ = [
    "ENCOUNTER_SIZES",
    "MIN_ENCOUNTERS",
    "EmbeddedSet",
    "curve_by_size",
    "embed_eval_set",
    "encounter_offsets",
    "knn_hits",
    "score_at",
    "summary",
    "sweep",
    "sweep_grid",
    "threshold_curve",
    "write_sweep_csv",
]


@dataclass(frozen=True)
class EmbeddedSet:
    """An EvalSet's embeddings: (G, D) gallery and (Q, D) queries, L2-normalised."""

    eval_set: EvalSet
    gallery: np.ndarray
    queries: np.ndarray


def embed_eval_set(
    model: nn.Module,
    eval_set: EvalSet,
    transform: EmbedTransform,
    cfg: EvalConfig,
    *,
    padding: float,
    device: str | torch.device = "cpu",
) -> EmbeddedSet:
    def embed(photos: list) -> np.ndarray:
        return embed_images(
            model,
            photos,
            transform,
            flip_tta=cfg.flip_tta,
            batch_size=cfg.batch_size,
            device=device,
            padding=padding,
        )

    return EmbeddedSet(eval_set, embed(eval_set.gallery), embed(eval_set.queries))


def knn_hits(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inner-product kNN (cosine on normalised vectors): (Q, k) similarities and labels,
    label -1 where the gallery has fewer than k vectors.

    `allowed` ((Q, G) bool, from gallery.viewpoints) restricts each query to the gallery
    photos it may be compared with: the others' similarities are masked out before ranking,
    and a query with fewer than k allowed photos gets label -1 and -inf in the rest."""
    k = max(1, min(k, len(gallery)))
    if allowed is not None:
        return _masked_hits(gallery, gallery_labels, queries, k, allowed)
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    sims, idx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    labels = np.where(idx >= 0, gallery_labels[idx.clip(0)], -1)
    return sims.astype(np.float32), labels.astype(np.int64)


_ROWS = 1024  # queries per block of the masked search: bounds its (rows, G) memory


def _masked_hits(
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """knn_hits with a mask: exact similarities, disallowed ones set to -inf, top k."""
    if allowed.shape != (len(queries), len(gallery)):
        raise ValueError(f"allowed is {allowed.shape}, not (queries, gallery)")
    gallery = np.asarray(gallery, dtype=np.float32)
    sims = np.empty((len(queries), k), dtype=np.float32)
    idx = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), _ROWS):
        block = np.asarray(queries[start : start + _ROWS], dtype=np.float32) @ gallery.T
        block[~allowed[start : start + _ROWS]] = -np.inf
        top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        sims[start : start + _ROWS] = np.take_along_axis(block, top, axis=1)
        idx[start : start + _ROWS] = top
    labels = np.where(np.isfinite(sims), gallery_labels[idx], -1)
    return sims, labels.astype(np.int64)


def sweep_grid(sims: np.ndarray, step: float) -> np.ndarray:
    """A fine uniform grid over [-0.2, 1] plus the quantiles of the queries' best scores,
    so a model whose similarities crowd into a narrow band is still swept finely."""
    uniform = np.arange(-0.2, 1.0 + step / 2, step)
    best = sims[:, 0] if sims.size else np.zeros(0)
    best = best[np.isfinite(best)]  # a query with no compatible gallery photo has no best
    quantiles = np.quantile(best, np.linspace(0, 1, 201)) if best.size else np.zeros(0)
    return np.unique(np.round(np.concatenate([uniform, quantiles]), 6)).astype(np.float32)


def _hits(embedded: EmbeddedSet, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    eval_set = embedded.eval_set
    return knn_hits(
        embedded.gallery,
        eval_set.gallery_labels,
        embedded.queries,
        cfg.neighbours,
        eval_set.allowed,
    )


def sweep(embedded: EmbeddedSet, cfg: EvalConfig) -> SweepResult:
    """MAP@5 (all, known, new) at every threshold of the grid."""
    sims, labels = _hits(embedded, cfg)
    grid = sweep_grid(sims, cfg.threshold_step)
    return sweep_thresholds(sims, labels, embedded.eval_set.query_truth, grid)


def threshold_curve(
    embedded: EmbeddedSet, result: SweepResult, cfg: EvalConfig, *, seed: int = 0
) -> list[dict[str, float]]:
    """The tuned threshold at smaller galleries: [{"images", "threshold"}], by size.

    A new individual's photo is answered by its best impostor, and the more gallery photos
    there are the higher that climbs, so the threshold that best keeps new individuals apart
    rises with the gallery's size (0.70 at 28 photos to 0.81 at 628 on the suite's bundle).
    Each smaller gallery keeps the queried individuals' photos and a random share (1/2, 1/4,
    ... down to none) of the others, `cfg.curve_draws` times; MAP@5 is averaged over the
    draws before its best threshold is taken. The last point is `result`, the whole gallery.
    Thresholds are made non-decreasing with size (never stricter for a smaller gallery)."""
    truth = embedded.eval_set.query_truth
    labels = embedded.eval_set.gallery_labels
    allowed = embedded.eval_set.allowed

    def hits(keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return knn_hits(
            embedded.gallery[keep],
            labels[keep],
            embedded.queries,
            cfg.neighbours,
            None if allowed is None else allowed[:, keep],
        )

    return curve_by_size(labels, truth, result, hits, cfg.curve_draws, seed=seed, allowed=allowed)


def curve_by_size(
    labels: np.ndarray,
    truth: np.ndarray,
    result: SweepResult,
    hits: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    draws: int,
    *,
    seed: int = 0,
    allowed: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """`threshold_curve` for any scores: `hits(keep)` answers the queries' (Q, k) scores and
    individual codes against the gallery photos where `keep` (G,) is True, e.g. a global kNN
    or a re-ranked shortlist; `result` is the sweep over the whole gallery, its thresholds
    the grid. `allowed` (Q, G): the photos each query may be compared with (viewpoints), so
    that sizes are the compatible photos a query is compared with."""
    full = [
        {
            "images": _compared(allowed, np.ones(len(labels), bool)),
            "threshold": result.best_threshold,
        }
    ]
    queried = np.unique(truth[truth != NEW])
    others = np.setdiff1d(np.unique(labels), queried)
    if draws == 0 or others.size == 0 or queried.size == 0:
        return full
    rng = np.random.default_rng(seed)
    counts = sorted({others.size >> j for j in range(1, 16)} | {0})
    points = []
    for count in counts:
        total = np.zeros(len(result.thresholds))
        images = 0.0
        for _ in range(draws):
            keep = np.isin(labels, queried) | np.isin(labels, rng.choice(others, count, False))
            sims, hit_labels = hits(keep)
            total += sweep_thresholds(sims, hit_labels, truth, result.thresholds).map_all
            images += _compared(allowed, keep)
        best = float(result.thresholds[int(np.argmax(total))])
        points.append({"images": images / draws, "threshold": best})
    points += full
    for i in range(len(points) - 2, -1, -1):
        points[i]["threshold"] = min(points[i]["threshold"], points[i + 1]["threshold"])
    curve: list[dict[str, float]] = []
    for point in points:  # sizes that round alike: the larger share's point stands
        point = {"images": round(point["images"]), "threshold": point["threshold"]}
        if curve and curve[-1]["images"] >= point["images"]:
            curve.pop()
        curve.append(point)
    return curve


def _compared(allowed: np.ndarray | None, keep: np.ndarray) -> float:
    """The gallery size a query is compared with, as the service looks its threshold up: the
    kept photos, or with viewpoints the compatible ones among them (mean over queries)."""
    if allowed is None:
        return float(keep.sum())
    return float(allowed[:, keep].sum(axis=1).mean())


# Encounter sizes whose threshold is tuned; a larger encounter uses the largest one tuned.
ENCOUNTER_SIZES = (2, 3)
# Fewer encounters of a size than this on the validation: no offset for it (too noisy to tune).
MIN_ENCOUNTERS = 10


def encounter_offsets(
    embedded: EmbeddedSet,
    result: SweepResult,
    cfg: EvalConfig,
    *,
    seed: int = 0,
    sizes: tuple[int, ...] = ENCOUNTER_SIZES,
    min_encounters: int = MIN_ENCOUNTERS,
) -> list[dict[str, float]]:
    """How much higher (or lower) `new_individual`'s threshold is best for encounters of k
    photos than for one photo: [{"photos", "offset", "encounters", "threshold", "map5",
    "map5_at_single"}], one entry per size with at least `min_encounters` encounters.

    Fusing P photos moves a known animal's score (its best photos count) and a new one's best
    impostor's by different amounts, so the threshold that keeps new individuals apart moves
    with P.
    Each individual's query photos, shuffled by `seed`, are cut into encounters of k (the same
    order for every k; a remainder is dropped); each encounter's kNN rows are fused by
    `gallery.encounter.fuse` with the service's rule (`app.encounters.ENCOUNTER_FUSION`, a
    photo that could see no photo of an individual abstaining) and swept like single photos.
    The offset is against `result`'s threshold (one photo, the same validation), so serving
    adds it to the threshold it reads for the gallery's size. `map5` is the encounters' MAP@5
    at the tuned threshold, `map5_at_single` at the single-photo one."""
    eval_set = embedded.eval_set
    sims, labels = _hits(embedded, cfg)
    visible = _visible(eval_set)
    order = _shuffled_by_individual(eval_set, seed)
    offsets = []
    for k in sizes:
        groups = [photos[i : i + k] for photos in order for i in range(0, len(photos) - k + 1, k)]
        if len(groups) < min_encounters:
            continue
        fused_sims, fused_labels = _fused_rows(sims, labels, groups, visible)
        # Its individual where any photo could find it (viewpoints), else NEW (-1).
        truth = np.array([eval_set.query_truth[g].max() for g in groups], dtype=np.int64)
        tuned = _tune_encounters(fused_sims, fused_labels, truth, result.best_threshold, cfg)
        offsets.append({"photos": k, "encounters": len(groups), **tuned})
    return offsets


def _shuffled_by_individual(eval_set: EvalSet, seed: int) -> list[np.ndarray]:
    """Each individual's query indices, in a seeded random order (individuals by name)."""
    rng = np.random.default_rng(seed)
    owners = np.array([p.individual_id for p in eval_set.queries])
    return [rng.permutation(np.flatnonzero(owners == name)) for name in np.unique(owners)]


def _visible(eval_set: EvalSet) -> np.ndarray | None:
    """(Q, individuals) whether each query is compared with any photo of the individual (as
    `IndexReplica.encounter_shortlist` answers); None without viewpoints: all are."""
    if eval_set.allowed is None:
        return None
    codes = np.arange(len(eval_set.individuals))
    owned = (eval_set.gallery_labels[None, :] == codes[:, None]).astype(np.float32)  # (C, G)
    return (eval_set.allowed.astype(np.float32) @ owned.T) > 0


def _fused_rows(
    sims: np.ndarray, labels: np.ndarray, groups: list[np.ndarray], visible: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """One fused hit row per encounter, best first (`sweep_grid` reads column 0 as the best),
    padded with -inf / -1 to the widest."""
    rows = []
    for group in groups:
        seen = None if visible is None else visible[group]
        hits = fuse(sims[group], labels[group], ENCOUNTER_FUSION, seen)
        order = np.argsort(-hits.sims[0], kind="stable")
        rows.append((hits.sims[0][order], hits.labels[0][order]))
    width = max(1, max(len(s) for s, _ in rows))
    fused_sims = np.full((len(rows), width), -np.inf, dtype=np.float32)
    fused_labels = np.full((len(rows), width), -1, dtype=np.int64)
    for i, (row_sims, row_labels) in enumerate(rows):
        fused_sims[i, : len(row_sims)], fused_labels[i, : len(row_labels)] = row_sims, row_labels
    return fused_sims, fused_labels


def _tune_encounters(
    sims: np.ndarray, labels: np.ndarray, truth: np.ndarray, single: float, cfg: EvalConfig
) -> dict[str, float]:
    """The best threshold for fused encounter rows on the single-photo sweep's grid rule, its
    offset from `single` and MAP@5 at both."""
    swept = sweep_thresholds(sims, labels, truth, sweep_grid(sims, cfg.threshold_step))
    at_single = sweep_thresholds(sims, labels, truth, [single])
    return {
        "offset": round(swept.best_threshold - single, 6),
        "threshold": round(swept.best_threshold, 6),
        "map5": float(swept.map_all[swept.best_index]),
        "map5_at_single": float(at_single.map_all[0]),
    }


def score_at(embedded: EmbeddedSet, threshold: float, cfg: EvalConfig) -> dict[str, float | None]:
    """MAP@5 (all, known, new) at one given threshold, e.g. one tuned elsewhere."""
    sims, labels = _hits(embedded, cfg)
    result = sweep_thresholds(sims, labels, embedded.eval_set.query_truth, [threshold])
    return _finite({**result.at(threshold), "threshold": float(threshold)})


def _finite(figures: dict[str, float]) -> dict[str, float | None]:
    """NaN (no known or no new queries) → None, so the JSON stays standard."""
    return {k: (None if v != v else v) for k, v in figures.items()}


def summary(result: SweepResult, eval_set: EvalSet) -> dict[str, float | int | None]:
    """The figures at the best threshold of a sweep, with the query counts behind them."""
    return {
        **_finite(result.at(result.best_threshold)),
        "queries": len(eval_set.queries),
        "queries_new": eval_set.n_new,
        "gallery": len(eval_set.gallery),
        "gallery_individuals": len(eval_set.individuals),
    }


def write_sweep_csv(result: SweepResult, path: Path) -> None:
    with Path(path).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["threshold", "map5", "map5_known", "map5_new"])
        for row in zip(
            result.thresholds, result.map_all, result.map_known, result.map_new, strict=True
        ):
            writer.writerow([f"{float(v):.6f}" for v in row])
