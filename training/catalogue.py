"""Load a photo-ID catalogue: train.csv, the image folder and optional boxes.

Every photo is decoded once here with app.decode (the service's decoder), so a photo the
service could not read is never trained on: such photos are skipped, counted and listed, and
the load fails when more than `max_unreadable` of them are. Boxes come from a CSV
(`image,x1,y1,x2,y2`, pixels) or YOLO txt files (`class cx cy w h [conf]`, normalised).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from app.decode import open_image
from app.preprocess import Box, crop_box
from gallery.errors import WhaleidError
from training.config import DataConfig

__all__ = ["Catalogue", "CatalogueError", "Photo", "load_catalogue", "read_photo"]

REQUIRED_COLUMNS = ("image", "species", "individual_id")
BOX_COLUMNS = ("image", "x1", "y1", "x2", "y2")
_SHOW = 10  # names listed in an error before "and N more"


class CatalogueError(WhaleidError):
    """The catalogue's CSV, images or boxes are missing or malformed."""


@dataclass(frozen=True)
class Photo:
    """One catalogue photo: where it is, whose it is, and its box (None: the whole photo)."""

    image: str
    path: Path
    species: str
    individual_id: str
    box: Box | None = None


@dataclass
class Catalogue:
    photos: list[Photo]
    unreadable: list[str] = field(default_factory=list)  # image names skipped, with the reason
    boxes_from: str | None = None  # the boxes file or folder used, if any

    @property
    def individuals(self) -> list[str]:
        return sorted({p.individual_id for p in self.photos})

    @property
    def species(self) -> list[str]:
        return sorted({p.species for p in self.photos})


def read_photo(photo: Photo, padding: float) -> Image.Image:
    """Decode a photo and crop it to its padded box: the crop the embedder sees."""
    return crop_box(open_image(photo.path), photo.box, padding)


def _names(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _read_rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise CatalogueError(f"catalogue file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if missing:
            raise CatalogueError(
                f"{path} lacks the column(s) {', '.join(missing)} "
                f"(it has: {', '.join(columns) or 'none'}; needed: {', '.join(required)})"
            )
        return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def _boxes_from_csv(path: Path) -> dict[str, Box]:
    boxes: dict[str, Box] = {}
    for line, row in enumerate(_read_rows(path, BOX_COLUMNS), start=2):
        try:
            box = tuple(float(row[c]) for c in BOX_COLUMNS[1:])
        except ValueError as exc:
            raise CatalogueError(f"{path} line {line}: box coordinates must be numbers") from exc
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            raise CatalogueError(f"{path} line {line}: box {box} has no area (x2>x1, y2>y1)")
        # Several boxes for one photo: keep the largest, the animal nearest the camera.
        old = boxes.get(row["image"])
        if old is None or _area(box) > _area(old):  # type: ignore[arg-type]
            boxes[row["image"]] = box  # type: ignore[assignment]
    return boxes


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def _yolo_box(path: Path, size: tuple[int, int]) -> Box | None:
    """The best box of a YOLO label file, in pixels: highest confidence, else largest."""
    width, height = size
    best: tuple[float, Box] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (5, 6):
            raise CatalogueError(f"{path} line {number}: expected 'class cx cy w h [conf]'")
        try:
            cx, cy, w, h = (float(v) for v in parts[1:5])
            conf = float(parts[5]) if len(parts) == 6 else None
        except ValueError as exc:
            raise CatalogueError(f"{path} line {number}: values must be numbers") from exc
        box = (
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        )
        key = conf if conf is not None else w * h
        if best is None or key > best[0]:
            best = (key, box)
    return best[1] if best else None


def load_catalogue(cfg: DataConfig) -> Catalogue:
    """Read the catalogue `cfg` names; every listed photo is decoded once to check it."""
    root = Path(cfg.catalogue)
    if not root.is_dir():
        raise CatalogueError(f"catalogue folder {root} does not exist (data.catalogue)")
    rows = _read_rows(root / cfg.csv, REQUIRED_COLUMNS)
    if not rows:
        raise CatalogueError(f"{root / cfg.csv} lists no photos")
    images = root / cfg.images
    if not images.is_dir():
        raise CatalogueError(f"image folder {images} does not exist (data.images)")
    empty = [str(i) for i, r in enumerate(rows, start=2) if not all(r[c] for c in REQUIRED_COLUMNS)]
    if empty:
        raise CatalogueError(
            f"{root / cfg.csv}: empty image/species/individual_id on line(s) {_names(empty)}"
        )
    absent = [r["image"] for r in rows if not (images / r["image"]).is_file()]
    if absent:
        raise CatalogueError(
            f"{len(absent)} photo(s) listed in {cfg.csv} are not in {images}: {_names(absent)}"
        )

    boxes: dict[str, Box] = {}
    boxes_from: str | None = None
    yolo_dir = root / cfg.yolo_labels
    if cfg.use_boxes and (root / cfg.boxes_csv).is_file():
        boxes, boxes_from = _boxes_from_csv(root / cfg.boxes_csv), str(root / cfg.boxes_csv)
    elif cfg.use_boxes and yolo_dir.is_dir():
        boxes_from = str(yolo_dir)

    photos: list[Photo] = []
    unreadable: list[str] = []
    for row in rows:
        path = images / row["image"]
        try:
            size = open_image(path).size
        except (WhaleidError, OSError, ValueError) as exc:
            # app.decode lets some of Pillow's own errors through (a truncated PNG header
            # raises OSError in Image.open): unreadable all the same.
            unreadable.append(f"{row['image']} ({exc})")
            continue
        box = boxes.get(row["image"])
        label_file = yolo_dir / (Path(row["image"]).stem + ".txt")
        if boxes_from == str(yolo_dir) and label_file.is_file():
            box = _yolo_box(label_file, size)
        photos.append(Photo(row["image"], path, row["species"], row["individual_id"], box))

    if len(unreadable) > cfg.max_unreadable * len(rows):
        raise CatalogueError(
            f"{len(unreadable)} of {len(rows)} photos in {images} cannot be read "
            f"(more than {cfg.max_unreadable:.0%}, data.max_unreadable): {_names(unreadable)}"
        )
    return Catalogue(photos, unreadable, boxes_from)
