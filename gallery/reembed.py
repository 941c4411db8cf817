"""Re-embedding a gallery for a new model bundle, from the photos it kept.

The new embeddings are written beside the old ones (one row per image and fingerprint), batch
by batch, so an interrupted run resumes where it stopped and a running service keeps
answering with the old model meanwhile. When every image has its new embedding the store
switches fingerprint in one transaction and drops the old rows; each open index sees the
reset in the change log and rebuilds (or, holding the old model, refuses to go on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery.errors import ConflictError, WhaleidError
from gallery.photos import PhotoStore, resolve_photos_dir
from gallery.records import ImageRecord
from gallery.store import open_store

__all__ = ["EmbedFn", "ReembedReport", "reembed"]

# (the images' records, their photo bytes) → (N, dim) float32 L2-normalised
EmbedFn = Callable[[Sequence[ImageRecord], Sequence[bytes]], np.ndarray]


@dataclass(frozen=True)
class ReembedReport:
    embedded: int  # in this run
    total: int  # images in the gallery
    switched: bool  # False when the gallery already used this fingerprint


def reembed(
    url: str,
    *,
    fingerprint: str,
    dim: int,
    embed: EmbedFn,
    photos_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ReembedReport:
    """Recompute every embedding with the model `fingerprint`, then switch the gallery to it."""
    store = open_store(url)
    try:
        info = store.info()
        total = store.count_images()
        if info.fingerprint == fingerprint and store.count_missing(fingerprint=fingerprint) == 0:
            return ReembedReport(0, total, switched=False)
        if total == 0:  # nothing to recompute: adopt the model
            store.switch_fingerprint(fingerprint=fingerprint, dim=dim)
            return ReembedReport(0, 0, switched=True)
        folder = resolve_photos_dir(url, stored=info.photos_dir, given=photos_dir)
        if folder is None:
            raise WhaleidError(
                f"gallery {url} keeps no photos (no photos_dir), so it cannot be re-embedded: "
                "register the photos again with the new bundle"
            )
        photos = PhotoStore(folder)
        bar = None
        if progress:
            from tqdm import tqdm

            done = total - store.count_missing(fingerprint=fingerprint)
            bar = tqdm(total=total, initial=done, unit="photo", desc="reembed")
        embedded = 0
        try:
            # Loop until nothing is missing: photos registered meanwhile (by a service still
            # on the old model) are picked up by the next pass.
            while True:
                after = -1
                while batch := store.images_missing(
                    fingerprint=fingerprint, after=after, limit=batch_size
                ):
                    vectors = np.asarray(
                        embed(batch, [photos.get(r.content_hash) for r in batch]), np.float32
                    )
                    if vectors.shape != (len(batch), dim):
                        raise WhaleidError(
                            f"the new model answered {vectors.shape} for {len(batch)} photos, "
                            f"expected ({len(batch)}, {dim})"
                        )
                    store.put_embeddings(
                        fingerprint=fingerprint, image_ids=[r.id for r in batch], vectors=vectors
                    )
                    embedded += len(batch)
                    after = batch[-1].id
                    if bar is not None:
                        bar.total = max(bar.total or 0, store.count_images())
                        bar.update(len(batch))
                if store.count_missing(fingerprint=fingerprint) == 0:
                    try:
                        store.switch_fingerprint(fingerprint=fingerprint, dim=dim)
                        break
                    except ConflictError:
                        continue  # a photo arrived between the count and the switch
        finally:
            if bar is not None:
                bar.close()
        return ReembedReport(embedded, store.count_images(), switched=True)
    finally:
        store.close()
