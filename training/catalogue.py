"""A catalogue for training: gallery.catalogue's photos and boxes, each photo decoded once.

Every photo is decoded once here with app.decode (the service's decoder), so a photo the
service could not read is never trained on: such photos are skipped, counted and listed, and
the load fails when more than `max_unreadable` of them are. Boxes follow gallery.catalogue's
one rule, so training crops exactly as `whaleid gallery import` and the detector dataset do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from app.decode import open_image
from app.preprocess import crop_box
from gallery.catalogue import CatalogueError, Photo, names, read_catalogue
from gallery.errors import WhaleidError
from training.config import DataConfig

__all__ = ["Catalogue", "CatalogueError", "Photo", "load_catalogue", "read_photo"]


@dataclass
class Catalogue:
    photos: list[Photo]
    unreadable: list[str] = field(default_factory=list)  # image names skipped, with the reason
    boxes_from: str | None = None  # "boxes.csv" or "labels/", None: no boxes

    @property
    def individuals(self) -> list[str]:
        return sorted({p.individual_id for p in self.photos})

    @property
    def species(self) -> list[str]:
        return sorted({p.species for p in self.photos})


def read_photo(photo: Photo, padding: float) -> Image.Image:
    """Decode a photo and crop it to its padded box: the crop the embedder sees."""
    return crop_box(open_image(photo.path), photo.box, padding)


def load_catalogue(cfg: DataConfig) -> Catalogue:
    """Read the catalogue `cfg` names; every listed photo is decoded once to check it."""
    found = read_catalogue(
        cfg.catalogue,
        csv_name=cfg.csv,
        images=cfg.images,
        boxes_csv=cfg.boxes_csv,
        labels=cfg.yolo_labels,
        use_boxes=cfg.use_boxes,
    )
    photos: list[Photo] = []
    unreadable: list[str] = []
    for photo in found.photos:
        try:
            open_image(photo.path)
        except (WhaleidError, OSError, ValueError) as exc:
            # app.decode lets some of Pillow's own errors through (a truncated PNG header
            # raises OSError in Image.open): unreadable all the same.
            unreadable.append(f"{photo.image} ({exc})")
            continue
        photos.append(photo)
    total = len(found.photos)
    if len(unreadable) > cfg.max_unreadable * total:
        raise CatalogueError(
            f"{len(unreadable)} of {total} photos in {cfg.catalogue / cfg.images} cannot be read "
            f"(more than {cfg.max_unreadable:.0%}, data.max_unreadable): {names(unreadable)}"
        )
    return Catalogue(photos, unreadable, found.boxes_from)
