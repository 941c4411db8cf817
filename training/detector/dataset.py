"""A catalogue's boxes as an ultralytics detection dataset, split by individual.

The catalogue keeps `train.csv` (image, species, individual_id), its photos under `images/`, and
boxes either as YOLO txt (`labels/<stem>.txt`: class cx cy w h, normalised) or as `boxes.csv`
(image, x1, y1, x2, y2 in pixels, optionally a `class` column with a class name or index).
Validation photos are all the photos of a held-out set of individuals: a detector that has seen
an animal's other photos would look better than it will on a new animal.

The dataset is a folder of symlinks to the photos plus label files we write, so ultralytics
(which finds a photo's labels by swapping `images/` for `labels/` in its path) sees one layout
whichever box format the catalogue uses.
"""

from __future__ import annotations

import csv
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict

from app.preprocess import Box
from gallery.errors import NotFoundError, WhaleidError

__all__ = [
    "CatalogueError",
    "DatasetInfo",
    "LabelledBox",
    "Photo",
    "build_dataset",
    "read_boxes",
    "read_photos",
    "split_by_individual",
    "upright_size",
]


_ORIENTATION = 0x0112  # the EXIF tag


class CatalogueError(WhaleidError):
    """The catalogue's train.csv or boxes are missing or malformed."""


@dataclass(frozen=True)
class Photo:
    image: str  # as in train.csv: a path relative to the catalogue's images/
    individual_id: str
    species: str


@dataclass(frozen=True)
class LabelledBox:
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
    """The rows of the catalogue's train.csv."""
    path = Path(catalogue) / "train.csv"
    if not path.is_file():
        raise NotFoundError(f"{catalogue} is not a catalogue: it has no train.csv")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "individual_id"} - set(reader.fieldnames or ())
        if missing:
            raise CatalogueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        return [
            Photo(row["image"], row["individual_id"], row.get("species") or "") for row in reader
        ]


def read_boxes(catalogue: Path, class_names: list[str]) -> tuple[dict[str, list[LabelledBox]], str]:
    """Boxes per image (pixels), from labels/*.txt if there are any, else boxes.csv.

    An image with a label file that is empty has been annotated and shows nothing (a background
    photo); an image absent from both has not been annotated. Returns (boxes, source).
    """
    catalogue = Path(catalogue)
    labels_dir = catalogue / "labels"
    if labels_dir.is_dir() and any(labels_dir.glob("*.txt")):
        return _read_yolo_labels(catalogue, class_names), "labels/"
    if (catalogue / "boxes.csv").is_file():
        return _read_boxes_csv(catalogue / "boxes.csv", class_names), "boxes.csv"
    raise NotFoundError(
        f"{catalogue} has no boxes: the detector needs labels/*.txt (YOLO) or boxes.csv "
        "(image,x1,y1,x2,y2)"
    )


def _read_yolo_labels(catalogue: Path, class_names: list[str]) -> dict[str, list[LabelledBox]]:
    stems = {Path(p.image).with_suffix("").as_posix(): p.image for p in read_photos(catalogue)}
    boxes: dict[str, list[LabelledBox]] = {}
    for stem, image in stems.items():
        label_file = catalogue / "labels" / f"{stem}.txt"
        if not label_file.is_file():
            continue
        width, height = upright_size(catalogue / "images" / image)
        found = []
        for number, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                cls, cx, cy, w, h = (float(v) for v in line.split()[:5])
            except ValueError as exc:
                raise CatalogueError(f"{label_file}:{number}: not 'class cx cy w h'") from exc
            class_id = _class_id(int(cls), class_names, f"{label_file}:{number}")
            box = ((cx - w / 2) * width, (cy - h / 2) * height)
            found.append(
                LabelledBox(class_id, (box[0], box[1], box[0] + w * width, box[1] + h * height))
            )
        boxes[image] = found
    return boxes


def _read_boxes_csv(path: Path, class_names: list[str]) -> dict[str, list[LabelledBox]]:
    boxes: dict[str, list[LabelledBox]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"image", "x1", "y1", "x2", "y2"} - set(reader.fieldnames or ())
        if missing:
            raise CatalogueError(f"{path} lacks the column(s) {', '.join(sorted(missing))}")
        for number, row in enumerate(reader, 2):
            where = f"{path}:{number}"
            try:
                box = (float(row["x1"]), float(row["y1"]), float(row["x2"]), float(row["y2"]))
            except ValueError as exc:
                raise CatalogueError(f"{where}: x1,y1,x2,y2 must be numbers") from exc
            label = (row.get("class") or "").strip()
            if not label:
                class_id = 0
            elif label in class_names:
                class_id = class_names.index(label)
            elif label.isdigit():
                class_id = _class_id(int(label), class_names, where)
            else:
                raise CatalogueError(
                    f"{where}: class {label!r} is not one of --classes {','.join(class_names)}"
                )
            boxes.setdefault(row["image"], []).append(LabelledBox(class_id, box))
    return boxes


def _class_id(class_id: int, class_names: list[str], where: str) -> int:
    if not 0 <= class_id < len(class_names):
        raise CatalogueError(
            f"{where}: class {class_id} but only {len(class_names)} class name(s) were given "
            f"(--classes {','.join(class_names)})"
        )
    return class_id


def upright_size(path: Path) -> tuple[int, int]:
    """(W, H) of the photo as decoded (EXIF orientation applied), from its header only."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90°: sides swap
            return height, width
    return width, height


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


def _add(
    catalogue: Path, out_dir: Path, split: str, photo: Photo, found: list[LabelledBox]
) -> None:
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
