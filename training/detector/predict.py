"""The trained detector through ultralytics (torch): the reference the ONNX path is held to.

Same contract as `app.detector.OnnxDetector.detect`: one `Crop` (the most confident box of any
class, in original-photo pixels) or None per photo. Photos are letterboxed by
`app.preprocess.letterbox`, as serving does, and handed to ultralytics as a ready tensor: its
own preprocessing (a minimal rectangle, cv2 resizing) gives a slightly different input, and a
briefly trained detector can move its box by more than parity allows on such a difference.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from app.preprocess import Crop, letterbox
from training.detector import yolo

__all__ = ["TorchDetector"]


class TorchDetector:
    def __init__(
        self, weights: Path, *, imgsz: int, confidence: float, device: str | None = None
    ) -> None:
        self.imgsz = imgsz
        self.confidence = confidence
        self.device = device
        self._model = yolo.load().YOLO(str(weights), task="detect")

    @property
    def class_names(self) -> list[str]:
        names = self._model.names
        return [names[i] for i in sorted(names)]

    def detect(self, images: Sequence[Image.Image]) -> list[Crop | None]:
        """The best box of each photo (RGB PIL images, as `app.decode` gives them)."""
        if not images:
            return []
        import torch

        inputs, placements = zip(*(letterbox(img, self.imgsz) for img in images), strict=True)
        with yolo.offline():
            results = self._model.predict(
                torch.from_numpy(np.stack(inputs)),
                imgsz=self.imgsz,
                conf=self.confidence,
                device=self.device,
                max_det=10,
                verbose=False,
                save=False,
            )
        crops: list[Crop | None] = []
        for result, placement in zip(results, placements, strict=True):
            confidences = result.boxes.conf.cpu().numpy()
            if len(confidences) == 0:
                crops.append(None)
                continue
            top = int(np.argmax(confidences))
            box = placement.unmap(result.boxes.xyxy[top : top + 1].cpu().numpy())[0]
            x1, y1, x2, y2 = (float(v) for v in box)
            crops.append(Crop(box=(x1, y1, x2, y2), confidence=float(confidences[top])))
        return crops
