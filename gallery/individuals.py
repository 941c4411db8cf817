"""Individuals: the records' functions, keyword-only, that every path goes through.

The HTTP routes (through `Gallery`, which then brings its index up to date) and the
`whaleid gallery` commands (on the store alone) call these same functions, so an id's rules
(gallery.rules) hold whichever way a change comes in. Changes reach every open index through
the store's change log.
"""

from __future__ import annotations

from typing import Any

from gallery.photos import PhotoStore
from gallery.records import KEEP, Individual, IndividualDetail, Keep
from gallery.rules import check_individual_id, check_label, check_metadata
from gallery.store import SqlStore

__all__ = [
    "count_individuals",
    "delete_individual",
    "get_individual",
    "list_individuals",
    "merge_individuals",
    "rename_individual",
    "update_individual",
]


def list_individuals(
    *, store: SqlStore, limit: int = 100, offset: int = 0, species: str | None = None
) -> list[Individual]:
    return store.list_individuals(
        limit=limit, offset=offset, species=check_label(species, field="species")
    )


def count_individuals(*, store: SqlStore, species: str | None = None) -> int:
    return store.count_individuals(species=check_label(species, field="species"))


def get_individual(*, store: SqlStore, individual_id: str) -> IndividualDetail:
    return store.get_individual(individual_id=individual_id)


def rename_individual(*, store: SqlStore, old: str, new: str) -> None:
    """Give an individual a new id (its images follow); the new id obeys the id rules and must
    be free."""
    store.rename(old=old, new=check_individual_id(new, field="new id"))


def update_individual(
    *,
    store: SqlStore,
    individual_id: str,
    new_id: str | None = None,
    species: str | Keep | None = KEEP,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Rename an individual and/or set its species (None: unknown) and replace its metadata,
    in one transaction; each new value obeys the records' rules."""
    if new_id is not None:
        new_id = check_individual_id(new_id, field="new id")
    if isinstance(species, str):
        species = check_label(species, field="species")
    if metadata is not None:
        metadata = check_metadata(metadata)
    store.update_individual(
        individual_id=individual_id, new_id=new_id, species=species, metadata=metadata
    )


def merge_individuals(*, store: SqlStore, source: str, target: str) -> None:
    """Merge `source` into `target`: target keeps its id and gains source's images."""
    store.merge(source=source, target=check_individual_id(target, field="target id"))


def delete_individual(
    *, store: SqlStore, photos: PhotoStore | None, individual_id: str
) -> list[str]:
    """Delete an individual, its images and their kept photos; returns the photos' hashes."""
    digests = store.delete_individual(individual_id=individual_id)
    if photos is not None:
        for digest in digests:
            photos.delete(digest)
    return digests
