"""The embedded store: one SQLite file in WAL mode.

WAL lets readers in other processes (a CLI `list` beside a running service) work while one
process writes; `synchronous=FULL` fsyncs the WAL at every commit, so an acknowledged write
survives a power cut, not only a crash of the process. Writes take the database lock at BEGIN
(IMMEDIATE), so the change log's order is the commit order.

A file that cannot be written (read-only or immutable, a full disk, an I/O error) or a lock
held past the busy timeout is a StoreUnavailableError: the service answers 503 and goes on
searching its index.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from gallery.errors import StoreUnavailableError
from gallery.store.base import Cursor, SqlStore

__all__ = ["SqliteStore"]

# Primary result codes that mean "not now", not "wrong SQL".
_UNAVAILABLE = {
    3: "permission denied",  # SQLITE_PERM
    5: "the database is locked by another writer",  # SQLITE_BUSY
    6: "the database is locked",  # SQLITE_LOCKED
    8: "the database file is read-only",  # SQLITE_READONLY
    10: "a disk I/O error (read-only, immutable or failing file?)",  # SQLITE_IOERR
    13: "the disk is full",  # SQLITE_FULL
    14: "the database file cannot be opened",  # SQLITE_CANTOPEN
}


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun explicitly below, never implicitly.
        try:
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError as exc:
            self._raise_unavailable(exc)
            raise
        self.migrate()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                # A deferred BEGIN still gives reads one snapshot (from their first SELECT).
                cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield cur
                cur.execute("COMMIT")
            except BaseException as exc:
                self._abandon(cur)
                if isinstance(exc, sqlite3.OperationalError):
                    self._raise_unavailable(exc)
                raise
            finally:
                cur.close()

    def _abandon(self, cur: Cursor) -> None:
        """Roll back what is open; SQLite has already done so after some errors (an I/O error
        while writing), and a failed COMMIT may leave the transaction open."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")

    def _raise_unavailable(self, exc: sqlite3.OperationalError) -> None:
        """A StoreUnavailableError for an error that means "not now"; else nothing."""
        reason = _UNAVAILABLE.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF)
        if reason is not None:
            raise StoreUnavailableError(f"gallery {self.path}: {reason} ({exc})") from exc

    def _ts(self, value: datetime) -> str:
        return value.isoformat()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            self._conn.close()
