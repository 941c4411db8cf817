"""The run folder: what `whaleid train` writes and everything downstream reads.

config.yaml      the validated TrainConfig (absolute paths)
labels.json      the label encoder: class index → individual id, species list
splits.json      photos (with boxes) and their roles: train, val fold, open set
transform.json   the EmbedTransform the embedder was trained with
checkpoints/     last.pt and epoch-NNN.pt: model, head, optimiser, scheduler (for --resume)
embedder.pt      backbone + neck weights of the best epoch (the one to export)
metrics.jsonl    one line per epoch; curves.png plots it
evaluation.json  open-set figures at the tuned threshold; sweep.csv and sweep.png
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from app.preprocess import EmbedTransform
from gallery.catalogue import Photo
from gallery.errors import NotFoundError, WhaleidError
from training.config import TrainConfig
from training.model import EmbeddingModel, build_model
from training.splits import EvalSet, Splits, build_eval_set

__all__ = ["Labels", "Run", "load_photos", "save_photos"]

CONFIG = "config.yaml"
LABELS = "labels.json"
SPLITS = "splits.json"
PHOTOS = "photos.json"
TRANSFORM = "transform.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
EMBEDDER = "embedder.pt"
METRICS = "metrics.jsonl"
CURVES = "curves.png"
EVALUATION = "evaluation.json"
SWEEP_CSV = "sweep.csv"
SWEEP_PNG = "sweep.png"


@dataclass(frozen=True)
class Labels:
    """The label encoder: class code i is individuals[i], of species species[species_of[i]],
    seen from viewpoints[i] when classes are by individual and viewpoint (data.class_by):
    then an individual has one class per side ("" for its photos of unknown viewpoint) and
    appears once per class in `individuals`. viewpoints is None for classes by individual."""

    individuals: list[str]
    species: list[str]
    species_of: list[int]
    viewpoints: list[str] | None = None

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> Labels:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def fit(cls, photos: list[Photo], *, by_viewpoint: bool = False) -> Labels:
        keys = sorted({_key(p, by_viewpoint) for p in photos})
        species = sorted({p.species for p in photos})
        first = {p.individual_id: p.species for p in reversed(photos)}
        return cls(
            [name for name, _ in keys],
            species,
            [species.index(first[name]) for name, _ in keys],
            [side for _, side in keys] if by_viewpoint else None,
        )

    @property
    def classes(self) -> int:
        return len(self.individuals)

    def code(self) -> dict[tuple[str, str], int]:
        """(individual, viewpoint) → class; the viewpoint is "" for classes by individual."""
        sides = self.viewpoints or [""] * self.classes
        return {key: i for i, key in enumerate(zip(self.individuals, sides, strict=True))}

    def codes(self, photos: list[Photo]) -> list[int]:
        """The class of each photo (KeyError for a photo of a class not fitted)."""
        code = self.code()
        return [code[_key(p, self.viewpoints is not None)] for p in photos]


def _key(photo: Photo, by_viewpoint: bool) -> tuple[str, str]:
    return photo.individual_id, (photo.viewpoint or "") if by_viewpoint else ""


def save_photos(photos: list[Photo], path: Path) -> None:
    rows = [
        {**asdict(p), "path": str(p.path), "box": list(p.box) if p.box else None} for p in photos
    ]
    Path(path).write_text(json.dumps(rows) + "\n")


def load_photos(path: Path) -> list[Photo]:
    rows = json.loads(Path(path).read_text())
    return [
        Photo(**{**r, "path": Path(r["path"]), "box": tuple(r["box"]) if r["box"] else None})
        for r in rows
    ]


class Run:
    """A run folder, read back. `Run(path)`; fails with NotFoundError if it is not one."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not (self.path / CONFIG).is_file():
            raise NotFoundError(f"{self.path} is not a training run: it has no {CONFIG}")
        self.config = TrainConfig.model_validate(yaml.safe_load((self.path / CONFIG).read_text()))

    @property
    def labels(self) -> Labels:
        return Labels.load(self.path / LABELS)

    @property
    def splits(self) -> Splits:
        return Splits.load(self.path / SPLITS)

    @property
    def photos(self) -> list[Photo]:
        """Every readable catalogue photo, with its box, as training saw it."""
        return load_photos(self.path / PHOTOS)

    @property
    def evaluation(self) -> dict[str, Any]:
        """threshold, map5, map5_known, map5_new (open-set validation), and more; {} if none."""
        path = self.path / EVALUATION
        return json.loads(path.read_text()) if path.is_file() else {}

    @property
    def threshold(self) -> float:
        if "threshold" not in self.evaluation:
            raise WhaleidError(f"run {self.path} has not been evaluated (no {EVALUATION})")
        return float(self.evaluation["threshold"])

    @property
    def metrics(self) -> list[dict[str, Any]]:
        path = self.path / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def transform(self) -> EmbedTransform:
        """The preprocessing this run trained with (input size, mean, std, interpolation)."""
        return EmbedTransform.model_validate_json((self.path / TRANSFORM).read_text())

    def checkpoint_path(self, checkpoint: str = "best") -> Path:
        if checkpoint == "best":
            path = self.path / EMBEDDER
        elif checkpoint == "last":
            path = self.path / CHECKPOINTS / LAST
        else:
            path = self.path / CHECKPOINTS / checkpoint
        if not path.is_file():
            raise NotFoundError(f"run {self.path} has no checkpoint {checkpoint!r} ({path})")
        return path

    def load_embedder(self, checkpoint: str = "best") -> EmbeddingModel:
        """The embedder (backbone + neck) in eval mode on the CPU: 'best' is embedder.pt,
        'last' the latest epoch, or a file name under checkpoints/."""
        state = torch.load(self.checkpoint_path(checkpoint), map_location="cpu", weights_only=True)
        # The weights come from the checkpoint; no need to read pretrained ones first.
        model = build_model(self.config.model.model_copy(update={"pretrained": None}))
        model.load_state_dict(state["model"])
        return model.eval()

    def open_set_split(self) -> EvalSet:
        """The open-set validation: gallery = training photos + one photo of each held-out
        gallery individual; queries = the held-out photos (truth NEW for new individuals)."""
        return self._eval_set(queries=self.splits.open_set.queries)

    def closed_set_split(self) -> EvalSet:
        """The held-out fold of the training individuals, against the same gallery."""
        return self._eval_set(queries=self.splits.val)

    def _eval_set(self, queries: list[str]) -> EvalSet:
        splits = self.splits
        by_name = {p.image: p for p in self.photos}
        gallery = [by_name[n] for n in splits.train + splits.open_set.gallery]
        return build_eval_set(gallery, [by_name[n] for n in queries])
