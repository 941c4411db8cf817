"""The store's images and their embeddings (one row per image and bundle fingerprint), with
their local features (gallery.store.features) written in the same transactions."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from gallery.batches import chunks
from gallery.errors import ConflictError, NotFoundError
from gallery.keypoints import StoredFeatures
from gallery.records import Box, EmbeddingBatch, ImageRecord, NewEntry, RegisteredImage
from gallery.store.core import CHUNK, Cursor, ModelChangedError, retried
from gallery.store.features import FeatureTable

__all__ = ["IMAGE_COLUMNS", "ImageTable", "image_record"]

IMAGE_COLUMNS = (
    "id, individual_id, content_hash, filename, encounter, box_x1, box_y1, box_x2, box_y2, "
    "created, viewpoint"
)


def image_record(row: Sequence[Any]) -> ImageRecord:
    box: Box | None = None
    if row[5] is not None:
        box = (float(row[5]), float(row[6]), float(row[7]), float(row[8]))
    created = row[9] if isinstance(row[9], datetime) else datetime.fromisoformat(row[9])
    return ImageRecord(
        id=int(row[0]),
        individual_id=row[1],
        content_hash=row[2],
        filename=row[3],
        encounter=row[4],
        box=box,
        created=created,
        viewpoint=row[10],
    )


class ImageTable(FeatureTable):
    @abstractmethod
    def _ensure_individual(self, cur: Cursor, entry: NewEntry, now: datetime) -> str | None:
        """Create the entry's individual, or check and complete its species and metadata."""

    @retried
    def add_images(
        self,
        *,
        entries: Sequence[NewEntry],
        fingerprint: str,
        on_conflict: Literal["raise", "skip"] = "raise",
    ) -> list[RegisteredImage | None]:
        """Store images with their embeddings (and local features, where an entry has them) in
        one transaction, idempotent by content hash.

        A photo already stored for the same individual answers created=False; for another
        individual it raises ConflictError (nothing is stored), or with on_conflict="skip"
        answers None for that entry. Committed (and durable) when this returns.
        """
        now = datetime.now(UTC)
        with self._transaction(write=True) as cur:
            # Checked inside the write transaction, which a re-embed's switch also takes: a
            # process still on the old model cannot add a photo the new model never embeds.
            row = self._exec(cur, "SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is not None and row[0] and row[0] != fingerprint:
                raise ModelChangedError(
                    f"gallery {self.url} now uses model {row[0][:12]}…, not {fingerprint[:12]}…: "
                    "restart with the bundle it was re-embedded with"
                )
            known = self._known(cur, [e.content_hash for e in entries])
            species_of: dict[str, str | None] = {}
            results: list[RegisteredImage | None] = []
            for entry in entries:
                found = known.get(entry.content_hash)
                if found is not None:
                    image_id, owner = found
                    if owner == entry.individual_id:
                        results.append(RegisteredImage(image_id, owner, created=False))
                    elif on_conflict == "skip":
                        results.append(None)
                    else:
                        raise ConflictError(
                            f"photo {entry.filename} (sha256 {entry.content_hash[:12]}…) is "
                            f"already registered as image {image_id} of individual {owner}, "
                            f"not {entry.individual_id}"
                        )
                    continue
                if entry.individual_id not in species_of:
                    species_of[entry.individual_id] = self._ensure_individual(cur, entry, now)
                box = entry.box or (None, None, None, None)
                image_id = int(
                    self._exec(
                        cur,
                        "INSERT INTO images (individual_id, content_hash, filename, encounter, "
                        "box_x1, box_y1, box_x2, box_y2, created, viewpoint) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (
                            entry.individual_id,
                            entry.content_hash,
                            entry.filename,
                            entry.encounter,
                            *box,
                            self._ts(now),
                            entry.viewpoint,
                        ),
                    ).fetchone()[0]
                )
                vector = np.ascontiguousarray(entry.vector, dtype=np.float32)
                self._exec(
                    cur,
                    "INSERT INTO embeddings (image_id, fingerprint, vector) VALUES (?, ?, ?)",
                    (image_id, fingerprint, vector.tobytes()),
                )
                if entry.local is not None:
                    self._put_features(cur, image_id, fingerprint, entry.local)
                self._log(cur, "add", image_id, entry.individual_id)
                known[entry.content_hash] = (image_id, entry.individual_id)
                results.append(RegisteredImage(image_id, entry.individual_id, created=True))
            self._notify(cur)
        return results

    def _known(self, cur: Cursor, hashes: Sequence[str]) -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        unique = list(dict.fromkeys(hashes))
        for chunk in chunks(unique, CHUNK):
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(
                cur,
                f"SELECT content_hash, id, individual_id FROM images "
                f"WHERE content_hash IN ({marks})",
                chunk,
            ).fetchall()
            found.update({h: (int(i), ind) for h, i, ind in rows})
        return found

    @retried
    def known_hashes(self, *, hashes: Sequence[str]) -> dict[str, tuple[int, str]]:
        """content hash → (image id, individual) for the hashes already stored."""
        with self._transaction(write=False) as cur:
            return self._known(cur, hashes)

    @retried
    def delete_image(self, *, image_id: int) -> str:
        """Delete one image, its embeddings and local features; returns its content hash."""
        with self._transaction(write=True) as cur:
            row = self._exec(
                cur, "SELECT content_hash FROM images WHERE id = ?", (image_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no image {image_id} in the gallery")
            self._exec(cur, "DELETE FROM embeddings WHERE image_id = ?", (image_id,))
            self._exec(cur, "DELETE FROM local_features WHERE image_id = ?", (image_id,))
            self._exec(cur, "DELETE FROM images WHERE id = ?", (image_id,))
            self._log(cur, "remove", image_id, None)
            self._notify(cur)
            return str(row[0])

    # -- reads ---------------------------------------------------------------------------------

    def _vectors(self, blobs: Sequence[bytes], dim: int) -> np.ndarray:
        if not blobs:
            return np.zeros((0, dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)

    @retried
    def embeddings(self, *, fingerprint: str, image_ids: Sequence[int], dim: int) -> EmbeddingBatch:
        """The embeddings of these images that still exist (missing ones are left out)."""
        ids: list[int] = []
        blobs: list[bytes] = []
        owners: list[str] = []
        viewpoints: list[str | None] = []
        with self._transaction(write=False) as cur:
            unique = list(dict.fromkeys(int(i) for i in image_ids))
            for chunk in chunks(unique, CHUNK):
                marks = ", ".join("?" * len(chunk))
                for image_id, blob, owner, viewpoint in self._exec(
                    cur,
                    "SELECT e.image_id, e.vector, i.individual_id, i.viewpoint FROM embeddings e "
                    f"JOIN images i ON i.id = e.image_id "
                    f"WHERE e.fingerprint = ? AND e.image_id IN ({marks})",
                    [fingerprint, *chunk],
                ).fetchall():
                    ids.append(int(image_id))
                    blobs.append(bytes(blob))
                    owners.append(owner)
                    viewpoints.append(viewpoint)
            head = self._head(cur)
        return EmbeddingBatch(
            head, np.asarray(ids, dtype=np.int64), self._vectors(blobs, dim), owners, viewpoints
        )

    def scan_embeddings(
        self, *, fingerprint: str, dim: int, batch: int = 20_000
    ) -> Iterator[EmbeddingBatch]:
        """Every embedding of this fingerprint, from one consistent snapshot, in id order.

        Each batch carries the change sequence the snapshot reflects, so the reader can catch
        up from exactly there. Yields at least one (possibly empty) batch.
        """
        with self._transaction(write=False) as cur:
            head = self._head(cur)
            last = -1
            while True:
                rows = self._exec(
                    cur,
                    "SELECT e.image_id, e.vector, i.individual_id, i.viewpoint FROM embeddings e "
                    "JOIN images i ON i.id = e.image_id "
                    "WHERE e.fingerprint = ? AND e.image_id > ? ORDER BY e.image_id LIMIT ?",
                    (fingerprint, last, batch),
                ).fetchall()
                ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
                vectors = self._vectors([bytes(r[1]) for r in rows], dim)
                if rows or last < 0:
                    owners = [r[2] for r in rows]
                    yield EmbeddingBatch(head, ids, vectors, owners, [r[3] for r in rows])
                if len(rows) < batch:
                    return
                last = int(ids[-1])

    @retried
    def read_embeddings(self, *, fingerprint: str, dim: int, chunk: int = 50_000) -> EmbeddingBatch:
        """Every embedding of this fingerprint from one consistent snapshot, in id order, as
        one batch: the vectors land in one array allocated up front, page by page, so a
        million-photo gallery is read without a list of every blob or a concatenation."""
        with self._transaction(write=False) as cur:
            head = self._head(cur)
            total = int(
                self._exec(
                    cur, "SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", (fingerprint,)
                ).fetchone()[0]
            )
            ids = np.empty(total, dtype=np.int64)
            vectors = np.empty((total, dim), dtype=np.float32)
            owners: list[str] = []
            viewpoints: list[str | None] = []
            filled, last = 0, -1
            while filled < total:
                # Pages by id (not one cursor): psycopg would otherwise fetch every row at once.
                rows = self._exec(
                    cur,
                    "SELECT e.image_id, e.vector, i.individual_id, i.viewpoint FROM embeddings e "
                    "JOIN images i ON i.id = e.image_id "
                    "WHERE e.fingerprint = ? AND e.image_id > ? ORDER BY e.image_id LIMIT ?",
                    (fingerprint, last, min(chunk, total - filled)),
                ).fetchall()
                if not rows:
                    break  # an embedding without its image row: nothing more to read
                end = filled + len(rows)
                ids[filled:end] = [r[0] for r in rows]
                block = b"".join([bytes(r[1]) for r in rows])
                vectors[filled:end] = np.frombuffer(block, dtype=np.float32).reshape(-1, dim)
                owners += [r[2] for r in rows]
                viewpoints += [r[3] for r in rows]
                filled, last = end, int(ids[end - 1])
        return EmbeddingBatch(head, ids[:filled], vectors[:filled], owners, viewpoints)

    @retried
    def get_image(self, *, image_id: int) -> ImageRecord:
        with self._transaction(write=False) as cur:
            row = self._exec(
                cur, f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no image {image_id} in the gallery")
        return image_record(row)

    @retried
    def count_images(self) -> int:
        with self._transaction(write=False) as cur:
            return int(self._exec(cur, "SELECT COUNT(*) FROM images").fetchone()[0])

    @retried
    def count_embeddings(self, *, fingerprint: str) -> int:
        with self._transaction(write=False) as cur:
            return int(
                self._exec(
                    cur, "SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", (fingerprint,)
                ).fetchone()[0]
            )

    # -- re-embedding --------------------------------------------------------------------------

    # What a re-embed still has to compute: images with no embedding for the fingerprint, or,
    # with `features`, no local features for it either (a bundle with a matcher).
    _MISSING = (
        "(NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.image_id = m.id AND e.fingerprint = ?)"
        "{features})"
    )
    _NO_FEATURES = (
        " OR NOT EXISTS (SELECT 1 FROM local_features f "
        "WHERE f.image_id = m.id AND f.fingerprint = ?)"
    )

    def _missing_clause(self, fingerprint: str, features: bool) -> tuple[str, list[str]]:
        if features:
            return self._MISSING.format(features=self._NO_FEATURES), [fingerprint, fingerprint]
        return self._MISSING.format(features=""), [fingerprint]

    @retried
    def images_missing(
        self, *, fingerprint: str, after: int = -1, limit: int = 256, features: bool = False
    ) -> list[ImageRecord]:
        """Images with no embedding for `fingerprint` (with `features`: or no local features
        for it), in id order after `after`."""
        clause, params = self._missing_clause(fingerprint, features)
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {IMAGE_COLUMNS} FROM images m WHERE id > ? AND {clause} "
                "ORDER BY id LIMIT ?",
                (after, *params, limit),
            ).fetchall()
        return [image_record(r) for r in rows]

    @retried
    def count_missing(self, *, fingerprint: str, features: bool = False) -> int:
        """How many images `images_missing` would list in all."""
        with self._transaction(write=False) as cur:
            return self._missing(cur, fingerprint, features)

    def _missing(self, cur: Cursor, fingerprint: str, features: bool = False) -> int:
        clause, params = self._missing_clause(fingerprint, features)
        return int(
            self._exec(cur, f"SELECT COUNT(*) FROM images m WHERE {clause}", params).fetchone()[0]
        )

    @retried
    def put_embeddings(
        self,
        *,
        fingerprint: str,
        image_ids: Sequence[int],
        vectors: np.ndarray,
        local: Sequence[StoredFeatures] | None = None,
    ) -> None:
        """Store embeddings of another fingerprint beside the current ones (re-embedding), and
        the images' local features with them when given, in one transaction. Images deleted
        meanwhile are skipped; rows already there are kept."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if local is not None and len(local) != len(image_ids):
            raise ValueError(f"{len(local)} local features for {len(image_ids)} images")
        with self._transaction(write=True) as cur:
            for row, (image_id, vector) in enumerate(zip(image_ids, vectors, strict=True)):
                self._exec(
                    cur,
                    "INSERT INTO embeddings (image_id, fingerprint, vector) "
                    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ?) "
                    "ON CONFLICT (image_id, fingerprint) DO NOTHING",
                    (int(image_id), fingerprint, vector.tobytes(), int(image_id)),
                )
                if local is not None:
                    self._put_features(cur, int(image_id), fingerprint, local[row])

    @retried
    def switch_fingerprint(self, *, fingerprint: str, dim: int) -> None:
        """Make `fingerprint` the gallery's model, once every image has its embedding; drops
        the other fingerprints' embeddings and local features and logs a reset, so every index
        rebuilds. (Local features are not required: a bundle without a matcher has none.)"""
        with self._transaction(write=True) as cur:
            missing = self._missing(cur, fingerprint)
            if missing:
                raise ConflictError(
                    f"{missing} images have no embedding for {fingerprint[:12]}… yet: "
                    "run `whaleid gallery reembed` again to finish"
                )
            self._exec(cur, "DELETE FROM embeddings WHERE fingerprint <> ?", (fingerprint,))
            self._exec(cur, "DELETE FROM local_features WHERE fingerprint <> ?", (fingerprint,))
            self._set_meta(cur, {"fingerprint": fingerprint, "dim": str(dim)})
            self._log(cur, "reset", None, None)
            self._notify(cur)
