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
from gallery.keypoints import LocalFeatures

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
    "frames",
    "letterbox_crops",
]

# The names export gives the graphs' ends; serving checks them when it opens a session.
EXTRACTOR_INPUTS = ("image",)
EXTRACTOR_OUTPUTS = ("keypoints", "scores", "descriptors")
MATCHER_INPUTS = ("keypoints0", "descriptors0", "mask0", "keypoints1", "descriptors1", "mask1")
MATCHER_OUTPUTS = ("matches0", "scores0")


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


def frames(boxes: Sequence[Letterbox], origins: Sequence[tuple[float, float]]) -> np.ndarray:
    """(N, 3) (ox, oy, s): letterbox pixels × s + (ox, oy) = photo pixels, for crops whose
    top-left corners sit at `origins` in their photos."""
    if len(boxes) != len(origins):
        raise ValueError(f"{len(origins)} origins for {len(boxes)} crops")
    out = np.zeros((len(boxes), 3), np.float32)
    for i, (b, (x0, y0)) in enumerate(zip(boxes, origins, strict=True)):
        out[i] = (x0 - b.pad_x / b.scale, y0 - b.pad_y / b.scale, 1 / b.scale)
    return out


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

    def extract(
        self,
        crops: Sequence[Image.Image],
        origins: Sequence[tuple[float, float]] | None = None,
    ) -> LocalFeatures:
        """Letterbox the crops, run the graph, and mark which slots are real keypoints.
        `origins`: each crop's top-left corner in its photo (default (0, 0)), so that the
        features' frames map keypoints onto the photo."""
        batch, boxes = letterbox_crops(crops, self.spec.input_side)
        keypoints, scores, descriptors = self.run(batch)
        mask = scores > self.spec.detection_threshold
        if boxes:
            mask &= content_mask(keypoints, boxes, self.spec.border)
        origins = list(origins) if origins is not None else [(0.0, 0.0)] * len(boxes)
        return LocalFeatures(keypoints, scores, descriptors, mask, frames(boxes, origins))


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
        return self.match_rows(query.take(np.zeros(len(candidates), dtype=np.int64)), candidates)

    def match_rows(self, features0: LocalFeatures, features1: LocalFeatures) -> Matches:
        """Row i of features0 against row i of features1 (pairs of several queries can share
        one run), matches above the spec's threshold."""
        if len(features0) != len(features1):
            raise ValueError(f"{len(features0)} crops against {len(features1)}")
        matches, scores = self.run(features0, features1)
        keep = (matches >= 0) & (scores > self.spec.match_threshold)
        return Matches(np.where(keep, matches, -1), np.where(keep, scores, 0.0).astype(np.float32))
