"""The gallery facade: a durable store, the faiss index built from it, and the ranking.

Writes go to the store first and are committed (durable) before they return; the index is then
brought up to date by replaying the store's change log from the sequence it had reached. The
same replay catches up after a crash (from a snapshot or from nothing) and picks up other
processes' writes (`refresh`, or a background follower: `follow`). Searches rank with
gallery.rank, the functions training evaluates with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gallery.errors import WhaleidError
from gallery.index import CHOICES, VectorIndex, choose_kind
from gallery.labels import Labels
from gallery.locks import RWLock
from gallery.photos import PhotoStore, content_hash, resolve_photos_dir
from gallery.rank import EMPTY, NEW, NEW_INDIVIDUAL, rank
from gallery.records import (
    Candidate,
    Change,
    ImageRecord,
    Individual,
    IndividualDetail,
    NewEntry,
    NewImage,
    RegisteredImage,
)
from gallery.snapshot import SnapshotHeader, read_snapshot, read_snapshot_header, write_snapshot
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

log = logging.getLogger(__name__)

REEMBED_HINT = "whaleid gallery reembed --bundle NEW"
_NORM_TOLERANCE = 1e-2


class FingerprintMismatchError(WhaleidError):
    """The gallery's embeddings were made by another model bundle."""


class GalleryInputError(WhaleidError):
    """A registration or search the gallery cannot take (bad id, vector shape or norm)."""


@dataclass(frozen=True)
class ImportItem:
    """One photo of a bulk import."""

    individual_id: str
    species: str | None
    image: NewImage
    metadata: dict[str, Any] | None = None


@dataclass
class ImportReport:
    added: int = 0
    existing: int = 0
    conflicts: list[str] = field(default_factory=list)  # filenames skipped


class Gallery:
    """Open with `Gallery.open`; thread-safe (searches run concurrently, updates alone)."""

    def __init__(
        self,
        store: SqlStore,
        *,
        fingerprint: str,
        dim: int,
        photos: PhotoStore | None,
        index: str = "flat",
        snapshot: Path | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
        nlist: int = 0,
        nprobe: int = 64,
        min_train: int = 10_000,
    ) -> None:
        if index not in CHOICES:
            raise GalleryInputError(f"index {index!r}: expected one of {', '.join(CHOICES)}")
        self.store = store
        self.fingerprint = fingerprint
        self.dim = dim
        self.photos = photos
        self.index_setting = index  # "auto" resolves to a kind at each build
        self.kind = choose_kind(index, 0)
        self.snapshot_path = Path(snapshot) if snapshot is not None else None
        self._index_params = {
            "hnsw_m": hnsw_m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "nlist": nlist,
            "nprobe": nprobe,
            "min_train": min_train,
        }
        self._store_uuid = store.info().uuid
        self._rw = RWLock()
        self._refreshing = threading.Lock()  # one replay at a time; searches go on meanwhile
        self._index = self._new_index()
        self._labels = Labels()
        self.seq = 0
        self._snapshot_seq = -1
        self.loaded_from: Literal["snapshot", "store"] = "store"
        self._follower: Any = None

    # -- opening -------------------------------------------------------------------------------

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
            gallery = cls(
                store,
                fingerprint=fingerprint,
                dim=dim,
                photos=photos,
                index=index,
                snapshot=snapshot,
                **index_params,
            )
            gallery._load()
        except BaseException:
            store.close()
            raise
        return gallery

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.kind, **self._index_params)

    def _load(self) -> None:
        """From the snapshot when it can be trusted, else from the store; then catch up."""
        if self.snapshot_path is not None and self._load_snapshot(self.snapshot_path):
            self.loaded_from = "snapshot"
        else:
            self._build()
            self.loaded_from = "store"
        self.refresh()
        if self.loaded_from == "snapshot" and not self._consistent():
            log.warning("snapshot %s disagrees with the store: rebuilding", self.snapshot_path)
            self._build()
            self.loaded_from = "store"
            self.refresh()

    def _load_snapshot(self, path: Path) -> bool:
        header = read_snapshot_header(path)
        if header is None:
            return False
        # "auto" picks by the store's size now, not the snapshot's: a gallery that crossed the
        # switch since rebuilds as the other kind.
        size = (
            self.store.count_embeddings(fingerprint=self.fingerprint)
            if self.index_setting == "auto"
            else 0
        )
        kind = choose_kind(self.index_setting, size)
        expected = (self._store_uuid, self.fingerprint, self.dim, kind)
        found = (header.store_uuid, header.fingerprint, header.dim, header.kind)
        if found != expected or header.seq > self.store.head():
            log.info("snapshot %s is for another store, model or index: ignored", path)
            return False
        try:
            header, index, labels = read_snapshot(
                path,
                ef_search=self._index_params["ef_search"],
                nprobe=self._index_params["nprobe"],
            )
        except (OSError, ValueError, RuntimeError) as exc:
            log.warning("snapshot %s unreadable (%s): rebuilding", path, exc)
            return False
        with self._rw.write():
            self._index, self._labels, self.seq = index, labels, header.seq
            self.kind = kind
            self._snapshot_seq = header.seq
        return True

    def _consistent(self) -> bool:
        """Index size equals the store's count of embeddings at the sequence reached."""
        for _ in range(3):
            head = self.store.head()
            count = self.store.count_embeddings(fingerprint=self.fingerprint)
            if head == self.store.head() and head == self.seq:
                return count == self.size
            self.refresh()
        return True  # the store keeps moving: trust the replay

    def _build(self) -> None:
        """A fresh index from one consistent read of the store (an IVF is trained on it)."""
        labels = Labels()
        batch = self.store.read_embeddings(fingerprint=self.fingerprint, dim=self.dim)
        kind = choose_kind(self.index_setting, len(batch.ids))
        index = VectorIndex.build(self.dim, kind, batch.ids, batch.vectors, **self._index_params)
        codes = np.asarray([labels.code(i) for i in batch.individual_ids], dtype=np.int32)
        labels.assign(batch.ids, codes)
        for name, species in self.store.species_of(individual_ids=labels.names).items():
            labels.species[labels.code(name)] = species
        with self._rw.write():
            self._index, self._labels, self.seq = index, labels, batch.head
            self.kind = kind

    # -- following the store -------------------------------------------------------------------

    def refresh(self) -> int:
        """Apply the store's changes since the index's sequence; returns how many."""
        applied = 0
        with self._refreshing:
            while True:
                changes = self.store.changes(after=self.seq, limit=20_000)
                if not changes:
                    return applied
                if any(c.op == "reset" for c in changes):
                    self._reset()
                    return applied + len(changes)
                self._apply(changes)
                applied += len(changes)

    def _reset(self) -> None:
        info = self.store.info()
        if info.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                _mismatch(self.store.url, info.fingerprint, self.fingerprint)
            )
        self._build()

    def _apply(self, changes: list[Change]) -> None:
        # Read everything the changes need before taking the write lock: searches wait only
        # for the in-memory updates.
        adds = [c.image_id for c in changes if c.op == "add" and c.image_id is not None]
        batch = self.store.embeddings(fingerprint=self.fingerprint, image_ids=adds, dim=self.dim)
        row_of = {int(i): r for r, i in enumerate(batch.ids)}
        touched = {c.individual_id for c in changes if c.individual_id is not None}
        new_names = {n for n in touched if not self._labels.known(n)}
        refetch = new_names | {c.individual_id for c in changes if c.op == "species"}
        species = self.store.species_of(individual_ids=[n for n in refetch if n is not None])
        with self._rw.write():
            labels = self._labels
            for name, value in species.items():
                labels.set_species(name, value)
            pending: list[tuple[int, int]] = []  # (image id, code) of adds not yet flushed

            def flush() -> None:
                if pending:
                    ids = np.asarray([p[0] for p in pending], dtype=np.int64)
                    rows = [row_of[p[0]] for p in pending]
                    self._index.add(ids, batch.vectors[rows])
                    labels.assign(ids, np.asarray([p[1] for p in pending], dtype=np.int32))
                    pending.clear()

            for change in changes:
                image_id = change.image_id
                if change.op == "add" and image_id is not None and change.individual_id:
                    if image_id in row_of:  # else deleted since: its "remove" follows
                        pending.append((image_id, labels.code(change.individual_id)))
                elif change.op == "remove" and image_id is not None:
                    flush()
                    self._index.remove(np.asarray([image_id]))
                    labels.clear(np.asarray([image_id]))
                elif change.op == "move" and image_id is not None and change.individual_id:
                    flush()
                    if self._index.contains(np.asarray([image_id]))[0]:
                        labels.assign(np.asarray([image_id]), labels.code(change.individual_id))
            flush()
            self.seq = changes[-1].seq

    def follow(self, interval: float = 0.5) -> None:
        """Keep up with other processes' writes in a background thread (LISTEN/NOTIFY on
        PostgreSQL, polling every `interval` seconds as well). Stopped by close()."""
        from gallery.sync import Follower

        if self._follower is None:
            self._follower = Follower(self, interval=interval)
            self._follower.start()

    # -- writes --------------------------------------------------------------------------------

    def _entries(
        self, items: Sequence[tuple[str, str | None, NewImage, dict[str, Any] | None]]
    ) -> list[NewEntry]:
        """Check a batch and keep its photos (written and fsynced before the commit)."""
        entries = [self._entry(*item) for item in items]
        if self.photos is not None:
            self.photos.put_many([image.content for _, _, image, _ in items])
        return entries

    def _entry(
        self,
        individual_id: str,
        species: str | None,
        image: NewImage,
        metadata: dict[str, Any] | None,
    ) -> NewEntry:
        _check_individual_id(individual_id)
        vector = np.asarray(image.vector, dtype=np.float32).reshape(-1)
        if vector.shape != (self.dim,):
            raise GalleryInputError(
                f"{image.filename}: embedding has {vector.size} values, "
                f"the gallery takes {self.dim}"
            )
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or abs(norm - 1.0) > _NORM_TOLERANCE:
            raise GalleryInputError(
                f"{image.filename}: embedding is not L2-normalised (norm {norm:.4f})"
            )
        return NewEntry(
            individual_id=individual_id,
            species=species,
            content_hash=content_hash(image.content),
            filename=image.filename,
            encounter=image.encounter,
            box=None if image.box is None else tuple(float(v) for v in image.box),  # type: ignore[arg-type]
            vector=vector,
            metadata=metadata,
        )

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
        entries = self._entries([(individual_id, species, image, metadata) for image in images])
        results = self.store.add_images(entries=entries, fingerprint=self.fingerprint)
        self.refresh()
        return [r for r in results if r is not None]

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
            entries = self._entries(
                [(i.individual_id, i.species, i.image, i.metadata) for i in batch]
            )
            results = self.store.add_images(
                entries=entries, fingerprint=self.fingerprint, on_conflict=on_conflict
            )
            self.refresh()
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
        digest = self.store.delete_image(image_id=image_id)
        self.refresh()
        if self.photos:
            self.photos.delete(digest)

    def delete_individual(self, individual_id: str) -> None:
        digests = self.store.delete_individual(individual_id=individual_id)
        self.refresh()
        if self.photos:
            for digest in digests:
                self.photos.delete(digest)

    def rename(self, old: str, new: str) -> None:
        _check_individual_id(new)
        self.store.rename(old=old, new=new)
        self.refresh()

    def merge(self, a: str, b: str) -> None:
        """Merge individual `a` into `b`: b keeps its id and gains a's images; a is gone."""
        self.store.merge(source=a, target=b)
        self.refresh()

    # -- reads ---------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of embeddings in the index."""
        return self._index.size

    def individuals(
        self, *, limit: int = 100, offset: int = 0, species: str | None = None
    ) -> list[Individual]:
        return self.store.list_individuals(limit=limit, offset=offset, species=species)

    def count_individuals(self, *, species: str | None = None) -> int:
        return self.store.count_individuals(species=species)

    def individual(self, individual_id: str) -> IndividualDetail:
        return self.store.get_individual(individual_id=individual_id)

    def image(self, image_id: int) -> ImageRecord:
        return self.store.get_image(image_id=image_id)

    def photo(self, image_id: int) -> bytes:
        """The original photo of an image (NotFoundError when photos are not kept)."""
        record = self.store.get_image(image_id=image_id)
        if self.photos is None:
            from gallery.errors import NotFoundError

            raise NotFoundError(f"image {image_id}: this gallery keeps no photos (no photos_dir)")
        return self.photos.get(record.content_hash)

    def search(
        self,
        vectors: np.ndarray,
        *,
        top_k: int = 5,
        threshold: float | np.ndarray,
        species: str | None = None,
        hits: int = 50,
    ) -> list[list[Candidate]]:
        """Rank individuals for each query vector; `new_individual` is a candidate scored at
        the threshold (one number, or one per query). species: only individuals of it.

        Each individual scores its best-matching gallery image's similarity, which is also
        the evidence returned with it. Rows have up to top_k candidates (fewer when the
        gallery has fewer individuals).
        """
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise GalleryInputError(
                f"query vectors have shape {vectors.shape}, the gallery takes (N, {self.dim})"
            )
        if top_k < 1 or hits < 1:
            raise GalleryInputError(f"top_k ({top_k}) and hits ({hits}) must be at least 1")
        with self._rw.read():
            allowed = self._labels.species_mask(species) if species is not None else None
            sims, ids = self._index.search(queries, hits, allowed)
            codes = self._labels.codes_of(ids)
            names, species_of = self._labels.names, self._labels.species
            ranking = rank(sims, codes, threshold, top_k)
            results: list[list[Candidate]] = []
            for q in range(len(queries)):
                row: list[Candidate] = []
                for code, score, column in zip(
                    ranking.codes[q], ranking.scores[q], ranking.evidence[q], strict=True
                ):
                    if code == EMPTY:
                        continue
                    if code == NEW:
                        row.append(Candidate(NEW_INDIVIDUAL, float(score), None, None, None))
                        continue
                    row.append(
                        Candidate(
                            individual_id=names[code],
                            score=float(score),
                            species=species_of[code],
                            evidence_image_id=int(ids[q, column]),
                            evidence_similarity=float(sims[q, column]),
                        )
                    )
                results.append(row)
        return results

    # -- snapshot and closing ------------------------------------------------------------------

    def save_snapshot(self, path: Path | None = None) -> Path:
        """Write the index and labels as they stand (at self.seq) for a fast next start."""
        target = Path(path) if path is not None else self.snapshot_path
        if target is None:
            raise GalleryInputError("save_snapshot: no path given and the gallery has none")
        with self._refreshing, self._rw.read():
            header = SnapshotHeader(
                store_uuid=self._store_uuid,
                fingerprint=self.fingerprint,
                dim=self.dim,
                kind=self.kind,
                seq=self.seq,
                size=self.size,
            )
            write_snapshot(target, header, self._index, self._labels)
            if target == self.snapshot_path:
                self._snapshot_seq = self.seq
        return target

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        try:
            if self.snapshot_path is not None and self._snapshot_seq != self.seq:
                self.save_snapshot()
        finally:
            self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_individual_id(individual_id: str) -> None:
    if not isinstance(individual_id, str) or not individual_id.strip():
        raise GalleryInputError("individual_id must be a non-empty string")
    if individual_id == NEW_INDIVIDUAL:
        raise GalleryInputError(f"{NEW_INDIVIDUAL!r} is reserved: choose another individual_id")
    if len(individual_id) > 200:
        raise GalleryInputError(f"individual_id {individual_id[:40]!r}… is over 200 characters")


def _mismatch(url: str, stored: str | None, bundle: str) -> str:
    return (
        f"gallery {url} was embedded with model {str(stored)[:12]}…, not this bundle's "
        f"{bundle[:12]}…: re-embed it with `{REEMBED_HINT}` (or open it with the bundle it "
        "was made with)"
    )


def _check_model(
    store: SqlStore, url: str, *, fingerprint: str, dim: int, photos_dir: Path | None
) -> PhotoStore | None:
    """Adopt the model on a new or empty store; refuse another model's gallery. Returns where
    photos are kept."""
    info = store.info()
    updates: dict[str, str] = {}
    if info.fingerprint != fingerprint:
        if info.fingerprint is not None and store.count_images() > 0:
            raise FingerprintMismatchError(_mismatch(url, info.fingerprint, fingerprint))
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
