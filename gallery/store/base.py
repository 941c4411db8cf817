"""The store interface and the SQL both implementations share.

A store is the durable record of the gallery: individuals, images, embeddings (per bundle
fingerprint) and a change log. Every write runs in one transaction that also appends to the
change log, so an index can rebuild from a consistent scan and then catch up, in commit order,
from the sequence it has reached (after a crash, or to follow other processes).

The dialects differ only in how they connect, begin a transaction and spell a few types;
`SqlStore` holds everything else. Store methods are keyword-only.
"""

from __future__ import annotations

import json
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from gallery.errors import ConflictError, NotFoundError, WhaleidError
from gallery.records import (
    Box,
    Change,
    EmbeddingBatch,
    ImageRecord,
    Individual,
    IndividualDetail,
    NewEntry,
    RegisteredImage,
)
from gallery.store.migrations import latest_version, render

__all__ = ["ModelChangedError", "SchemaError", "SqlStore", "StoreInfo"]

_CHUNK = 500  # ids per IN (...) list: well under SQLite's parameter limit

Cursor = Any  # sqlite3.Cursor | psycopg.Cursor: both DB-API cursors


class SchemaError(WhaleidError):
    """The database was written by a newer whaleid, or is not a gallery."""


class ModelChangedError(ConflictError):
    """A write with embeddings of a model the gallery no longer uses (it was re-embedded)."""


class StoreInfo:
    """The store's identity and the model its embeddings belong to."""

    def __init__(self, meta: dict[str, str], schema_version: int) -> None:
        self.uuid = meta.get("uuid", "")
        self.fingerprint = meta.get("fingerprint") or None
        self.dim = int(meta["dim"]) if meta.get("dim") else None
        self.photos_dir = meta.get("photos_dir") or None
        self.schema_version = schema_version


class SqlStore(ABC):
    """The shared store logic; subclasses provide the connection and transactions."""

    dialect: str
    url: str

    def __init__(self) -> None:
        # One connection per store, used by one thread at a time: transactions never interleave.
        self._lock = threading.RLock()

    # -- dialect hooks -------------------------------------------------------------------------

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction: writes are serialised across processes; reads see one snapshot."""

    @abstractmethod
    def close(self) -> None: ...

    def _sql(self, text: str) -> str:
        """Statements are written with `?` placeholders."""
        return text

    def _ts(self, value: datetime) -> Any:
        return value

    def _notify(self, cur: Cursor) -> None:  # noqa: B027 (optional hook: SQLite polls)
        """Tell listening processes that the change log moved (sent at commit)."""

    # -- helpers -------------------------------------------------------------------------------

    def _exec(self, cur: Cursor, text: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self._sql(text), tuple(params))
        return cur

    @staticmethod
    def _datetime(value: Any) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    def _image(self, row: Sequence[Any]) -> ImageRecord:
        box: Box | None = None
        if row[5] is not None:
            box = (float(row[5]), float(row[6]), float(row[7]), float(row[8]))
        return ImageRecord(
            id=int(row[0]),
            individual_id=row[1],
            content_hash=row[2],
            filename=row[3],
            encounter=row[4],
            box=box,
            created=self._datetime(row[9]),
        )

    _IMAGE_COLUMNS = (
        "id, individual_id, content_hash, filename, encounter, "
        "box_x1, box_y1, box_x2, box_y2, created"
    )

    # -- schema and identity -------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply pending migrations; returns the schema version. Safe to race: writes are
        serialised, so the second process finds the work done."""
        with self._transaction(write=True) as cur:
            self._exec(cur, "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            current = self._exec(cur, "SELECT MAX(version) FROM schema_version").fetchone()[0]
            current = int(current or 0)
            if current > latest_version():
                raise SchemaError(
                    f"{self.url} has gallery schema version {current}, newer than this whaleid "
                    f"knows ({latest_version()}): upgrade whaleid"
                )
            for version in range(current + 1, latest_version() + 1):
                for statement in render(version, self.dialect):
                    self._exec(cur, statement)
                self._exec(cur, "INSERT INTO schema_version (version) VALUES (?)", (version,))
                if version == 1:
                    self._set_meta(cur, {"uuid": uuid.uuid4().hex})
            return latest_version()

    def _set_meta(self, cur: Cursor, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._exec(
                cur,
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def info(self) -> StoreInfo:
        with self._transaction(write=False) as cur:
            meta = dict(self._exec(cur, "SELECT key, value FROM meta").fetchall())
            version = self._exec(cur, "SELECT MAX(version) FROM schema_version").fetchone()[0]
        return StoreInfo(meta, int(version or 0))

    def set_meta(self, *, values: dict[str, str]) -> None:
        with self._transaction(write=True) as cur:
            self._set_meta(cur, values)

    # -- change log ----------------------------------------------------------------------------

    def head(self) -> int:
        """The last committed change sequence (0 for a new store)."""
        with self._transaction(write=False) as cur:
            return int(self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def changes(self, *, after: int, limit: int = 10_000) -> list[Change]:
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                "SELECT seq, op, image_id, individual_id FROM changes "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Change(int(s), op, None if i is None else int(i), ind) for s, op, i, ind in rows]

    def _log(self, cur: Cursor, op: str, image_id: int | None, individual_id: str | None) -> None:
        self._exec(
            cur,
            "INSERT INTO changes (op, image_id, individual_id) VALUES (?, ?, ?)",
            (op, image_id, individual_id),
        )

    # -- writes --------------------------------------------------------------------------------

    def add_images(
        self,
        *,
        entries: Sequence[NewEntry],
        fingerprint: str,
        on_conflict: Literal["raise", "skip"] = "raise",
    ) -> list[RegisteredImage | None]:
        """Store images with their embeddings in one transaction, idempotent by content hash.

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
                        "box_x1, box_y1, box_x2, box_y2, created) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (
                            entry.individual_id,
                            entry.content_hash,
                            entry.filename,
                            entry.encounter,
                            *box,
                            self._ts(now),
                        ),
                    ).fetchone()[0]
                )
                vector = np.ascontiguousarray(entry.vector, dtype=np.float32)
                self._exec(
                    cur,
                    "INSERT INTO embeddings (image_id, fingerprint, vector) VALUES (?, ?, ?)",
                    (image_id, fingerprint, vector.tobytes()),
                )
                self._log(cur, "add", image_id, entry.individual_id)
                known[entry.content_hash] = (image_id, entry.individual_id)
                results.append(RegisteredImage(image_id, entry.individual_id, created=True))
            self._notify(cur)
        return results

    def _ensure_individual(self, cur: Cursor, entry: NewEntry, now: datetime) -> str | None:
        """Create the individual, or check and complete its species and metadata."""
        row = self._exec(
            cur, "SELECT species, metadata FROM individuals WHERE id = ?", (entry.individual_id,)
        ).fetchone()
        if row is None:
            self._exec(
                cur,
                "INSERT INTO individuals (id, species, created, metadata) VALUES (?, ?, ?, ?)",
                (
                    entry.individual_id,
                    entry.species,
                    self._ts(now),
                    json.dumps(entry.metadata or {}),
                ),
            )
            return entry.species
        species, metadata = row
        if entry.species is not None and species is not None and entry.species != species:
            raise ConflictError(
                f"individual {entry.individual_id} is recorded as species {species}, "
                f"not {entry.species}"
            )
        if species is None and entry.species is not None:
            self._exec(
                cur,
                "UPDATE individuals SET species = ? WHERE id = ?",
                (entry.species, entry.individual_id),
            )
            self._log(cur, "species", None, entry.individual_id)
            species = entry.species
        if entry.metadata:
            merged = {**json.loads(metadata), **entry.metadata}
            self._exec(
                cur,
                "UPDATE individuals SET metadata = ? WHERE id = ?",
                (json.dumps(merged), entry.individual_id),
            )
        return species  # type: ignore[no-any-return]

    def _known(self, cur: Cursor, hashes: Sequence[str]) -> dict[str, tuple[int, str]]:
        found: dict[str, tuple[int, str]] = {}
        unique = list(dict.fromkeys(hashes))
        for start in range(0, len(unique), _CHUNK):
            chunk = unique[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(
                cur,
                f"SELECT content_hash, id, individual_id FROM images "
                f"WHERE content_hash IN ({marks})",
                chunk,
            ).fetchall()
            found.update({h: (int(i), ind) for h, i, ind in rows})
        return found

    def known_hashes(self, *, hashes: Sequence[str]) -> dict[str, tuple[int, str]]:
        """content hash → (image id, individual) for the hashes already stored."""
        with self._transaction(write=False) as cur:
            return self._known(cur, hashes)

    def delete_image(self, *, image_id: int) -> str:
        """Delete one image and its embeddings; returns its content hash."""
        with self._transaction(write=True) as cur:
            row = self._exec(
                cur, "SELECT content_hash FROM images WHERE id = ?", (image_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no image {image_id} in the gallery")
            self._exec(cur, "DELETE FROM embeddings WHERE image_id = ?", (image_id,))
            self._exec(cur, "DELETE FROM images WHERE id = ?", (image_id,))
            self._log(cur, "remove", image_id, None)
            self._notify(cur)
            return str(row[0])

    def delete_individual(self, *, individual_id: str) -> list[str]:
        """Delete an individual with its images; returns their content hashes."""
        with self._transaction(write=True) as cur:
            self._require(cur, individual_id)
            rows = self._exec(
                cur,
                "SELECT id, content_hash FROM images WHERE individual_id = ? ORDER BY id",
                (individual_id,),
            ).fetchall()
            self._exec(
                cur,
                "INSERT INTO changes (op, image_id, individual_id) "
                "SELECT 'remove', id, NULL FROM images WHERE individual_id = ? ORDER BY id",
                (individual_id,),
            )
            self._exec(
                cur,
                "DELETE FROM embeddings WHERE image_id IN "
                "(SELECT id FROM images WHERE individual_id = ?)",
                (individual_id,),
            )
            self._exec(cur, "DELETE FROM images WHERE individual_id = ?", (individual_id,))
            self._exec(cur, "DELETE FROM individuals WHERE id = ?", (individual_id,))
            self._notify(cur)
            return [str(h) for _, h in rows]

    def _require(self, cur: Cursor, individual_id: str) -> tuple[str | None, dict[str, Any]]:
        row = self._exec(
            cur, "SELECT species, metadata FROM individuals WHERE id = ?", (individual_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no individual {individual_id!r} in the gallery")
        return row[0], json.loads(row[1])

    def _move_images(self, cur: Cursor, source: str, target: str) -> None:
        self._exec(
            cur,
            "INSERT INTO changes (op, image_id, individual_id) "
            "SELECT 'move', id, ? FROM images WHERE individual_id = ? ORDER BY id",
            (target, source),
        )
        self._exec(
            cur, "UPDATE images SET individual_id = ? WHERE individual_id = ?", (target, source)
        )

    def rename(self, *, old: str, new: str) -> None:
        """Give an individual a new id (its images follow). The new id must be free."""
        with self._transaction(write=True) as cur:
            self._require(cur, old)
            taken = self._exec(cur, "SELECT 1 FROM individuals WHERE id = ?", (new,)).fetchone()
            if taken is not None:
                raise ConflictError(
                    f"individual {new!r} already exists: merge {old!r} into it instead"
                )
            self._exec(
                cur,
                "INSERT INTO individuals (id, species, created, metadata) "
                "SELECT ?, species, created, metadata FROM individuals WHERE id = ?",
                (new, old),
            )
            self._log(cur, "species", None, new)
            self._move_images(cur, old, new)
            self._exec(cur, "DELETE FROM individuals WHERE id = ?", (old,))
            self._notify(cur)

    def merge(self, *, source: str, target: str) -> None:
        """Merge individual `source` into `target`: its images move, `source` disappears."""
        if source == target:
            raise ConflictError(f"cannot merge individual {source!r} into itself")
        with self._transaction(write=True) as cur:
            source_species, source_meta = self._require(cur, source)
            target_species, target_meta = self._require(cur, target)
            if source_species and target_species and source_species != target_species:
                raise ConflictError(
                    f"cannot merge {source!r} ({source_species}) into {target!r} "
                    f"({target_species}): the species differ"
                )
            if target_species is None and source_species is not None:
                self._exec(
                    cur, "UPDATE individuals SET species = ? WHERE id = ?", (source_species, target)
                )
                self._log(cur, "species", None, target)
            self._exec(
                cur,
                "UPDATE individuals SET metadata = ? WHERE id = ?",
                (json.dumps({**source_meta, **target_meta}), target),
            )
            self._move_images(cur, source, target)
            self._exec(cur, "DELETE FROM individuals WHERE id = ?", (source,))
            self._notify(cur)

    # -- reads ---------------------------------------------------------------------------------

    def _vectors(self, blobs: Sequence[bytes], dim: int) -> np.ndarray:
        if not blobs:
            return np.zeros((0, dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), dim)

    def embeddings(self, *, fingerprint: str, image_ids: Sequence[int], dim: int) -> EmbeddingBatch:
        """The embeddings of these images that still exist (missing ones are left out)."""
        ids: list[int] = []
        blobs: list[bytes] = []
        owners: list[str] = []
        with self._transaction(write=False) as cur:
            unique = list(dict.fromkeys(int(i) for i in image_ids))
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                for image_id, blob, owner in self._exec(
                    cur,
                    "SELECT e.image_id, e.vector, i.individual_id FROM embeddings e "
                    f"JOIN images i ON i.id = e.image_id "
                    f"WHERE e.fingerprint = ? AND e.image_id IN ({marks})",
                    [fingerprint, *chunk],
                ).fetchall():
                    ids.append(int(image_id))
                    blobs.append(bytes(blob))
                    owners.append(owner)
            head = int(self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
        return EmbeddingBatch(
            head, np.asarray(ids, dtype=np.int64), self._vectors(blobs, dim), owners
        )

    def scan_embeddings(
        self, *, fingerprint: str, dim: int, batch: int = 20_000
    ) -> Iterator[EmbeddingBatch]:
        """Every embedding of this fingerprint, from one consistent snapshot, in id order.

        Each batch carries the change sequence the snapshot reflects, so the reader can catch
        up from exactly there. Yields at least one (possibly empty) batch.
        """
        with self._transaction(write=False) as cur:
            head = int(self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
            last = -1
            while True:
                rows = self._exec(
                    cur,
                    "SELECT e.image_id, e.vector, i.individual_id FROM embeddings e "
                    "JOIN images i ON i.id = e.image_id "
                    "WHERE e.fingerprint = ? AND e.image_id > ? ORDER BY e.image_id LIMIT ?",
                    (fingerprint, last, batch),
                ).fetchall()
                ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
                vectors = self._vectors([bytes(r[1]) for r in rows], dim)
                if rows or last < 0:
                    yield EmbeddingBatch(head, ids, vectors, [r[2] for r in rows])
                if len(rows) < batch:
                    return
                last = int(ids[-1])

    def read_embeddings(self, *, fingerprint: str, dim: int, chunk: int = 50_000) -> EmbeddingBatch:
        """Every embedding of this fingerprint from one consistent snapshot, in id order, as
        one batch: the vectors land in one array allocated up front, page by page, so a
        million-photo gallery is read without a list of every blob or a concatenation."""
        with self._transaction(write=False) as cur:
            head = int(self._exec(cur, "SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
            total = int(
                self._exec(
                    cur, "SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", (fingerprint,)
                ).fetchone()[0]
            )
            ids = np.empty(total, dtype=np.int64)
            vectors = np.empty((total, dim), dtype=np.float32)
            owners: list[str] = []
            filled, last = 0, -1
            while filled < total:
                # Pages by id (not one cursor): psycopg would otherwise fetch every row at once.
                rows = self._exec(
                    cur,
                    "SELECT e.image_id, e.vector, i.individual_id FROM embeddings e "
                    "JOIN images i ON i.id = e.image_id "
                    "WHERE e.fingerprint = ? AND e.image_id > ? ORDER BY e.image_id LIMIT ?",
                    (fingerprint, last, min(chunk, total - filled)),
                ).fetchall()
                if not rows:
                    break  # an embedding without its image row: nothing more to read
                end = filled + len(rows)
                ids[filled:end] = [r[0] for r in rows]
                block = b"".join([r[1] for r in rows])
                vectors[filled:end] = np.frombuffer(block, dtype=np.float32).reshape(-1, dim)
                owners += [r[2] for r in rows]
                filled, last = end, int(ids[end - 1])
        return EmbeddingBatch(head, ids[:filled], vectors[:filled], owners)

    def species_of(self, *, individual_ids: Iterable[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        unique = list(dict.fromkeys(individual_ids))
        with self._transaction(write=False) as cur:
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = self._exec(
                    cur, f"SELECT id, species FROM individuals WHERE id IN ({marks})", chunk
                ).fetchall()
                found.update(dict(rows))
        return found

    def list_individuals(
        self, *, limit: int = 100, offset: int = 0, species: str | None = None
    ) -> list[Individual]:
        where, params = ("WHERE i.species = ?", [species]) if species is not None else ("", [])
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                "SELECT i.id, i.species, i.created, i.metadata, "
                "(SELECT COUNT(*) FROM images m WHERE m.individual_id = i.id) "
                f"FROM individuals i {where} ORDER BY i.id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [
            Individual(r[0], r[1], self._datetime(r[2]), json.loads(r[3]), int(r[4])) for r in rows
        ]

    def count_individuals(self, *, species: str | None = None) -> int:
        where, params = ("WHERE species = ?", [species]) if species is not None else ("", [])
        with self._transaction(write=False) as cur:
            return int(
                self._exec(cur, f"SELECT COUNT(*) FROM individuals {where}", params).fetchone()[0]
            )

    def get_individual(self, *, individual_id: str) -> IndividualDetail:
        with self._transaction(write=False) as cur:
            row = self._exec(
                cur,
                "SELECT id, species, created, metadata FROM individuals WHERE id = ?",
                (individual_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no individual {individual_id!r} in the gallery")
            images = [
                self._image(r)
                for r in self._exec(
                    cur,
                    f"SELECT {self._IMAGE_COLUMNS} FROM images WHERE individual_id = ? ORDER BY id",
                    (individual_id,),
                ).fetchall()
            ]
        return IndividualDetail(
            row[0], row[1], self._datetime(row[2]), json.loads(row[3]), len(images), images
        )

    def get_image(self, *, image_id: int) -> ImageRecord:
        with self._transaction(write=False) as cur:
            row = self._exec(
                cur, f"SELECT {self._IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no image {image_id} in the gallery")
        return self._image(row)

    def iter_images(self, *, batch: int = 10_000) -> Iterator[ImageRecord]:
        """Every image in id order (for export), read in pages."""
        last = -1
        while True:
            with self._transaction(write=False) as cur:
                rows = self._exec(
                    cur,
                    f"SELECT {self._IMAGE_COLUMNS} FROM images WHERE id > ? ORDER BY id LIMIT ?",
                    (last, batch),
                ).fetchall()
            yield from (self._image(r) for r in rows)
            if len(rows) < batch:
                return
            last = int(rows[-1][0])

    def count_images(self) -> int:
        with self._transaction(write=False) as cur:
            return int(self._exec(cur, "SELECT COUNT(*) FROM images").fetchone()[0])

    def count_embeddings(self, *, fingerprint: str) -> int:
        with self._transaction(write=False) as cur:
            return int(
                self._exec(
                    cur, "SELECT COUNT(*) FROM embeddings WHERE fingerprint = ?", (fingerprint,)
                ).fetchone()[0]
            )

    # -- re-embedding --------------------------------------------------------------------------

    def images_missing(
        self, *, fingerprint: str, after: int = -1, limit: int = 256
    ) -> list[ImageRecord]:
        """Images with no embedding for `fingerprint`, in id order after `after`."""
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                f"SELECT {self._IMAGE_COLUMNS} FROM images m WHERE id > ? AND NOT EXISTS "
                "(SELECT 1 FROM embeddings e WHERE e.image_id = m.id AND e.fingerprint = ?) "
                "ORDER BY id LIMIT ?",
                (after, fingerprint, limit),
            ).fetchall()
        return [self._image(r) for r in rows]

    def count_missing(self, *, fingerprint: str) -> int:
        with self._transaction(write=False) as cur:
            return self._missing(cur, fingerprint)

    def _missing(self, cur: Cursor, fingerprint: str) -> int:
        """Images that have no embedding made by `fingerprint`."""
        return int(
            self._exec(
                cur,
                "SELECT COUNT(*) FROM images m WHERE NOT EXISTS (SELECT 1 FROM embeddings e "
                "WHERE e.image_id = m.id AND e.fingerprint = ?)",
                (fingerprint,),
            ).fetchone()[0]
        )

    def put_embeddings(
        self, *, fingerprint: str, image_ids: Sequence[int], vectors: np.ndarray
    ) -> None:
        """Store embeddings of another fingerprint beside the current ones (re-embedding).
        Images deleted meanwhile are skipped; rows already there are kept."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._transaction(write=True) as cur:
            for image_id, vector in zip(image_ids, vectors, strict=True):
                self._exec(
                    cur,
                    "INSERT INTO embeddings (image_id, fingerprint, vector) "
                    "SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ?) "
                    "ON CONFLICT (image_id, fingerprint) DO NOTHING",
                    (int(image_id), fingerprint, vector.tobytes(), int(image_id)),
                )

    def switch_fingerprint(self, *, fingerprint: str, dim: int) -> None:
        """Make `fingerprint` the gallery's model, once every image has its embedding; drops
        the other fingerprints' embeddings and logs a reset, so every index rebuilds."""
        with self._transaction(write=True) as cur:
            missing = self._missing(cur, fingerprint)
            if missing:
                raise ConflictError(
                    f"{missing} images have no embedding for {fingerprint[:12]}… yet: "
                    "run `whaleid gallery reembed` again to finish"
                )
            self._exec(cur, "DELETE FROM embeddings WHERE fingerprint <> ?", (fingerprint,))
            self._set_meta(cur, {"fingerprint": fingerprint, "dim": str(dim)})
            self._log(cur, "reset", None, None)
            self._notify(cur)
