"""How well a detector finds the annotated box on the run's held-out individuals' photos."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from app.decode import open_image
from app.preprocess import Box, Crop
from training.detector.dataset import read_boxes, read_photos
from training.detector.run import DetectorRun

__all__ = ["box_iou", "held_out", "mean_best_iou"]

Detect = Callable[[Sequence[Image.Image]], list[Crop | None]]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two x1y1x2y2 boxes (0 when either is empty)."""
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def held_out(run: DetectorRun, limit: int | None = None) -> list[tuple[Path, list[Box]]]:
    """The validation individuals' photos (catalogue paths) with their annotated boxes."""
    catalogue = Path(run.catalogue)
    boxes, _ = read_boxes(catalogue, run.config.class_names)
    held = set(run.dataset.val_individuals)
    photos = [
        (catalogue / "images" / p.image, [b.box for b in boxes[p.image]])
        for p in read_photos(catalogue)
        if p.individual_id in held and boxes.get(p.image)
    ]
    return photos[:limit]


def mean_best_iou(detect: Detect, photos: list[tuple[Path, list[Box]]], batch: int = 8) -> float:
    """Mean over photos of the best box's IoU with the closest annotated box (0 if no box)."""
    ious: list[float] = []
    for start in range(0, len(photos), batch):
        chunk = photos[start : start + batch]
        crops = detect([open_image(path) for path, _ in chunk])
        for (_, truth), crop in zip(chunk, crops, strict=True):
            ious.append(0.0 if crop is None else max(box_iou(crop.box, t) for t in truth))
    return sum(ious) / len(ious) if ious else 0.0
