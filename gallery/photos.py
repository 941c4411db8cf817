"""Original photos, kept content addressed on disk so the gallery can be re-embedded.

A photo lives at `root/ab/cd/<sha256>`: its name is its hash, so storing it twice is a no-op
and any number of processes (or replicas sharing the folder) can write without coordinating.
A photo is written and fsynced before the database commit that refers to it; a crash in
between leaves an unreferenced file, which is harmless.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gallery.errors import NotFoundError
from gallery.store import sqlite_path

__all__ = ["PhotoStore", "content_hash", "resolve_photos_dir"]


def resolve_photos_dir(url: str, *, stored: str | None, given: Path | None) -> Path | None:
    """Where a gallery keeps its photos: as given, else as recorded in the store, else beside a
    SQLite file (`gallery.db` → `gallery-photos/`); None (not kept) for other stores."""
    if given is not None:
        return Path(given)
    if stored:
        return Path(stored)
    db = sqlite_path(url)
    return db.with_name(db.stem + "-photos") if db is not None else None


def content_hash(content: bytes) -> str:
    """The name of a photo: sha256 of its bytes, hex."""
    return hashlib.sha256(content).hexdigest()


class PhotoStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, content: bytes) -> str:
        """Store a photo durably; returns its hash."""
        digest, folder = self._write(content)
        if folder is not None:
            _fsync_dir(folder)
        return digest

    def put_many(self, contents: Sequence[bytes], *, threads: int = 8) -> list[str]:
        """Store a batch durably; returns the hashes. fsyncs run in parallel so the file
        system commits them together (one at a time, a bulk import waits on every one)."""
        if len(contents) <= 1:
            return [self.put(c) for c in contents]
        with ThreadPoolExecutor(min(threads, len(contents))) as pool:
            written = list(pool.map(self._write, contents))
            folders = {f for _, f in written if f is not None}
            list(pool.map(_fsync_dir, folders))
        return [digest for digest, _ in written]

    def _write(self, content: bytes) -> tuple[str, Path | None]:
        """Write and fsync one photo; returns its hash and the folder whose entry is new."""
        digest = content_hash(content)
        target = self.path(digest)
        if target.exists():
            return digest, None
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest, target.parent

    def get(self, digest: str) -> bytes:
        path = self.path(digest)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(
                f"photo {digest} is not in {self.root}: it was deleted or the gallery's photos "
                "folder is elsewhere (set photos_dir)"
            ) from None

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """A rename is durable only once its directory entry is."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
