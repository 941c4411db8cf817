"""The shared store: PostgreSQL through psycopg 3, for several service replicas on one gallery.

Writers take a transaction-scoped advisory lock (one per schema) before they append to the
change log, so sequence numbers are handed out, and become visible, in commit order: a reader
that has seen sequence n has seen everything before it. Each write ends with a NOTIFY on
channel `whaleid` carrying the schema name, which `gallery.sync` listens for. Reads that must
be one snapshot (a full index build) run at REPEATABLE READ.

The schema comes from the connection's search_path, e.g.
`postgresql://user@host/db?options=-csearch_path%3Dmygallery` (tests use one schema each).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from gallery.errors import WhaleidError
from gallery.store.base import Cursor, SqlStore

__all__ = ["CHANNEL", "PostgresStore"]

CHANNEL = "whaleid"


class PostgresStore(SqlStore):
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._conn = connect(url)
        self.schema = str(self._conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        self.migrate()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            if self._conn.broken or self._conn.closed:
                # The server restarted or the network dropped: reconnect rather than fail
                # every later call. (A transaction that was open is lost, never half-done.)
                self._conn = connect(self.url)
            with self._conn.transaction(), self._conn.cursor() as cur:
                if write:
                    cur.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
                else:
                    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                yield cur

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def _notify(self, cur: Cursor) -> None:
        cur.execute("SELECT pg_notify(%s, current_schema())", (CHANNEL,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit); names the URL when it fails."""
    try:
        conn = psycopg.connect(url, autocommit=True, **kwargs)
    except psycopg.OperationalError as exc:
        raise WhaleidError(f"cannot connect to the gallery database {_redact(url)}: {exc}") from exc
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
