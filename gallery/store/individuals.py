"""The store's individuals: create (with a registration), update, rename, merge, delete, read."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gallery.batches import chunks
from gallery.errors import ConflictError, NotFoundError
from gallery.records import KEEP, Individual, IndividualDetail, Keep, NewEntry
from gallery.store.changes import ChangeLog
from gallery.store.core import CHUNK, Cursor, retried
from gallery.store.images import IMAGE_COLUMNS, image_record

__all__ = ["IndividualTable"]


class IndividualTable(ChangeLog):
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

    @retried
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
            self._exec(
                cur,
                "DELETE FROM local_features WHERE image_id IN "
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
        self.update_individual(individual_id=old, new_id=new)

    @retried
    def update_individual(
        self,
        *,
        individual_id: str,
        new_id: str | None = None,
        species: str | Keep | None = KEEP,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Rename an individual, set its species (None: unknown) and replace its metadata, in
        one transaction; what is left out (KEEP, None) stays as it is."""
        with self._transaction(write=True) as cur:
            self._require(cur, individual_id)
            current = individual_id
            if new_id is not None and new_id != individual_id:
                self._rename(cur, individual_id, new_id)
                current = new_id
            if species is not KEEP:
                self._exec(
                    cur, "UPDATE individuals SET species = ? WHERE id = ?", (species, current)
                )
                self._log(cur, "species", None, current)
            if metadata is not None:
                self._exec(
                    cur,
                    "UPDATE individuals SET metadata = ? WHERE id = ?",
                    (json.dumps(metadata), current),
                )
            self._notify(cur)

    def _rename(self, cur: Cursor, old: str, new: str) -> None:
        taken = self._exec(cur, "SELECT 1 FROM individuals WHERE id = ?", (new,)).fetchone()
        if taken is not None:
            raise ConflictError(f"individual {new!r} already exists: merge {old!r} into it instead")
        self._exec(
            cur,
            "INSERT INTO individuals (id, species, created, metadata) "
            "SELECT ?, species, created, metadata FROM individuals WHERE id = ?",
            (new, old),
        )
        self._log(cur, "species", None, new)
        self._move_images(cur, old, new)
        self._exec(cur, "DELETE FROM individuals WHERE id = ?", (old,))

    @retried
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

    @retried
    def species_of(self, *, individual_ids: Iterable[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        unique = list(dict.fromkeys(individual_ids))
        with self._transaction(write=False) as cur:
            for chunk in chunks(unique, CHUNK):
                marks = ", ".join("?" * len(chunk))
                rows = self._exec(
                    cur, f"SELECT id, species FROM individuals WHERE id IN ({marks})", chunk
                ).fetchall()
                found.update(dict(rows))
        return found

    @retried
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

    @retried
    def count_individuals(self, *, species: str | None = None) -> int:
        where, params = ("WHERE species = ?", [species]) if species is not None else ("", [])
        with self._transaction(write=False) as cur:
            return int(
                self._exec(cur, f"SELECT COUNT(*) FROM individuals {where}", params).fetchone()[0]
            )

    @retried
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
                image_record(r)
                for r in self._exec(
                    cur,
                    f"SELECT {IMAGE_COLUMNS} FROM images WHERE individual_id = ? ORDER BY id",
                    (individual_id,),
                ).fetchall()
            ]
        return IndividualDetail(
            row[0], row[1], self._datetime(row[2]), json.loads(row[3]), len(images), images
        )
