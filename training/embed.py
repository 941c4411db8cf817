"""Photos → L2-normalised embeddings with a torch embedder, as serving computes them.

Preprocessing is app.preprocess (the transform and, for flip TTA, `hflip` of the normalised
batch), and flip TTA averages the two normalised embeddings and normalises again, so these
vectors are the ones the exported ONNX embedder gives for the same photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from app.decode import open_image
from app.preprocess import EmbedTransform, embed_with_flip, l2_normalize, to_batch
from gallery.batches import chunks
from training.catalogue import Photo, read_photo

__all__ = ["ImageSource", "embed_images"]

ImageSource = Image.Image | Photo | str | Path


def _load(item: ImageSource, padding: float) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, Photo):
        return read_photo(item, padding)
    return open_image(item)


@torch.inference_mode()
def _forward(model: nn.Module, batch: np.ndarray, device: torch.device) -> np.ndarray:
    x = torch.from_numpy(batch).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x).float().cpu().numpy()


def embed_images(
    model: nn.Module,
    images: Sequence[ImageSource],
    transform: EmbedTransform,
    *,
    flip_tta: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    padding: float = 0.0,
) -> np.ndarray:
    """(N, D) float32 L2-normalised embeddings.

    `images` are PIL crops, catalogue Photos (decoded and cropped to their box grown by
    `padding`) or paths (the whole photo). The model is put in eval mode.
    """
    device = torch.device(device)
    model.eval()

    def forward(batch: np.ndarray) -> np.ndarray:
        return _forward(model, batch, device)

    parts = []
    for items in chunks(images, batch_size):
        batch = to_batch([_load(item, padding) for item in items], transform)
        parts.append(embed_with_flip(forward, batch) if flip_tta else l2_normalize(forward(batch)))
    if not parts:
        dim = int(getattr(model, "embedding_size", 0))
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(parts)
