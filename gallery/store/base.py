"""The SQL store both dialects share, assembled from one part per concern.

A store is the durable record of the gallery: individuals, images, embeddings and local
features (per bundle fingerprint) and a change log. Every write runs in one transaction that
also appends to the change log, so an index can rebuild from a consistent scan and then catch
up, in commit order, from the sequence it has reached (after a crash, or to follow other
processes).

- gallery.store.core         dialect hooks, identity (meta), retry after a dropped connection
- gallery.store.migrations   the versioned schema
- gallery.store.changes      the change log
- gallery.store.images       images and embeddings, re-embedding
- gallery.store.features     images' keypoints and descriptors, beside their embeddings
- gallery.store.individuals  individuals: rename, merge, delete, read

The dialects (gallery.store.sqlite, gallery.store.postgres) differ only in how they connect,
begin and end a transaction, report a lost connection and spell a few types. Store methods
are keyword-only.
"""

from __future__ import annotations

from gallery.store.core import Cursor, ModelChangedError, SchemaError, StoreInfo
from gallery.store.images import ImageTable
from gallery.store.individuals import IndividualTable
from gallery.store.migrations import Migrations

__all__ = ["Cursor", "ModelChangedError", "SchemaError", "SqlStore", "StoreInfo"]


class SqlStore(IndividualTable, ImageTable, Migrations):
    """The whole store; a dialect subclass provides the connection and transactions."""
