"""Re-embedding a gallery for a new model bundle, from the photos it kept.

The new embeddings (and, for a bundle with a matcher, the photos' local features) are written
beside the old ones (one row per image and fingerprint), batch by batch, so an interrupted run
resumes where it stopped and a running service keeps answering with the old model meanwhile.
When every image has its new embedding the store switches fingerprint in one transaction and
drops the old rows; each open index sees the reset in the change log and rebuilds (or, holding
the old model, refuses to go on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gallery.errors import ConflictError, WhaleidError
from gallery.keypoints import StoredFeatures
from gallery.photos import PhotoStore, resolve_photos_dir
from gallery.records import ImageRecord
from gallery.store import open_store

__all__ = ["EmbedFn", "ReembedReport", "Reembedded", "reembed"]


@dataclass(frozen=True)
class Reembedded:
    """What the new model makes of a batch of photos: (N, dim) float32 L2-normalised vectors
    and, when its bundle has a matcher, each crop's local features."""

    vectors: np.ndarray
    local: Sequence[StoredFeatures] | None = None


# (the images' records, their photo bytes) → their embeddings (and local features)
EmbedFn = Callable[[Sequence[ImageRecord], Sequence[bytes]], Reembedded]


@dataclass(frozen=True)
class ReembedReport:
    embedded: int  # photos the model ran on in this run
    total: int  # images in the gallery
    switched: bool  # False when the gallery already used this fingerprint
    features: int = 0  # photos whose local features were stored in this run


def reembed(
    url: str,
    *,
    fingerprint: str,
    dim: int,
    embed: EmbedFn,
    local: bool = False,
    photos_dir: Path | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> ReembedReport:
    """Recompute every embedding with the model `fingerprint`, then switch the gallery to it.

    With `local` (the bundle has a matcher) every image also gets its local features under
    `fingerprint`: those missing are computed even when the gallery already uses the model
    and its embeddings are complete (an interrupted run, photos registered without them), and
    without a switch then (the index need not rebuild).
    """
    store = open_store(url)
    try:
        info = store.info()
        total = store.count_images()
        current = info.fingerprint == fingerprint
        if current and store.count_missing(fingerprint=fingerprint, features=local) == 0:
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

            done = total - store.count_missing(fingerprint=fingerprint, features=local)
            bar = tqdm(total=total, initial=done, unit="photo", desc="reembed")
        embedded = features = 0
        try:
            # Loop until nothing is missing: photos registered meanwhile (by a service still
            # on the old model, or one storing no features) are picked up by the next pass.
            while True:
                after = -1
                while batch := store.images_missing(
                    fingerprint=fingerprint, after=after, limit=batch_size, features=local
                ):
                    made = embed(batch, [photos.get(r.content_hash) for r in batch])
                    vectors = np.asarray(made.vectors, np.float32)
                    if vectors.shape != (len(batch), dim):
                        raise WhaleidError(
                            f"the new model answered {vectors.shape} for {len(batch)} photos, "
                            f"expected ({len(batch)}, {dim})"
                        )
                    if local and (made.local is None or len(made.local) != len(batch)):
                        raise WhaleidError(
                            f"the new model gave no local features for {len(batch)} photos: "
                            "does its bundle have a matcher?"
                        )
                    # An image whose embedding is already there keeps it (the same model
                    # made it): only its features were missing.
                    store.put_embeddings(
                        fingerprint=fingerprint,
                        image_ids=[r.id for r in batch],
                        vectors=vectors,
                        local=made.local if local else None,
                    )
                    embedded += len(batch)
                    features += len(batch) if local else 0
                    after = batch[-1].id
                    if bar is not None:
                        bar.total = max(bar.total or 0, store.count_images())
                        bar.update(len(batch))
                if store.count_missing(fingerprint=fingerprint, features=local) == 0:
                    if current:
                        break
                    try:
                        store.switch_fingerprint(fingerprint=fingerprint, dim=dim)
                        break
                    except ConflictError:
                        continue  # a photo arrived between the count and the switch
        finally:
            if bar is not None:
                bar.close()
        return ReembedReport(
            embedded, store.count_images(), switched=not current, features=features
        )
    finally:
        store.close()
