"""Durable gallery stores: SQLite (embedded default) and PostgreSQL (shared by replicas)."""

from __future__ import annotations

from pathlib import Path

from gallery.errors import WhaleidError
from gallery.store.base import SqlStore, StoreInfo
from gallery.store.postgres import PostgresStore
from gallery.store.sqlite import SqliteStore

__all__ = ["GalleryUrlError", "SqlStore", "StoreInfo", "normalize_url", "open_store", "sqlite_path"]

_SCHEMES = ("sqlite://", "postgresql://", "postgres://")


class GalleryUrlError(WhaleidError, ValueError):
    """Not a gallery URL (a ValueError too, so settings validation names the variable)."""


def normalize_url(value: str) -> str:
    """A store URL as given, or a bare file path made `sqlite:///absolute/path`; a
    GalleryUrlError for any other scheme."""
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    if not value.startswith(_SCHEMES):
        raise GalleryUrlError(
            f"{value!r} is not a gallery: use a SQLite file path, sqlite:///path/gallery.db "
            "or postgresql://user:password@host:5432/database"
        )
    return value


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
        return SqliteStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    raise WhaleidError(
        f"gallery URL {url!r}: expected sqlite:///path/gallery.db or postgresql://user@host/db"
    )
