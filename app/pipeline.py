"""Photo → crop → ensemble embedding, with onnxruntime only.

The one pipeline that `whaleid predict`, `whaleid gallery import/reembed` and the service all
use, so batch and service answers agree exactly. It works on batches: the detector and each
ensemble member run once per call of `embed`, so the service can group concurrent requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from app.bundle import Bundle, load_bundle
from app.embedder import combine
from app.manifest import Manifest
from app.preprocess import Box, Crop, EmbedTransform, crop_box, pad_box, to_batch
from gallery.keypoints import LocalFeatures

__all__ = ["Crop", "Embedded", "Pipeline"]


@dataclass(frozen=True)
class Embedded:
    """Embeddings of a batch of photos: (N, D) float32, L2-normalised, each photo's crop (None
    where the whole photo was used) and, when the bundle has a matcher and they were asked
    for, the crops' keypoints (frames mapping them onto each photo)."""

    vectors: np.ndarray
    crops: list[Crop | None]
    local: LocalFeatures | None = None


class Pipeline:
    """A loaded bundle, ready to embed photos."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: Path,
        providers: list[str] | None = None,
        *,
        spinning: bool = False,
        manifest: Manifest | None = None,
    ) -> Pipeline:
        """Load and validate the bundle in `bundle_dir` (BundleError when it is not sound);
        `manifest`: already read and verified, for a second copy of the same models."""
        return cls(load_bundle(bundle_dir, providers, spinning=spinning, manifest=manifest))

    @property
    def manifest(self) -> Manifest:
        return self.bundle.manifest

    @property
    def fingerprint(self) -> str:
        return self.bundle.manifest.fingerprint

    @property
    def embedding_dim(self) -> int:
        return self.bundle.manifest.embedding_dim

    @property
    def padding(self) -> float:
        """Box growth per side when cropping, detected and given boxes alike (as trained)."""
        return self.bundle.manifest.box_padding

    def locate(
        self, images: Sequence[Image.Image], boxes: Sequence[Box | None] | None = None
    ) -> list[Crop | None]:
        """Where to crop each photo: the given boxes (confidence 1), else the detector's, else
        nowhere (whole photo)."""
        if boxes is not None:
            if len(boxes) != len(images):
                raise ValueError(f"{len(boxes)} boxes for {len(images)} images")
            return [None if b is None else Crop(box=tuple(b), confidence=1.0) for b in boxes]  # type: ignore[arg-type]
        if self.bundle.detector is None or not images:
            return [None] * len(images)
        return list(self.bundle.detector.detect(list(images)))

    def embed_crops(self, crops: Sequence[Image.Image]) -> np.ndarray:
        """Cropped photos → (N, embedding_dim) ensemble embeddings, one ORT call per member."""
        if not crops:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        # Members trained at the same input size and normalisation share one preprocessed batch.
        batches: dict[EmbedTransform, np.ndarray] = {}
        parts = []
        for member in self.bundle.embedders:
            transform = member.spec.transform
            if transform not in batches:
                batches[transform] = to_batch(crops, transform)
            parts.append(member.embed_batch(batches[transform]))
        weights = [member.spec.weight for member in self.bundle.embedders]
        return combine(parts, weights)

    @property
    def has_matcher(self) -> bool:
        return self.bundle.extractor is not None

    def embed(
        self,
        images: Sequence[Image.Image],
        boxes: Sequence[Box | None] | None = None,
        *,
        local: bool = True,
    ) -> Embedded:
        """Detect (unless `boxes` are given) → crop with padding → embed every member (flip TTA
        where the manifest says) → weighted concat → L2 norm; and, when the bundle has a
        matcher and `local`, the keypoints of the same crops."""
        located = self.locate(images, boxes)
        padding = self.padding
        boxes_used = [None if c is None else c.box for c in located]
        crops = [crop_box(img, b, padding) for img, b in zip(images, boxes_used, strict=True)]
        features = None
        if local and self.bundle.extractor is not None:
            # Where each crop's corner sits in its photo, as crop_box cut it.
            origins = [
                (0.0, 0.0) if b is None else tuple(map(float, pad_box(b, padding, img.size)[:2]))
                for img, b in zip(images, boxes_used, strict=True)
            ]
            features = self.bundle.extractor.extract(crops, origins)  # type: ignore[arg-type]
        return Embedded(vectors=self.embed_crops(crops), crops=located, local=features)
