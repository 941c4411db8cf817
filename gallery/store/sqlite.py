"""The embedded store: one SQLite file in WAL mode.

WAL lets readers in other processes (a CLI `list` beside a running service) work while one
process writes; `synchronous=FULL` fsyncs the WAL at every commit, so an acknowledged write
survives a power cut, not only a crash of the process. Writes take the database lock at BEGIN
(IMMEDIATE), so the change log's order is the commit order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from gallery.store.base import Cursor, SqlStore

__all__ = ["SqliteStore"]


class SqliteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are begun explicitly below, never implicitly.
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            # A deferred BEGIN still gives reads one snapshot (from their first SELECT).
            cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def _ts(self, value: datetime) -> str:
        return value.isoformat()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
