"""The store's local features: each image's keypoints and descriptors under a bundle
fingerprint, beside its embedding (one row per image and fingerprint, as embeddings).

A query re-ranks its shortlist against these, so it never re-extracts the gallery's photos.
They are written with the embedding (a registration, an import, a re-embed batch), in its
transaction, and go where embeddings go: a re-embed's switch drops the other fingerprints'
rows, deleting an image deletes its rows (explicitly, as embeddings, though the foreign key
cascades too).
"""

from __future__ import annotations

from collections.abc import Sequence

from gallery.batches import chunks
from gallery.keypoints import StoredFeatures
from gallery.store.changes import ChangeLog
from gallery.store.core import CHUNK, Cursor, retried

__all__ = ["FeatureTable"]

_POINT_BYTES = 12  # x, y, score as float32
_DESCRIPTOR_BYTES = 2  # float16
_FRAME_BYTES = 12  # ox, oy, scale as float32


class FeatureTable(ChangeLog):
    def _put_features(
        self, cur: Cursor, image_id: int, fingerprint: str, features: StoredFeatures
    ) -> None:
        """Store one image's features unless it has some for this fingerprint already, or no
        longer exists (deleted while a re-embed computed them)."""
        points, descriptors, frame = features.to_bytes()
        self._exec(
            cur,
            "INSERT INTO local_features (image_id, fingerprint, points, descriptors, frame) "
            "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM images WHERE id = ?) "
            "ON CONFLICT (image_id, fingerprint) DO NOTHING",
            (int(image_id), fingerprint, points, descriptors, frame, int(image_id)),
        )

    @retried
    def local_features(
        self, *, fingerprint: str, image_ids: Sequence[int], dim: int
    ) -> dict[int, StoredFeatures]:
        """image id → its features for this fingerprint, for the images that have some; one
        read transaction (a query's shortlist is one IN list)."""
        found: dict[int, StoredFeatures] = {}
        unique = list(dict.fromkeys(int(i) for i in image_ids))
        with self._transaction(write=False) as cur:
            for chunk in chunks(unique, CHUNK):
                marks = ", ".join("?" * len(chunk))
                for image_id, points, descriptors, frame in self._exec(
                    cur,
                    "SELECT image_id, points, descriptors, frame FROM local_features "
                    f"WHERE fingerprint = ? AND image_id IN ({marks})",
                    [fingerprint, *chunk],
                ).fetchall():
                    found[int(image_id)] = _decode(
                        int(image_id), bytes(points), bytes(descriptors), bytes(frame), dim
                    )
        return found

    @retried
    def count_features(self, *, fingerprint: str) -> int:
        """Images with features for this fingerprint."""
        with self._transaction(write=False) as cur:
            return int(
                self._scalar(
                    cur, "SELECT COUNT(*) FROM local_features WHERE fingerprint = ?", (fingerprint,)
                )
            )


def _decode(
    image_id: int, points: bytes, descriptors: bytes, frame: bytes, dim: int
) -> StoredFeatures:
    """The stored blobs, checked against the descriptor size the caller expects: a wrong one
    would otherwise reshape silently into other keypoints. (The fingerprint covers the matcher,
    so one fingerprint has one descriptor size: a mismatch is a caller's bug.)"""
    count, rest = divmod(len(points), _POINT_BYTES)
    if rest or len(descriptors) != count * dim * _DESCRIPTOR_BYTES or len(frame) != _FRAME_BYTES:
        raise ValueError(
            f"image {image_id}: its stored keypoints ({len(points)}, {len(descriptors)} and "
            f"{len(frame)} bytes) are not {count} keypoints with {dim}-d descriptors"
        )
    return StoredFeatures.from_bytes(points, descriptors, frame, dim)
