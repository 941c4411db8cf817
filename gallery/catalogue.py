"""The one reader of a photo-ID catalogue: `train.csv`, its image folder and optional boxes.

Training, the detector's dataset, `whaleid gallery import`, `whaleid predict` and the demo all
read a catalogue here, so a photo is cropped the same way wherever it is used. Torch-free
(numpy and Pillow only): `gallery` is the floor every role stands on.

- `train.csv`: `image,species,individual_id`, optionally `viewpoint` and `encounter` (an empty
  cell is unknown). Happywhale's layout.
- boxes, in pixels of the upright photo, from `boxes.csv` (`image,x1,y1,x2,y2`, optionally a
  `class` column) and/or YOLO label files (`labels/<image stem>.txt`: `class cx cy w h [conf]`,
  normalised).

The box rule, the same everywhere: a catalogue with a `boxes.csv` takes its boxes from it
(YOLO label files are then ignored); one without takes them from its YOLO label files (an empty
file: annotated, nothing on it). Of several boxes on one photo the crop is the largest (by
area): the animal nearest the camera. The detector's dataset keeps every box of a photo as a
positive example.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from gallery.errors import NotFoundError, WhaleidError
from gallery.records import Box

__all__ = [
    "BOX_COLUMNS",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Catalogue",
    "CatalogueError",
    "LabelledBox",
    "NoCatalogueError",
    "Photo",
    "largest",
    "names",
    "read_catalogue",
    "upright_size",
]

REQUIRED_COLUMNS = ("image", "species", "individual_id")
OPTIONAL_COLUMNS = ("viewpoint", "encounter")
BOX_COLUMNS = ("image", "x1", "y1", "x2", "y2")
_ORIENTATION = 0x0112  # the EXIF tag
_SHOW = 10  # names listed in an error before "and N more"


class CatalogueError(WhaleidError):
    """The catalogue's CSV, images or boxes are missing or malformed."""


class NoCatalogueError(CatalogueError, NotFoundError):
    """The folder or its train.csv does not exist."""


@dataclass(frozen=True)
class LabelledBox:
    """One annotated box: pixels of the upright photo, its class as written (a name or an
    index; empty when the source has none) and where it was read, for error messages."""

    box: Box
    label: str = ""
    where: str = ""


@dataclass(frozen=True)
class Photo:
    """One catalogue photo: where it is, whose it is, and the box it is cropped to (None: the
    whole photo). viewpoint and encounter are None when unknown."""

    image: str  # as in train.csv: a path relative to the image folder
    path: Path
    species: str
    individual_id: str
    box: Box | None = None
    viewpoint: str | None = None
    encounter: str | None = None


@dataclass
class Catalogue:
    root: Path
    photos: list[Photo]
    boxes: dict[str, list[LabelledBox]] = field(default_factory=dict)  # image → every box
    boxes_from: str | None = None  # "boxes.csv" or "labels/" (as named), None: no boxes


def names(items: Iterable[str]) -> str:
    """The first few of `items`, for an error message."""
    items = list(items)
    shown = ", ".join(items[:_SHOW])
    return shown + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def largest(boxes: Sequence[LabelledBox]) -> Box | None:
    """The crop of a photo with these boxes: the largest (None when there is none)."""
    best: Box | None = None
    for item in boxes:
        if best is None or _area(item.box) > _area(best):
            best = item.box
    return best


def _area(box: Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def upright_size(path: Path) -> tuple[int, int]:
    """(W, H) of the photo as decoded (EXIF orientation applied), from its header only."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # rotated by 90°: sides swap
            return height, width
    return width, height


def _read_rows(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
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


def _csv_boxes(path: Path) -> dict[str, list[LabelledBox]]:
    boxes: dict[str, list[LabelledBox]] = {}
    for line, row in enumerate(_read_rows(path, BOX_COLUMNS), start=2):
        where = f"{path}:{line}"
        try:
            x1, y1, x2, y2 = (float(row[c]) for c in BOX_COLUMNS[1:])
        except ValueError as exc:
            raise CatalogueError(f"{where}: box coordinates x1,y1,x2,y2 must be numbers") from exc
        if x2 <= x1 or y2 <= y1:
            raise CatalogueError(f"{where}: box {(x1, y1, x2, y2)} has no area (x2>x1, y2>y1)")
        item = LabelledBox((x1, y1, x2, y2), row.get("class", ""), where)
        boxes.setdefault(row["image"], []).append(item)
    return boxes


def _yolo_boxes(path: Path, size: tuple[int, int]) -> list[LabelledBox]:
    width, height = size
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{number}"
        if len(parts) not in (5, 6):
            raise CatalogueError(f"{where}: expected 'class cx cy w h [conf]'")
        try:
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except ValueError as exc:
            raise CatalogueError(f"{where}: values must be numbers") from exc
        box = (
            (cx - w / 2) * width,
            (cy - h / 2) * height,
            (cx + w / 2) * width,
            (cy + h / 2) * height,
        )
        found.append(LabelledBox(box, parts[0], where))
    return found


def read_catalogue(
    root: Path,
    *,
    csv_name: str = "train.csv",
    images: str = "images",
    boxes_csv: str = "boxes.csv",
    labels: str = "labels",
    use_boxes: bool = True,
) -> Catalogue:
    """Read the catalogue in `root`: every row of the CSV (checked: columns, no empty cells,
    every photo present), and its boxes under the module's rule. Photos are not decoded here:
    the caller decides what an unreadable photo means to it."""
    root = Path(root)
    if not root.is_dir():
        raise NoCatalogueError(f"catalogue folder {root} does not exist")
    table = root / csv_name
    if not table.is_file():
        raise NoCatalogueError(
            f"{root} is not a catalogue: it has no {csv_name} ({','.join(REQUIRED_COLUMNS)})"
        )
    rows = _read_rows(table, REQUIRED_COLUMNS)
    if not rows:
        raise CatalogueError(f"{table} lists no photos")
    folder = root / images
    if not folder.is_dir():
        raise CatalogueError(f"image folder {folder} does not exist")
    empty = [str(i) for i, r in enumerate(rows, start=2) if not all(r[c] for c in REQUIRED_COLUMNS)]
    if empty:
        raise CatalogueError(
            f"{table}: empty image/species/individual_id on line(s) {names(empty)}"
        )
    absent = [r["image"] for r in rows if not (folder / r["image"]).is_file()]
    if absent:
        raise CatalogueError(
            f"{len(absent)} photo(s) listed in {csv_name} are not in {folder}: {names(absent)}"
        )

    boxes: dict[str, list[LabelledBox]] = {}
    source: str | None = None
    if use_boxes:
        if (root / boxes_csv).is_file():
            boxes = _csv_boxes(root / boxes_csv)
            source = boxes_csv
        label_dir = root / labels
        if source is None and label_dir.is_dir():
            used = False
            for row in rows:
                label_file = label_dir / Path(row["image"]).with_suffix(".txt")
                if not label_file.is_file():
                    continue
                try:
                    size = upright_size(folder / row["image"])
                except (OSError, ValueError):
                    continue  # an unreadable photo: its reader says so when it decodes it
                boxes[row["image"]] = _yolo_boxes(label_file, size)
                used = True
            if used:
                source = f"{labels}/"

    photos = [
        Photo(
            image=row["image"],
            path=folder / row["image"],
            species=row["species"],
            individual_id=row["individual_id"],
            box=largest(boxes.get(row["image"], ())),
            viewpoint=row.get("viewpoint") or None,
            encounter=row.get("encounter") or None,
        )
        for row in rows
    ]
    return Catalogue(root, photos, boxes, source)
