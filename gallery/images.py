"""Images: the records' functions, keyword-only, that every path goes through.

A registration is checked here once (the individual's id, species, viewpoint, encounter and
metadata by gallery.rules; each embedding's shape and norm; its local features' shapes), its
photos are kept (written and fsynced before the commit that refers to them), and the store
commits it in one transaction. The HTTP routes and `Gallery` (which then brings its index up to
date) and `whaleid gallery import` all register through `add_images`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gallery.errors import GalleryInputError, NotFoundError, StoreUnavailableError
from gallery.keypoints import LocalFeatures, StoredFeatures
from gallery.photos import PhotoStore, content_hash
from gallery.records import ImageRecord, NewEntry, NewImage, RegisteredImage
from gallery.rules import check_individual_id, check_label, check_metadata, check_viewpoint
from gallery.store import SqlStore

__all__ = [
    "ImportItem",
    "add_images",
    "delete_image",
    "get_image",
    "local_features",
    "new_entries",
    "photo_of",
]

NORM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ImportItem:
    """One photo to register, with its individual."""

    individual_id: str
    species: str | None
    image: NewImage
    metadata: dict[str, Any] | None = None


def new_entries(*, items: Sequence[ImportItem], dim: int) -> list[NewEntry]:
    """Check every item against the rules; GalleryInputError names the first that breaks one."""
    return [_entry(item, dim) for item in items]


def _entry(item: ImportItem, dim: int) -> NewEntry:
    image = item.image
    vector = np.asarray(image.vector, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise GalleryInputError(
            f"{image.filename}: embedding has {vector.size} values, the gallery takes {dim}"
        )
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or abs(norm - 1.0) > NORM_TOLERANCE:
        raise GalleryInputError(
            f"{image.filename}: embedding is not L2-normalised (norm {norm:.4f})"
        )
    box = None if image.box is None else tuple(float(v) for v in image.box)
    return NewEntry(
        individual_id=check_individual_id(item.individual_id),
        species=check_label(item.species, field="species"),
        content_hash=content_hash(image.content),
        filename=image.filename,
        encounter=check_label(image.encounter, field="encounter"),
        box=box,  # type: ignore[arg-type]
        vector=vector,
        metadata=check_metadata(item.metadata),
        local=_check_local(image.filename, image.local),
        viewpoint=check_viewpoint(image.viewpoint),
    )


def _check_local(filename: str, local: StoredFeatures | None) -> StoredFeatures | None:
    """Local features whose arrays agree on the number of keypoints, with finite values: the
    store keeps them as flat blobs, which could not tell a wrong shape afterwards."""
    if local is None:
        return None
    m = len(local)
    shapes = (local.keypoints.shape, local.scores.shape, local.descriptors.shape[:1])
    if shapes != ((m, 2), (m,), (m,)) or local.descriptors.ndim != 2 or local.frame.shape != (3,):
        raise GalleryInputError(
            f"{filename}: local features of mismatched shapes (keypoints "
            f"{local.keypoints.shape}, scores {local.scores.shape}, descriptors "
            f"{local.descriptors.shape}, frame {local.frame.shape})"
        )
    arrays = (local.keypoints, local.scores, local.descriptors, local.frame)
    if not all(np.isfinite(np.asarray(a, dtype=np.float32)).all() for a in arrays):
        raise GalleryInputError(f"{filename}: local features hold values that are not finite")
    return local


def add_images(
    *,
    store: SqlStore,
    photos: PhotoStore | None,
    items: Sequence[ImportItem],
    fingerprint: str,
    dim: int,
    on_conflict: Literal["raise", "skip"] = "raise",
) -> list[RegisteredImage | None]:
    """Check, keep the photos and commit one transaction (durable when it returns), idempotent
    by content hash: see SqlStore.add_images for what a photo already stored answers."""
    entries = new_entries(items=items, dim=dim)
    if photos is not None:
        try:
            photos.put_many([item.image.content for item in items])
        except OSError as exc:  # a full disk, a read-only folder: nothing is committed
            raise StoreUnavailableError(f"cannot keep the photos in {photos.root}: {exc}") from exc
    return store.add_images(entries=entries, fingerprint=fingerprint, on_conflict=on_conflict)


def get_image(*, store: SqlStore, image_id: int) -> ImageRecord:
    return store.get_image(image_id=image_id)


def local_features(
    *,
    store: SqlStore,
    fingerprint: str,
    image_ids: Sequence[int],
    max_keypoints: int,
    dim: int,
) -> tuple[LocalFeatures, np.ndarray]:
    """The images' stored keypoints padded to `max_keypoints` slots, in the order given (one
    store read), and which images had any stored: (N,) bool. An image without (deleted, or
    registered before its bundle had a matcher) is a row with an all-False mask."""
    ids = [int(i) for i in image_ids]
    stored = store.local_features(fingerprint=fingerprint, image_ids=ids, dim=dim)
    empty = StoredFeatures.empty(dim)
    found = np.array([i in stored for i in ids], dtype=bool)
    return LocalFeatures.pad([stored.get(i, empty) for i in ids], max_keypoints, dim), found


def photo_of(*, store: SqlStore, photos: PhotoStore | None, image_id: int) -> bytes:
    """The original photo of an image (NotFoundError when photos are not kept)."""
    record = store.get_image(image_id=image_id)
    if photos is None:
        raise NotFoundError(f"image {image_id}: this gallery keeps no photos (no photos_dir)")
    return photos.get(record.content_hash)


def delete_image(*, store: SqlStore, photos: PhotoStore | None, image_id: int) -> str:
    """Delete one image, its embeddings and its kept photo; returns the photo's hash."""
    digest = store.delete_image(image_id=image_id)
    if photos is not None:
        photos.delete(digest)
    return digest
