"""Find the fin (fluke, body) in photos with the bundle's ONNX detector, onnxruntime only.

The model is ultralytics' own ONNX export with NMS inside (`training/detector/export.py`):
input `images`, float32 (N, 3, S, S), RGB in [0, 1], letterboxed by `app.preprocess.letterbox`;
output (N, max_det, 6) rows `x1, y1, x2, y2, confidence, class` in letterboxed pixels, padded
with zero rows. One photo gives at most one crop: the most confident box of any class in the
manifest, if it reaches the manifest's minimum confidence; otherwise None, and the caller uses
the whole photo (`app.preprocess.crop_box(img, None)` does exactly that).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from app.manifest import BundleError, DetectorSpec
from app.preprocess import Crop, Letterbox, letterbox
from app.sessions import open_session
from gallery.batches import chunks

__all__ = ["OnnxDetector", "best_crop"]


class OnnxDetector:
    """A loaded detector: photos in, one `Crop` (or None for the whole photo) per photo out."""

    def __init__(
        self,
        path: Path,
        spec: DetectorSpec,
        providers: Sequence[str] | None = None,
        *,
        spinning: bool = False,
    ):
        self.path = Path(path)
        self.spec = spec
        if not self.path.is_file():
            raise BundleError(f"detector model {self.path} not found")
        self._session = open_session(self.path, providers, spinning=spinning)
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        batch_dim, _, height, width = model_input.shape
        for side in (height, width):
            if isinstance(side, int) and side != spec.input_size:
                raise BundleError(
                    f"detector model {self.path} takes {height}x{width} inputs but the manifest "
                    f"says input_size {spec.input_size}: re-export the bundle"
                )
        # A fixed batch axis must be fed exactly that many images (padded when fewer). A dynamic
        # one still has a ceiling: ultralytics' embedded NMS is a loop unrolled at export time
        # over `batch` images (its metadata), and images past it would come back empty.
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) else None
        meta = self._session.get_modelmeta().custom_metadata_map
        if self._fixed_batch is not None:
            self.max_batch = self._fixed_batch
        else:
            self.max_batch = max(1, int(meta.get("batch", "1")))

    @property
    def dynamic_batch(self) -> bool:
        """Whether one run takes a batch of any size up to `max_batch`."""
        return self._fixed_batch is None

    def detect(self, images: Sequence[Image.Image]) -> list[Crop | None]:
        """The best box of each photo in original-photo pixels, or None (use the whole photo)."""
        crops: list[Crop | None] = []
        for chunk in chunks(list(images), self.max_batch):
            inputs, placements = zip(
                *(letterbox(img, self.spec.input_size) for img in chunk), strict=True
            )
            batch = np.stack(inputs)
            if self._fixed_batch is not None and len(chunk) < self._fixed_batch:
                fill = np.zeros((self._fixed_batch - len(chunk), *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, fill])
            (detections,) = self._session.run(None, {self._input_name: batch})[:1]
            crops += [
                best_crop(rows, placement, self.spec.confidence)
                for rows, placement in zip(detections, placements, strict=False)
            ]
        return crops


def best_crop(rows: np.ndarray, placement: Letterbox, confidence: float) -> Crop | None:
    """One photo's answer from its detections (rows `x1, y1, x2, y2, confidence, class` in
    letterboxed pixels): the most confident box in original-photo pixels, or None when it is
    below `confidence` or lies wholly in the padding."""
    if len(rows) == 0:
        return None
    top = int(np.argmax(rows[:, 4]))
    found = float(rows[top, 4])
    # Zero rows are padding, so a threshold of 0 must still refuse a zero-confidence row.
    if found < confidence or found <= 0.0:
        return None
    x1, y1, x2, y2 = (float(v) for v in placement.unmap(rows[top : top + 1, :4])[0])
    if x2 - x1 < 1.0 or y2 - y1 < 1.0:  # a box wholly in the padding: nothing to crop
        return None
    return Crop(box=(x1, y1, x2, y2), confidence=found)
