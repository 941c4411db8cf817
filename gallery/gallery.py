"""The gallery: its records (gallery.individuals, gallery.images) and an index replica.

Every change goes through the records' functions, which check the rules and commit to the
store (durable before they return); the replica (gallery.replica) then replays the store's
change log, which is also how it catches up after a crash and follows other processes. The CLI
calls the same record functions on a store alone; a running service picks its changes up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gallery import images as image_records
from gallery import individuals as individual_records
from gallery.encounter import Fusion
from gallery.encounter_rank import rank_encounter
from gallery.errors import GalleryInputError
from gallery.images import ImportItem
from gallery.keypoints import LocalFeatures
from gallery.photos import PhotoStore, resolve_photos_dir
from gallery.records import (
    KEEP,
    Candidate,
    ImageRecord,
    Individual,
    IndividualDetail,
    Keep,
    NewImage,
    RegisteredImage,
)
from gallery.replica import FingerprintMismatchError, IndexReplica, mismatch
from gallery.store import SqlStore, open_store

__all__ = [
    "Candidate",
    "FingerprintMismatchError",
    "Gallery",
    "GalleryInputError",
    "ImportItem",
    "ImportReport",
    "Individual",
    "IndividualDetail",
    "NewImage",
    "RegisteredImage",
]


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    conflicts: list[str] = field(default_factory=list)  # filenames skipped


class Gallery:
    """Open with `Gallery.open`; thread-safe (searches run concurrently, updates alone)."""

    def __init__(self, store: SqlStore, replica: IndexReplica, photos: PhotoStore | None) -> None:
        self.store = store
        self.replica = replica
        self.photos = photos
        # Rank individuals for query vectors: the replica answers (IndexReplica.search).
        self.search = replica.search
        # The nearest photos, for a ranking made outside the index (re-ranking).
        self.shortlist = replica.shortlist

    @classmethod
    def open(
        cls,
        url: str,
        *,
        fingerprint: str,
        dim: int,
        photos_dir: Path | None = None,
        index: str = "flat",
        snapshot: Path | None = None,
        **index_params: int,
    ) -> Gallery:
        """Open a gallery for one model bundle, creating the store if it is new.

        url: "sqlite:///path/gallery.db" or "postgresql://user@host/db". photos_dir: where
        original photos are kept (default: recorded in the store, else beside a SQLite file;
        a PostgreSQL gallery without one keeps no photos and cannot be re-embedded). A snapshot
        file, when given, is loaded if it matches the store, and rewritten on close.
        """
        store = open_store(url)
        try:
            photos = _check_model(
                store, url, fingerprint=fingerprint, dim=dim, photos_dir=photos_dir
            )
            replica = IndexReplica(
                store,
                fingerprint=fingerprint,
                dim=dim,
                kind=index,
                snapshot=snapshot,
                **index_params,
            )
            replica.load()
        except BaseException:
            store.close()
            raise
        return cls(store, replica, photos)

    @property
    def fingerprint(self) -> str:
        return self.replica.fingerprint

    @property
    def dim(self) -> int:
        return self.replica.dim

    @property
    def size(self) -> int:
        """Number of embeddings in the index."""
        return self.replica.size

    @property
    def loaded_from(self) -> Literal["snapshot", "store"]:
        return self.replica.loaded_from

    @property
    def kind(self) -> str:
        """The index kind in use (what `auto` resolved to at the last build)."""
        return self.replica.kind

    def count_compatible(self, viewpoint: str | None = None) -> int:
        """Photos a query of this viewpoint is compared with (the whole index for None): the
        gallery size whose threshold applies to it."""
        return self.replica.count_compatible(viewpoint)

    def search_encounter(
        self,
        vectors: np.ndarray,
        *,
        threshold: float,
        top_k: int = 5,
        species: str | None = None,
        viewpoint: str | Sequence[str | None] | None = None,
        fusion: Fusion = "top2",
        hits: int = 50,
    ) -> list[Candidate]:
        """One ranking for the (P, D) vectors of one encounter's photos: each photo searched
        (under its viewpoint), the individuals' scores fused across photos
        (gallery.encounter; a photo abstains for individuals it could not have found), and
        `new_individual` at the threshold. Each candidate names the photo (row of `vectors`)
        that found its evidence."""
        if top_k < 1:
            raise GalleryInputError(f"top_k ({top_k}) must be at least 1")
        found, visible = self.replica.encounter_shortlist(
            vectors, hits=hits, species=species, viewpoint=viewpoint
        )
        return rank_encounter(
            found, threshold=threshold, top_k=top_k, fusion=fusion, visible=visible
        )

    def refresh(self) -> int:
        """Apply other processes' changes now; returns how many."""
        return self.replica.refresh()

    def follow(self, interval: float = 0.5) -> None:
        """Keep up with other processes' writes in a background thread (stopped by close)."""
        self.replica.follow(interval)

    # -- writes --------------------------------------------------------------------------------

    def _add(
        self, items: Sequence[ImportItem], on_conflict: Literal["raise", "skip"]
    ) -> list[RegisteredImage | None]:
        results = image_records.add_images(
            store=self.store,
            photos=self.photos,
            items=items,
            fingerprint=self.fingerprint,
            dim=self.dim,
            on_conflict=on_conflict,
        )
        self.replica.refresh()
        return results

    def register(
        self,
        *,
        individual_id: str,
        species: str | None,
        images: Sequence[NewImage],
        metadata: dict[str, Any] | None = None,
    ) -> list[RegisteredImage]:
        """Register photos of one individual (new or known), all or nothing.

        Committed to the store before it returns. A photo already stored for this individual
        answers created=False; one stored for another individual raises ConflictError.
        """
        items = [ImportItem(individual_id, species, image, metadata) for image in images]
        return [r for r in self._add(items, "raise") if r is not None]

    def known(self, hashes: Sequence[str]) -> dict[str, tuple[int, str]]:
        """content hash → (image id, individual) for photos already stored."""
        return self.store.known_hashes(hashes=hashes)

    def import_images(
        self,
        items: Iterable[ImportItem],
        *,
        batch_size: int = 256,
        on_conflict: Literal["raise", "skip"] = "skip",
        progress: bool | Callable[[int], None] = False,
        total: int | None = None,
    ) -> ImportReport:
        """Bulk registration: one transaction per batch, so an interrupted import keeps every
        batch it finished, and running it again (idempotent by content hash) resumes it.

        progress: True for a tqdm bar, or a callable called with each batch's size (after
        its commit: the images are acknowledged).
        """
        report = ImportReport()
        bar = None
        if progress is True:
            from tqdm import tqdm

            bar = tqdm(total=total, unit="photo", desc="import")
        batch: list[ImportItem] = []

        def commit() -> None:
            results = self._add(batch, on_conflict)
            for item, result in zip(batch, results, strict=True):
                if result is None:
                    report.conflicts.append(item.image.filename)
                elif result.created:
                    report.added += 1
                else:
                    report.existing += 1
            if bar is not None:
                bar.update(len(batch))
            elif callable(progress):
                progress(len(batch))
            batch.clear()

        try:
            for item in items:
                batch.append(item)
                if len(batch) >= batch_size:
                    commit()
            if batch:
                commit()
        finally:
            if bar is not None:
                bar.close()
        return report

    def delete_image(self, image_id: int) -> None:
        image_records.delete_image(store=self.store, photos=self.photos, image_id=image_id)
        self.replica.refresh()

    def delete_individual(self, individual_id: str) -> None:
        individual_records.delete_individual(
            store=self.store, photos=self.photos, individual_id=individual_id
        )
        self.replica.refresh()

    def rename(self, old: str, new: str) -> None:
        individual_records.rename_individual(store=self.store, old=old, new=new)
        self.replica.refresh()

    def merge(self, a: str, b: str) -> None:
        """Merge individual `a` into `b`: b keeps its id and gains a's images; a is gone."""
        individual_records.merge_individuals(store=self.store, source=a, target=b)
        self.replica.refresh()

    def update(
        self,
        individual_id: str,
        *,
        new_id: str | None = None,
        species: str | Keep | None = KEEP,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Rename an individual and/or set its species and metadata, in one transaction."""
        individual_records.update_individual(
            store=self.store,
            individual_id=individual_id,
            new_id=new_id,
            species=species,
            metadata=metadata,
        )
        self.replica.refresh()

    # -- reads ---------------------------------------------------------------------------------

    def individuals(
        self, *, limit: int = 100, offset: int = 0, species: str | None = None
    ) -> list[Individual]:
        return individual_records.list_individuals(
            store=self.store, limit=limit, offset=offset, species=species
        )

    def count_individuals(self, *, species: str | None = None) -> int:
        return individual_records.count_individuals(store=self.store, species=species)

    def individual(self, individual_id: str) -> IndividualDetail:
        return individual_records.get_individual(store=self.store, individual_id=individual_id)

    def image(self, image_id: int) -> ImageRecord:
        return image_records.get_image(store=self.store, image_id=image_id)

    def local_features(
        self, image_ids: Sequence[int], *, max_keypoints: int, dim: int
    ) -> tuple[LocalFeatures, np.ndarray]:
        """The stored keypoints of these images (a query's shortlist) under the gallery's
        fingerprint, padded to `max_keypoints` slots in the order given, and a (N,) bool of
        which had any: one store read, no photo re-extracted."""
        return image_records.local_features(
            store=self.store,
            fingerprint=self.fingerprint,
            image_ids=image_ids,
            max_keypoints=max_keypoints,
            dim=dim,
        )

    def photo(self, image_id: int) -> bytes:
        """The original photo of an image (NotFoundError when photos are not kept)."""
        return image_records.photo_of(store=self.store, photos=self.photos, image_id=image_id)

    def save_snapshot(self, path: Path | None = None) -> Path:
        return self.replica.save_snapshot(path)

    def close(self) -> None:
        try:
            self.replica.close()
        finally:
            self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_model(
    store: SqlStore, url: str, *, fingerprint: str, dim: int, photos_dir: Path | None
) -> PhotoStore | None:
    """Adopt the model on a new or empty store; refuse another model's gallery. Returns where
    photos are kept."""
    info = store.info()
    updates: dict[str, str] = {}
    if info.fingerprint != fingerprint:
        if info.fingerprint is not None and store.count_images() > 0:
            raise FingerprintMismatchError(mismatch(url, info.fingerprint, fingerprint))
        updates.update(fingerprint=fingerprint, dim=str(dim))
    elif info.dim != dim:
        raise GalleryInputError(
            f"gallery {url} holds {info.dim}-d embeddings of this model, not {dim}-d"
        )
    photos_dir = resolve_photos_dir(url, stored=info.photos_dir, given=photos_dir)
    if photos_dir is not None and info.photos_dir is None:
        updates["photos_dir"] = str(Path(photos_dir).resolve())
    if updates:
        store.set_meta(values=updates)
    return PhotoStore(photos_dir) if photos_dir is not None else None
