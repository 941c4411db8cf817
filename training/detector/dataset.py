"""A catalogue's boxes as an ultralytics detection dataset, split by individual.

The catalogue is read by gallery.catalogue, under its one box rule (`boxes.csv` when the
catalogue has one, else its YOLO label files); every box of a photo is a positive example,
and its class is a name of `class_names` or an index into it (none: the first class).
Validation photos are all the photos of a held-out set of individuals: a detector that has seen
an animal's other photos would look better than it will on a new animal.

The dataset is a folder of symlinks to the photos plus label files we write, so ultralytics
(which finds a photo's labels by swapping `images/` for `labels/` in its path) sees one layout
whichever box format the catalogue uses.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from gallery.catalogue import CatalogueError, LabelledBox, Photo, read_catalogue, upright_size
from gallery.errors import NotFoundError
from gallery.records import Box

__all__ = [
    "CatalogueError",
    "ClassBox",
    "DatasetInfo",
    "build_dataset",
    "read_boxes",
    "read_photos",
    "split_by_individual",
]


@dataclass(frozen=True)
class ClassBox:
    class_id: int
    box: Box  # pixels of the photo


class DatasetInfo(BaseModel):
    """What `build_dataset` made; recorded in the run's detector.json."""

    model_config = ConfigDict(extra="forbid")

    data_yaml: Path
    box_source: str  # "labels/" or "boxes.csv"
    train_images: int
    val_images: int
    unlabelled_images: int  # in train.csv but with no box annotation: left out
    val_individuals: list[str]


def read_photos(catalogue: Path) -> list[Photo]:
    """The photos of the catalogue's train.csv."""
    return read_catalogue(catalogue, use_boxes=False).photos


def read_boxes(catalogue: Path, class_names: list[str]) -> tuple[dict[str, list[ClassBox]], str]:
    """Boxes per image (pixels) with their class ids, and where they came from.

    An image with a label file that is empty has been annotated and shows nothing (a background
    photo); an image absent from both has not been annotated.
    """
    found = read_catalogue(catalogue)
    if found.boxes_from is None:
        raise NotFoundError(
            f"{catalogue} has no boxes: the detector needs labels/*.txt (YOLO) or boxes.csv "
            "(image,x1,y1,x2,y2)"
        )
    boxes = {
        image: [ClassBox(_class_id(item, class_names), item.box) for item in items]
        for image, items in found.boxes.items()
    }
    return boxes, found.boxes_from


def _class_id(item: LabelledBox, class_names: list[str]) -> int:
    label = item.label.strip()
    if not label:
        return 0
    if label in class_names:
        return class_names.index(label)
    try:
        class_id = int(float(label))
    except ValueError:
        raise CatalogueError(
            f"{item.where}: class {label!r} is not one of --classes {','.join(class_names)}"
        ) from None
    if not 0 <= class_id < len(class_names):
        raise CatalogueError(
            f"{item.where}: class {class_id} but only {len(class_names)} class name(s) were "
            f"given (--classes {','.join(class_names)})"
        )
    return class_id


def split_by_individual(
    photos: list[Photo], val_fraction: float, seed: int
) -> tuple[list[Photo], list[Photo]]:
    """(train, val): val holds every photo of about `val_fraction` of the individuals."""
    individuals = sorted({p.individual_id for p in photos})
    if len(individuals) < 2:
        raise CatalogueError(
            "the detector's train/val split is by individual and needs at least 2 individuals "
            f"with boxes; found {len(individuals)}"
        )
    random.Random(seed).shuffle(individuals)
    n_val = min(len(individuals) - 1, max(1, round(len(individuals) * val_fraction)))
    held_out = set(individuals[:n_val])
    return (
        [p for p in photos if p.individual_id not in held_out],
        [p for p in photos if p.individual_id in held_out],
    )


def build_dataset(
    catalogue: Path, out_dir: Path, class_names: list[str], *, val_fraction: float, seed: int
) -> DatasetInfo:
    """Write `out_dir/data.yaml` and its images/labels folders for the catalogue's boxes."""
    catalogue, out_dir = Path(catalogue).resolve(), Path(out_dir).resolve()
    photos = read_photos(catalogue)
    boxes, source = read_boxes(catalogue, class_names)
    labelled = [p for p in photos if p.image in boxes]
    if not labelled:
        raise CatalogueError(f"none of the photos in {catalogue / 'train.csv'} has a box")
    train, val = split_by_individual(labelled, val_fraction, seed)
    if out_dir.exists():
        shutil.rmtree(out_dir)  # stale links from another split would leak into this one
    for split, members in (("train", train), ("val", val)):
        for photo in members:
            _add(catalogue, out_dir, split, photo, boxes[photo.image])
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump(
            {
                "path": str(out_dir),
                "train": "images/train",
                "val": "images/val",
                "names": dict(enumerate(class_names)),
            },
            sort_keys=False,
        )
    )
    return DatasetInfo(
        data_yaml=data_yaml,
        box_source=source,
        train_images=len(train),
        val_images=len(val),
        unlabelled_images=len(photos) - len(labelled),
        val_individuals=sorted({p.individual_id for p in val}),
    )


def _add(catalogue: Path, out_dir: Path, split: str, photo: Photo, found: list[ClassBox]) -> None:
    source = catalogue / "images" / photo.image
    if not source.is_file():
        raise NotFoundError(f"{source} is listed in train.csv but does not exist")
    name = photo.image.replace("/", "__")  # one flat folder per split
    link = out_dir / "images" / split / name
    link.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source, link)
    except OSError:  # a filesystem without symlinks: copy instead
        shutil.copyfile(source, link)
    width, height = upright_size(source)
    lines = []
    for item in found:
        x1, y1, x2, y2 = (
            min(max(item.box[0], 0.0), width),
            min(max(item.box[1], 0.0), height),
            min(max(item.box[2], 0.0), width),
            min(max(item.box[3], 0.0), height),
        )
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{item.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    label = out_dir / "labels" / split / Path(name).with_suffix(".txt")
    label.parent.mkdir(parents=True, exist_ok=True)
    label.write_text("".join(lines))
