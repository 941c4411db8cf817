"""Durable gallery stores: SQLite (embedded default) and PostgreSQL (shared by replicas)."""

from __future__ import annotations

from pathlib import Path

from gallery.errors import WhaleidError
from gallery.store.base import SqlStore, StoreInfo

__all__ = ["SqlStore", "StoreInfo", "open_store", "sqlite_path"]


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (`sqlite:///abs/path.db`, `sqlite://rel.db`) or of a
    bare path; None for other URLs."""
    if url.startswith("sqlite://"):
        return Path(url[len("sqlite://") :])
    if "://" not in url:
        return Path(url)
    return None


def open_store(url: str) -> SqlStore:
    """Open (creating or migrating) the store a URL names."""
    path = sqlite_path(url)
    if path is not None:
        from gallery.store.sqlite import SqliteStore

        return SqliteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from gallery.store.postgres import PostgresStore

        return PostgresStore(url)
    raise WhaleidError(
        f"gallery URL {url!r}: expected sqlite:///path/gallery.db or postgresql://user@host/db"
    )
