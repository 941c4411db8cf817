"""Local features with onnxruntime: keypoints of a crop, and LightGlue matches between two crops.

Both graphs have fixed sizes, so the micro-batcher can stack them: the extractor takes crops
letterboxed to one square side (the detector's `letterbox`, the one preprocessing) and always
returns `max_keypoints` slots with scores; the matcher takes two such padded sets with their
masks. What counts as a keypoint (score, not on the padding) and as a match (score) is decided
here, in numpy, so those thresholds live in the manifest and not in the graphs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.manifest import BundleError
from app.matcher_spec import MatcherSpec
from app.preprocess import Letterbox, letterbox
from app.sessions import open_session

__all__ = [
    "EXTRACTOR_INPUTS",
    "EXTRACTOR_OUTPUTS",
    "MATCHER_INPUTS",
    "MATCHER_OUTPUTS",
    "LocalFeatures",
    "Matches",
    "OnnxExtractor",
    "OnnxLightGlue",
    "content_mask",
    "letterbox_crops",
]

# The names export gives the graphs' ends; serving checks them when it opens a session.
EXTRACTOR_INPUTS = ("image",)
EXTRACTOR_OUTPUTS = ("keypoints", "scores", "descriptors")
MATCHER_INPUTS = ("keypoints0", "descriptors0", "mask0", "keypoints1", "descriptors1", "mask1")
MATCHER_OUTPUTS = ("matches0", "scores0")


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints of N crops, K slots each, in pixels of the S×S letterboxed input.

    keypoints (N, K, 2) x, y; scores (N, K); descriptors (N, K, D), unit length; mask (N, K):
    the slot holds a real keypoint (score above the threshold, not on the letterbox padding).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def take(self, rows: np.ndarray | Sequence[int]) -> LocalFeatures:
        """The features of some crops, in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        return LocalFeatures(
            keypoints=self.keypoints[rows],
            scores=self.scores[rows],
            descriptors=self.descriptors[rows],
            mask=self.mask[rows],
        )

    @staticmethod
    def concat(parts: Sequence[LocalFeatures]) -> LocalFeatures:
        return LocalFeatures(
            keypoints=np.concatenate([p.keypoints for p in parts]),
            scores=np.concatenate([p.scores for p in parts]),
            descriptors=np.concatenate([p.descriptors for p in parts]),
            mask=np.concatenate([p.mask for p in parts]),
        )


@dataclass(frozen=True)
class Matches:
    """LightGlue's answer for B pairs (a query's keypoints against B candidates').

    matches (B, K): for each query slot, the candidate slot it matches, or -1; scores (B, K):
    the match confidence (0 where there is no match). Only matches above the spec's
    match threshold are kept.
    """

    matches: np.ndarray
    scores: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """(B,) number of matches per pair: the local score."""
        return (self.matches >= 0).sum(axis=1)


def letterbox_crops(crops: Sequence[Image.Image], side: int) -> tuple[np.ndarray, list[Letterbox]]:
    """Crops → float32 (N, 3, side, side) in [0, 1], each letterboxed, and where each went."""
    if not crops:
        return np.zeros((0, 3, side, side), dtype=np.float32), []
    arrays, boxes = zip(*(letterbox(crop, side) for crop in crops), strict=True)
    return np.stack(arrays), list(boxes)


def content_mask(keypoints: np.ndarray, boxes: Sequence[Letterbox], border: float) -> np.ndarray:
    """(N, K) keypoints at least `border` px inside the photo's part of the letterbox: the
    padding is flat, but its edge with the photo is a strong, meaningless corner."""
    lo = np.array([[b.pad_x, b.pad_y] for b in boxes], dtype=np.float32)
    size = np.array([[b.size[0] * b.scale, b.size[1] * b.scale] for b in boxes], np.float32)
    inside = (keypoints >= lo[:, None] + border) & (
        keypoints <= lo[:, None] + size[:, None] - border
    )
    return np.asarray(inside.all(axis=2))


def _check_names(session_names: Sequence[str], expected: Sequence[str], path: Path) -> None:
    if list(session_names) != list(expected):
        raise BundleError(
            f"{path} has ends {list(session_names)}, expected {list(expected)}: "
            "it was not exported by `whaleid export --matcher`"
        )


class OnnxExtractor:
    """The keypoint extractor of a bundle: crops → LocalFeatures."""

    def __init__(
        self,
        path: Path,
        spec: MatcherSpec,
        providers: Sequence[str] | None = None,
        *,
        spinning: bool = False,
    ) -> None:
        self.spec = spec
        self.session = open_session(path, providers, spinning=spinning)
        _check_names([i.name for i in self.session.get_inputs()], EXTRACTOR_INPUTS, path)
        _check_names([o.name for o in self.session.get_outputs()], EXTRACTOR_OUTPUTS, path)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 3, S, S) float32 in [0, 1] → keypoints (N, K, 2), scores (N, K), descriptors
        (N, K, D): every slot, before any threshold."""
        if len(batch) == 0:
            k, d = self.spec.max_keypoints, self.spec.descriptor_dim
            return (
                np.zeros((0, k, 2), np.float32),
                np.zeros((0, k), np.float32),
                np.zeros((0, k, d), np.float32),
            )
        keypoints, scores, descriptors = self.session.run(None, {"image": batch})
        return keypoints, scores, descriptors

    def extract(self, crops: Sequence[Image.Image]) -> LocalFeatures:
        """Letterbox the crops, run the graph, and mark which slots are real keypoints."""
        batch, boxes = letterbox_crops(crops, self.spec.input_side)
        keypoints, scores, descriptors = self.run(batch)
        mask = scores > self.spec.detection_threshold
        if boxes:
            mask &= content_mask(keypoints, boxes, self.spec.border)
        return LocalFeatures(keypoints, scores, descriptors, mask)


class OnnxLightGlue:
    """The bundle's LightGlue: one query's features against B candidates' in one run."""

    def __init__(
        self,
        path: Path,
        spec: MatcherSpec,
        providers: Sequence[str] | None = None,
        *,
        spinning: bool = False,
    ) -> None:
        self.spec = spec
        self.session = open_session(path, providers, spinning=spinning)
        _check_names([i.name for i in self.session.get_inputs()], MATCHER_INPUTS, path)
        _check_names([o.name for o in self.session.get_outputs()], MATCHER_OUTPUTS, path)

    def run(self, features0: LocalFeatures, features1: LocalFeatures) -> tuple[np.ndarray, ...]:
        """Row i of features0 against row i of features1: raw matches0 (B, K) and scores0."""
        feeds = {
            "keypoints0": features0.keypoints.astype(np.float32),
            "descriptors0": features0.descriptors.astype(np.float32),
            "mask0": features0.mask.astype(bool),
            "keypoints1": features1.keypoints.astype(np.float32),
            "descriptors1": features1.descriptors.astype(np.float32),
            "mask1": features1.mask.astype(bool),
        }
        matches, scores = self.session.run(None, feeds)
        return matches, scores

    def match(self, query: LocalFeatures, candidates: LocalFeatures) -> Matches:
        """One query (a LocalFeatures of one crop) against each of B candidates."""
        if len(query) != 1:
            raise ValueError(f"match takes one query crop, got {len(query)}")
        if len(candidates) == 0:
            k = self.spec.max_keypoints
            return Matches(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
        repeated = query.take(np.zeros(len(candidates), dtype=np.int64))
        matches, scores = self.run(repeated, candidates)
        keep = (matches >= 0) & (scores > self.spec.match_threshold)
        return Matches(np.where(keep, matches, -1), np.where(keep, scores, 0.0).astype(np.float32))
