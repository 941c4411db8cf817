"""Photo → crop → ensemble embedding, with onnxruntime only.

The one pipeline that `whaleid predict`, `whaleid gallery import/reembed` and the service all
use, so batch and service answers agree exactly. (Interface fixed here; the implementation
lands with the bundle issue.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.preprocess import Box

__all__ = ["Crop", "Embedded"]


@dataclass(frozen=True)
class Crop:
    """The box a photo was cropped to (original-photo pixels) and the detector's confidence."""

    box: Box
    confidence: float


@dataclass(frozen=True)
class Embedded:
    """Embeddings of a batch of photos: (N, D) float32, L2-normalised, and each photo's crop
    (None where the whole photo was used)."""

    vectors: np.ndarray
    crops: list[Crop | None]
