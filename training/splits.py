"""Who is trained on and who is held out: k folds and the open-set validation.

Two splits, both by seed, both saved in the run (splits.json):
- open set: a share of individuals is never trained on. Of those, some get one photo in the
  gallery and are queried with the rest; the others stay out of the gallery, so their queries'
  truth is new_individual. Individuals with one photo can only be such "new" queries. This is
  what POST /gallery + /identify face, and where the new_individual threshold is tuned.
- k folds over the remaining individuals' photos, stratified by individual (each individual's
  photos spread over the folds, as StratifiedKFold does): one fold is the closed-set validation.
Both are by individual, never by class: with classes by individual and viewpoint
(data.class_by), an animal's two sides are always held out, or trained on, together.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gallery.rank import NEW
from gallery.viewpoints import compatible_mask
from training.catalogue import Photo
from training.config import DataConfig

__all__ = [
    "EvalSet",
    "OpenSet",
    "Splits",
    "build_eval_set",
    "make_splits",
    "split_open_set",
    "stratified_folds",
]


@dataclass(frozen=True)
class OpenSet:
    """Held-out individuals: one gallery photo each for some, every photo a query for all."""

    gallery: list[str]  # image names
    queries: list[str]
    new_individuals: list[str]  # not in the gallery: their queries' truth is new_individual


@dataclass(frozen=True)
class Splits:
    """Image names per role; the unit saved as splits.json."""

    train: list[str]
    val: list[str]  # the held-out fold of the training individuals (closed set)
    open_set: OpenSet
    seed: int = 0
    folds: int = 5
    fold: int | None = 0
    dropped: list[str] = field(default_factory=list)  # individuals under data.min_photos

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Splits:
        data = json.loads(Path(path).read_text())
        return cls(**{**data, "open_set": OpenSet(**data["open_set"])})


@dataclass(frozen=True)
class EvalSet:
    """A gallery and queries with integer truth: codes index `individuals`, NEW is new."""

    gallery: list[Photo]
    queries: list[Photo]
    gallery_labels: np.ndarray  # (G,) int64
    query_truth: np.ndarray  # (Q,) int64, NEW where the individual is not in the gallery
    individuals: list[str]
    # (Q, G) bool, the gallery photos each query may be compared with (gallery.viewpoints);
    # None: every photo, as for a catalogue without viewpoints.
    allowed: np.ndarray | None = None

    @property
    def n_new(self) -> int:
        return int((self.query_truth == NEW).sum())


def _by_individual(photos: Sequence[Photo]) -> dict[str, list[Photo]]:
    groups: dict[str, list[Photo]] = defaultdict(list)
    for photo in photos:
        groups[photo.individual_id].append(photo)
    return dict(sorted(groups.items()))


def split_open_set(
    photos: Sequence[Photo], fraction: float, new_fraction: float, rng: np.random.Generator
) -> tuple[list[Photo], OpenSet]:
    """Hold out `fraction` of the individuals; returns (photos kept, the open set)."""
    groups = _by_individual(photos)
    names = list(groups)
    held = sorted(rng.choice(names, size=round(fraction * len(names)), replace=False).tolist())
    singles = [n for n in held if len(groups[n]) < 2]
    multi = [n for n in held if len(groups[n]) >= 2]
    rng.shuffle(multi)
    # Singletons are new by necessity; top up to the asked share from the others.
    n_more = max(0, round(new_fraction * len(held)) - len(singles))
    new = sorted(singles + multi[:n_more])
    gallery: list[str] = []
    queries: list[str] = []
    for name in held:
        images = [p.image for p in groups[name]]
        if name not in new:
            first = int(rng.integers(len(images)))
            gallery.append(images.pop(first))
        queries += images
    held_set = set(held)
    kept = [p for p in photos if p.individual_id not in held_set]
    return kept, OpenSet(gallery=gallery, queries=queries, new_individuals=new)


def stratified_folds(photos: Sequence[Photo], folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold number per photo: each individual's photos dealt round-robin from a running
    offset, so every fold gets its share of every individual and folds stay balanced."""
    assignment = np.empty(len(photos), dtype=np.int64)
    index = {id(p): i for i, p in enumerate(photos)}
    offset = 0
    for group in _by_individual(photos).values():
        order = rng.permutation(len(group))
        for j, k in enumerate(order):
            assignment[index[id(group[k])]] = (offset + j) % folds
        offset += len(group)
    return assignment


def make_splits(photos: Sequence[Photo], cfg: DataConfig, seed: int) -> Splits:
    """The open set first (whole individuals), then folds over the rest."""
    rng = np.random.default_rng(seed)
    kept, open_set = split_open_set(photos, cfg.open_set_fraction, cfg.open_set_new_fraction, rng)
    counts: dict[str, int] = defaultdict(int)
    for photo in kept:
        counts[photo.individual_id] += 1
    dropped = sorted(n for n, c in counts.items() if c < cfg.min_photos)
    kept = [p for p in kept if counts[p.individual_id] >= cfg.min_photos]
    fold_of = stratified_folds(kept, cfg.folds, rng)
    train = [p.image for p, f in zip(kept, fold_of, strict=True) if f != cfg.fold]
    val = [p.image for p, f in zip(kept, fold_of, strict=True) if f == cfg.fold]
    return Splits(train, val, open_set, seed, cfg.folds, cfg.fold, dropped)


def build_eval_set(gallery: Sequence[Photo], queries: Sequence[Photo]) -> EvalSet:
    """Truth for each query: its individual's code where the gallery has it, else NEW.

    With viewpoints, a query is compared only with compatible gallery photos (the service's
    rule), so an individual the gallery shows only from the other side is new to that query:
    nothing the search may look at is evidence of it."""
    individuals = sorted({p.individual_id for p in gallery})
    code = {name: i for i, name in enumerate(individuals)}
    labels = np.array([code[p.individual_id] for p in gallery], dtype=np.int64)
    truth = np.array([code.get(p.individual_id, NEW) for p in queries], dtype=np.int64)
    allowed = compatible_mask([p.viewpoint for p in queries], [p.viewpoint for p in gallery])
    if allowed is not None:
        seen = (labels[None, :] == truth[:, None]) & allowed
        truth = np.where(seen.any(axis=1), truth, NEW)
    return EvalSet(
        gallery=list(gallery),
        queries=list(queries),
        gallery_labels=labels,
        query_truth=truth,
        individuals=individuals,
        allowed=allowed,
    )
