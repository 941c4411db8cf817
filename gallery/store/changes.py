"""The store's change log: every write appends to it in the same transaction, in commit order,
so an index catches up from the sequence it has reached (after a crash, or to follow other
processes)."""

from __future__ import annotations

from gallery.records import Change
from gallery.store.core import Cursor, StoreCore, retried

__all__ = ["ChangeLog"]


class ChangeLog(StoreCore):
    @retried
    def head(self) -> int:
        """The last committed change sequence (0 for a new store)."""
        with self._transaction(write=False) as cur:
            return self._head(cur)

    def _head(self, cur: Cursor) -> int:
        return int(self._scalar(cur, "SELECT COALESCE(MAX(seq), 0) FROM changes"))

    @retried
    def changes(self, *, after: int, limit: int = 10_000) -> list[Change]:
        with self._transaction(write=False) as cur:
            rows = self._exec(
                cur,
                "SELECT seq, op, image_id, individual_id FROM changes "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [Change(int(s), op, None if i is None else int(i), ind) for s, op, i, ind in rows]

    def _log(self, cur: Cursor, op: str, image_id: int | None, individual_id: str | None) -> None:
        self._exec(
            cur,
            "INSERT INTO changes (op, image_id, individual_id) VALUES (?, ?, ?)",
            (op, image_id, individual_id),
        )
