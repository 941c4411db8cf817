"""The one reader of a photo list: the CSV `whaleid predict --photos` takes.

Columns: `image` (a path, relative to the CSV's folder or absolute), optionally `viewpoint`
(the side shown; empty: unknown) and `encounter` (photos of one sighting, answered together;
every row then names one). Values obey the gallery's rules (gallery.rules): a broken one is a
GalleryInputError (exit 2) naming its line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from gallery.errors import GalleryInputError, WhaleidError
from gallery.rules import check_label, check_viewpoint

__all__ = ["ListedPhoto", "PhotoList", "read_photo_list"]


@dataclass(frozen=True)
class ListedPhoto:
    path: Path
    viewpoint: str | None = None
    encounter: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class PhotoList:
    photos: list[ListedPhoto]
    has_encounters: bool  # the CSV has an encounter column: one answer per encounter


def read_photo_list(path: Path) -> PhotoList:
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise WhaleidError(f"--photos {path}: cannot read it ({exc})") from exc
    if "image" not in columns:
        raise GalleryInputError(
            f"--photos {path}: needs an `image` column (optionally viewpoint, encounter); "
            f"found {', '.join(columns) or 'none'}"
        )
    has_encounters = "encounter" in columns
    photos: list[ListedPhoto] = []
    for line, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        where = f"{path.name} line {line}"
        if not row.get("image"):
            raise GalleryInputError(f"{where}: empty image")
        encounter = check_label(row.get("encounter"), field=f"{where}: encounter")
        if has_encounters and encounter is None:
            raise GalleryInputError(f"{where}: empty encounter (every photo needs one)")
        image = Path(row["image"])
        photos.append(
            ListedPhoto(
                path=image if image.is_absolute() else path.parent / image,
                viewpoint=check_viewpoint(row.get("viewpoint"), field=f"{where}: viewpoint"),
                encounter=encounter,
            )
        )
    if not photos:
        raise WhaleidError(f"--photos {path} lists no photos")
    return PhotoList(photos, has_encounters)
