"""Keypoints and descriptors of crops: what the local matcher compares, what the gallery stores.

The extractor (`app.local_features`) always returns K padded slots per crop, in pixels of the
S×S square its crop was letterboxed to; `mask` says which slots hold real keypoints. `frames`
maps those pixels back onto the upright photo (`to_photo`), so that a match can be drawn on the
photos a person looks at. The gallery keeps only the real slots of each photo (`compact`),
descriptors in float16, and pads them back to K slots when a query needs them (`pad`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LocalFeatures", "StoredFeatures"]


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of N crops, K slots each, in pixels of the S×S letterboxed input.

    keypoints (N, K, 2) x, y; scores (N, K); descriptors (N, K, D), unit length; mask (N, K):
    the slot holds a real keypoint (score above the threshold, not on the letterbox padding);
    frames (N, 3): (ox, oy, s) with photo_xy = keypoint_xy × s + (ox, oy).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    mask: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @property
    def max_keypoints(self) -> int:
        return int(self.keypoints.shape[1])

    def take(self, rows: np.ndarray | Sequence[int]) -> LocalFeatures:
        """The features of some crops, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        return LocalFeatures(
            keypoints=self.keypoints[rows],
            scores=self.scores[rows],
            descriptors=self.descriptors[rows],
            mask=self.mask[rows],
            frames=self.frames[rows],
        )

    def to_photo(self, row: int, points: np.ndarray) -> np.ndarray:
        """(M, 2) letterbox pixels of crop `row` → pixels of its upright photo."""
        ox, oy, s = (float(v) for v in self.frames[row])
        return np.asarray(points, dtype=np.float32) * s + np.array([ox, oy], np.float32)

    def compact(self, row: int) -> StoredFeatures:
        """One crop's real keypoints, as the gallery stores them."""
        keep = self.mask[row]
        return StoredFeatures(
            keypoints=np.ascontiguousarray(self.keypoints[row][keep], dtype=np.float32),
            scores=np.ascontiguousarray(self.scores[row][keep], dtype=np.float32),
            descriptors=np.ascontiguousarray(self.descriptors[row][keep], dtype=np.float16),
            frame=np.asarray(self.frames[row], dtype=np.float32),
        )

    @staticmethod
    def concat(parts: Sequence[LocalFeatures]) -> LocalFeatures:
        return LocalFeatures(
            keypoints=np.concatenate([p.keypoints for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            descriptors=np.concatenate([p.descriptors for p in parts]),
            mask=np.concatenate([p.mask for p in parts]),
            frames=np.concatenate([p.frames for p in parts]),
        )

    @staticmethod
    def pad(stored: Sequence[StoredFeatures], max_keypoints: int, dim: int) -> LocalFeatures:
        """Stored crops → K padded slots each (float32 descriptors), in the order given.
        A crop stored with more than K keypoints keeps its K best-scored ones."""
        n = len(stored)
        keypoints = np.zeros((n, max_keypoints, 2), np.float32)
        scores = np.zeros((n, max_keypoints), np.float32)
        descriptors = np.zeros((n, max_keypoints, dim), np.float32)
        mask = np.zeros((n, max_keypoints), bool)
        frames = np.zeros((n, 3), np.float32)
        for i, s in enumerate(stored):
            if s.descriptors.shape[1:] not in ((dim,), (0,)) and len(s):
                raise ValueError(
                    f"stored descriptors have size {s.descriptors.shape[1]}, not {dim}"
                )
            order = np.argsort(-s.scores, kind="stable")[:max_keypoints]
            m = len(order)
            keypoints[i, :m] = s.keypoints[order]
            scores[i, :m] = s.scores[order]
            descriptors[i, :m] = s.descriptors[order]
            mask[i, :m] = True
            frames[i] = s.frame
        return LocalFeatures(keypoints, scores, descriptors, mask, frames)


@dataclass(frozen=True)
class StoredFeatures:
    """One crop's real keypoints as the gallery keeps them: keypoints (M, 2) float32 in
    letterbox pixels, scores (M,) float32, descriptors (M, D) float16, frame (3,) float32."""

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    frame: np.ndarray

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    @classmethod
    def empty(cls, dim: int) -> StoredFeatures:
        """A crop without keypoints (what a photo with none stored pads to: an all-False mask)."""
        return cls(
            keypoints=np.zeros((0, 2), np.float32),
            scores=np.zeros(0, np.float32),
            descriptors=np.zeros((0, dim), np.float16),
            frame=np.zeros(3, np.float32),
        )

    def to_bytes(self) -> tuple[bytes, bytes, bytes]:
        """(keypoints+scores, descriptors, frame) blobs: float32 (M, 3), float16 (M, D),
        float32 (3,)."""
        points = np.concatenate([self.keypoints, self.scores[:, None]], axis=1)
        return (
            np.ascontiguousarray(points, dtype="<f4").tobytes(),
            np.ascontiguousarray(self.descriptors, dtype="<f2").tobytes(),
            np.ascontiguousarray(self.frame, dtype="<f4").tobytes(),
        )

    @classmethod
    def from_bytes(
        cls, points: bytes, descriptors: bytes, frame: bytes, dim: int
    ) -> StoredFeatures:
        p = np.frombuffer(points, dtype="<f4").reshape(-1, 3)
        return cls(
            keypoints=p[:, :2].astype(np.float32),
            scores=p[:, 2].astype(np.float32),
            descriptors=np.frombuffer(descriptors, dtype="<f2").reshape(-1, dim),
            frame=np.frombuffer(frame, dtype="<f4").astype(np.float32),
        )
