"""The shared store: PostgreSQL through psycopg 3, for several service replicas on one gallery.

Writers take a transaction-scoped advisory lock (one per schema) before they append to the
change log, so sequence numbers are handed out, and become visible, in commit order: a reader
that has seen sequence n has seen everything before it. Each write ends with a NOTIFY on
channel `whaleid` carrying the schema name, which `gallery.sync` listens for. Reads that must
be one snapshot (a full index build) run at REPEATABLE READ.

A connection lost before a transaction commits (the server restarted, a proxy or an operator
dropped it) is `Disconnected`: the call reconnects and runs once more (gallery.store.core);
one lost during COMMIT is a StoreUnavailableError, since it may or may not have committed.

The schema comes from the connection's search_path, e.g.
`postgresql://user@host/db?options=-csearch_path%3Dmygallery` (tests use one schema each).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from gallery.errors import StoreUnavailableError, WhaleidError
from gallery.store.base import Cursor, SqlStore
from gallery.store.core import Disconnected

__all__ = ["CHANNEL", "PostgresStore"]

CHANNEL = "whaleid"


class PostgresStore(SqlStore):
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._conn = connect(url)
        self.schema = str(self._conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        self._listener: psycopg.Connection[Any] | None = None  # wait_for_change's, lazily
        self.migrate()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            if self._conn.broken or self._conn.closed:
                self._conn = connect(self.url)
            conn = self._conn
            try:
                with conn.cursor() as cur:
                    # Reads that must be one snapshot (a full index build) get one.
                    cur.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ")
                    if write:
                        cur.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
                    yield cur
            except BaseException as exc:
                if self._lost(conn, exc):
                    raise Disconnected(str(exc).strip()) from exc
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except psycopg.OperationalError as exc:
                if self._lost(conn, exc):
                    raise StoreUnavailableError(
                        f"the gallery database connection dropped while committing ({exc}): "
                        "the change may or may not be stored; check and retry"
                    ) from exc
                raise

    @staticmethod
    def _lost(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
        return isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed)

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _notify(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_notify(%s, current_schema())", (CHANNEL,))

    def wait_for_change(self, *, timeout: float) -> None:
        """Until a write to this schema is notified or `timeout` passes. Called by one thread
        (the follower); a dropped listening connection raises, and the next call reconnects."""
        if self._listener is None or self._listener.closed or self._listener.broken:
            self._listener = connect(self.url)
            self._listener.execute(f"LISTEN {CHANNEL}")
        deadline = time.monotonic() + timeout
        try:
            for notify in self._listener.notifies(timeout=timeout):
                if notify.payload == self.schema or time.monotonic() >= deadline:
                    break
        except psycopg.Error:
            self._listener.close()
            raise

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._listener is not None:
                self._listener.close()
            self._conn.close()


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit); names the URL when it fails."""
    try:
        conn = psycopg.connect(url, autocommit=True, **kwargs)
    except psycopg.OperationalError as exc:
        raise StoreUnavailableError(
            f"cannot connect to the gallery database {_redact(url)}: {exc}"
        ) from exc
    schema = conn.execute("SELECT current_schema()").fetchone()
    if schema is None or schema[0] is None:
        conn.close()
        raise WhaleidError(
            f"gallery database {_redact(url)}: the schema in its search_path does not exist "
            "(CREATE SCHEMA it first)"
        )
    return conn


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        return (
            f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}" if ":" in credentials else url
        )
    return url
