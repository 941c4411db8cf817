"""What every part of the SQL store stands on: the dialect hooks, statements, the store's
identity, and how a call survives a dropped connection.

A store call runs in one transaction (`_transaction`, a dialect hook). A dialect raises
`Disconnected` when the connection was lost before the transaction committed: the server has
rolled it back, so `@retried` methods run once more on a new connection, reads and writes
alike, and nothing is written twice. A connection lost during COMMIT leaves the outcome unknown:
that, a second loss, or a store that cannot be written (read-only or full disk) is a
StoreUnavailableError, which the service answers with 503.
"""

from __future__ import annotations

import functools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from gallery.errors import ConflictError, StoreUnavailableError, WhaleidError

__all__ = [
    "CHUNK",
    "Cursor",
    "Disconnected",
    "ModelChangedError",
    "SchemaError",
    "StoreCore",
    "StoreInfo",
    "retried",
]

log = logging.getLogger(__name__)

CHUNK = 500  # ids per IN (...) list: well under SQLite's parameter limit

Cursor = Any  # sqlite3.Cursor | psycopg.Cursor: both DB-API cursors

P = ParamSpec("P")
R = TypeVar("R")


class SchemaError(WhaleidError):
    """The database was written by a newer whaleid, or is not a gallery."""


class ModelChangedError(ConflictError):
    """A write with embeddings of a model the gallery no longer uses (it was re-embedded)."""


class Disconnected(StoreUnavailableError):
    """The connection dropped before the transaction committed (nothing was written). A call
    that is not `@retried` (a streaming scan) passes it on: unavailable, try again."""


def retried(method: Callable[P, R]) -> Callable[P, R]:
    """Run a store call once more when its connection dropped before it committed."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Disconnected as exc:
            log.warning("gallery store: connection lost (%s); retrying once", exc)
        try:
            return method(*args, **kwargs)
        except Disconnected as exc:
            raise StoreUnavailableError(f"the gallery database is unreachable: {exc}") from exc

    return call


class StoreInfo:
    """The store's identity and the model its embeddings belong to."""

    def __init__(self, meta: dict[str, str], schema_version: int) -> None:
        self.uuid = meta.get("uuid", "")
        self.fingerprint = meta.get("fingerprint") or None
        self.dim = int(meta["dim"]) if meta.get("dim") else None
        self.photos_dir = meta.get("photos_dir") or None
        self.schema_version = schema_version


class StoreCore(ABC):
    """The dialect hooks and helpers the store's parts share."""

    dialect: str
    url: str

    def __init__(self) -> None:
        # One connection per store, used by one thread at a time: transactions never interleave.
        self._lock = threading.RLock()
        self._closed = threading.Event()

    # -- dialect hooks -------------------------------------------------------------------------

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Cursor]:
        """A transaction: writes are serialised across processes; reads see one snapshot.
        Raises Disconnected when the connection was lost before the commit."""

    @abstractmethod
    def close(self) -> None: ...

    def _sql(self, text: str) -> str:
        """Statements are written with `?` placeholders."""
        return text

    def _ts(self, value: datetime) -> Any:
        return value

    def _notify(self, cur: Cursor) -> None:  # noqa: B027 (optional hook: SQLite polls)
        """Tell listening processes that the change log moved (sent at commit)."""

    def wait_for_change(self, *, timeout: float) -> None:
        """Block until another process may have written, at most `timeout` seconds. Without
        notifications (SQLite) that is simply the timeout: the caller polls."""
        self._closed.wait(timeout)

    # -- helpers -------------------------------------------------------------------------------

    def _exec(self, cur: Cursor, text: str, params: Sequence[Any] = ()) -> Cursor:
        cur.execute(self._sql(text), tuple(params))
        return cur

    def _scalar(self, cur: Cursor, text: str, params: Sequence[Any] = ()) -> Any:
        return self._exec(cur, text, params).fetchone()[0]

    @staticmethod
    def _datetime(value: Any) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(value)

    def _set_meta(self, cur: Cursor, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._exec(
                cur,
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- identity ------------------------------------------------------------------------------

    @retried
    def info(self) -> StoreInfo:
        with self._transaction(write=False) as cur:
            meta = dict(self._exec(cur, "SELECT key, value FROM meta").fetchall())
            version = self._scalar(cur, "SELECT MAX(version) FROM schema_version")
        return StoreInfo(meta, int(version or 0))

    @retried
    def set_meta(self, *, values: dict[str, str]) -> None:
        with self._transaction(write=True) as cur:
            self._set_meta(cur, values)
