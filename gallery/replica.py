"""An in-memory replica of the store's embeddings: the faiss index and each image's individual.

Built from one consistent scan of the store (or restored from a snapshot that matches it),
then kept up to date by replaying the store's change log from the sequence it has reached:
after the process's own writes, after a crash, and in a follower thread for other processes'
writes. Searches rank with gallery.rank, the functions training evaluates with; they run
concurrently, replays alone, and a replay reads the store before it takes the write lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from gallery.errors import GalleryInputError, WhaleidError
from gallery.index import CHOICES, VectorIndex, choose_kind
from gallery.labels import Labels
from gallery.locks import RWLock
from gallery.rank import rank
from gallery.records import Candidate, Change
from gallery.rules import check_viewpoint
from gallery.shortlist import Shortlist
from gallery.snapshot import SnapshotHeader, read_snapshot, read_snapshot_header, write_snapshot
from gallery.store import SqlStore
from gallery.sync import Follower

__all__ = ["REEMBED_HINT", "FingerprintMismatchError", "IndexReplica", "mismatch"]

log = logging.getLogger(__name__)

REEMBED_HINT = "whaleid gallery reembed --bundle NEW"


class FingerprintMismatchError(WhaleidError):
    """The gallery's embeddings were made by another model bundle."""


def mismatch(url: str, stored: str | None, bundle: str) -> str:
    return (
        f"gallery {url} was embedded with model {str(stored)[:12]}…, not this bundle's "
        f"{bundle[:12]}…: re-embed it with `{REEMBED_HINT}` (or open it with the bundle it "
        "was made with)"
    )


class IndexReplica:
    """Build with `load()`; then `refresh()` after writes, `follow()` for other writers."""

    def __init__(
        self,
        store: SqlStore,
        *,
        fingerprint: str,
        dim: int,
        kind: str = "flat",
        snapshot: Path | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
        nlist: int = 0,
        nprobe: int = 64,
        min_train: int = 10_000,
    ) -> None:
        if kind not in CHOICES:
            raise GalleryInputError(f"index {kind!r}: expected one of {', '.join(CHOICES)}")
        self.store = store
        self.fingerprint = fingerprint
        self.dim = dim
        self.index_setting = kind  # "auto" resolves to a kind at each build
        self.kind = choose_kind(kind, 0)
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
        self._follower: Follower | None = None

    def _new_index(self) -> VectorIndex:
        return VectorIndex(self.dim, self.kind, **self._index_params)

    def load(self) -> None:
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
        labels.set_viewpoints(batch.ids, batch.viewpoints)
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
                mismatch(self.store.url, info.fingerprint, self.fingerprint)
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
                    labels.set_viewpoints(ids, [batch.viewpoints[r] for r in rows])
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
        if self._follower is None:
            self._follower = Follower(self.refresh, self.store, interval=interval)
            self._follower.start()

    @property
    def size(self) -> int:
        """Number of embeddings in the index."""
        return self._index.size

    def count_compatible(self, viewpoint: str | None = None) -> int:
        """Photos in the index that a query of this viewpoint is compared with (all of them
        for None): the size of gallery its threshold is read for."""
        with self._rw.read():
            return self._labels.count_compatible(viewpoint)

    def shortlist(
        self,
        vectors: np.ndarray,
        *,
        hits: int = 50,
        species: str | None = None,
        viewpoint: str | Sequence[str | None] | None = None,
    ) -> Shortlist:
        """The `hits` most similar gallery photos of each query vector (species: only
        individuals of it), with their individuals as they are now.

        viewpoint: the side each query shows (one label for all, or one per query; None:
        unknown). A query with a viewpoint is compared only with photos of that viewpoint or
        of none recorded: another side of the animal is no evidence for or against it."""
        found, _ = self._shortlist(vectors, hits, species, viewpoint, visibility=False)
        return found

    def encounter_shortlist(
        self,
        vectors: np.ndarray,
        *,
        hits: int = 50,
        species: str | None = None,
        viewpoint: str | Sequence[str | None] | None = None,
    ) -> tuple[Shortlist, np.ndarray | None]:
        """`shortlist`, and which individuals each query could have found, from the same
        state of the index: (Q, individuals) bool by code, None without viewpoints (all).
        An encounter's photo that could not see an individual abstains from its score."""
        return self._shortlist(vectors, hits, species, viewpoint, visibility=True)

    def _shortlist(
        self,
        vectors: np.ndarray,
        hits: int,
        species: str | None,
        viewpoint: str | Sequence[str | None] | None,
        *,
        visibility: bool,
    ) -> tuple[Shortlist, np.ndarray | None]:
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise GalleryInputError(
                f"query vectors have shape {vectors.shape}, the gallery takes (N, {self.dim})"
            )
        if hits < 1:
            raise GalleryInputError(f"hits ({hits}) must be at least 1")
        per_query = _per_query(viewpoint, len(queries))
        visible = None
        with self._rw.read():
            allowed = self._labels.species_mask(species) if species is not None else None
            if all(v is None for v in per_query):
                sims, ids = self._index.search(queries, hits, allowed)
            else:
                sims, ids = self._search_by_viewpoint(queries, hits, allowed, per_query)
                if visibility:
                    seen = {v: self._labels.visible(v) for v in dict.fromkeys(per_query)}
                    visible = np.stack([seen[v] for v in per_query])
            codes = self._labels.codes_of(ids)
            present = np.unique(codes[codes >= 0]).tolist()
            names = {c: self._labels.names[c] for c in present}
            species_of = {c: self._labels.species[c] for c in present}
        return Shortlist(sims, ids, codes, names, species_of), visible

    def _search_by_viewpoint(
        self,
        queries: np.ndarray,
        hits: int,
        allowed: np.ndarray | None,
        per_query: list[str | None],
    ) -> tuple[np.ndarray, np.ndarray]:
        """One masked search per distinct viewpoint among the queries (the caller holds the
        read lock): the species mask and the compatible photos' mask, as one faiss selector."""
        sims = np.full((len(queries), hits), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), hits), -1, dtype=np.int64)
        for viewpoint in dict.fromkeys(per_query):
            rows = np.asarray([v == viewpoint for v in per_query])
            mask = allowed
            if viewpoint is not None:
                mask = self._labels.viewpoint_mask(viewpoint)
                if allowed is not None:
                    n = min(len(mask), len(allowed))
                    mask = mask[:n] & allowed[:n]
            sims[rows], ids[rows] = self._index.search(queries[rows], hits, mask)
        return sims, ids

    def search(
        self,
        vectors: np.ndarray,
        *,
        top_k: int = 5,
        threshold: float | np.ndarray,
        species: str | None = None,
        hits: int = 50,
        viewpoint: str | Sequence[str | None] | None = None,
    ) -> list[list[Candidate]]:
        """Rank individuals for each query vector; `new_individual` is a candidate scored at
        the threshold (one number, or one per query). species: only individuals of it;
        viewpoint: only photos of a compatible viewpoint (see `shortlist`).

        Each individual scores its best-matching gallery image's similarity, which is also
        the evidence returned with it. Rows have up to top_k candidates (fewer when the
        gallery has fewer individuals).
        """
        if top_k < 1:
            raise GalleryInputError(f"top_k ({top_k}) must be at least 1")
        found = self.shortlist(vectors, hits=hits, species=species, viewpoint=viewpoint)
        return found.candidates(rank(found.sims, found.codes, threshold, top_k))

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
        """Stop following; rewrite the snapshot when the index moved since it was written."""
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        if self.snapshot_path is not None and self._snapshot_seq != self.seq:
            self.save_snapshot()


def _per_query(viewpoint: str | Sequence[str | None] | None, n: int) -> list[str | None]:
    """One viewpoint per query (None: unknown)."""
    if viewpoint is None or isinstance(viewpoint, str):
        return [check_viewpoint(viewpoint)] * n
    given = [check_viewpoint(v) for v in viewpoint]
    if len(given) != n:
        raise GalleryInputError(f"{len(given)} viewpoints for {n} query vectors")
    return given
