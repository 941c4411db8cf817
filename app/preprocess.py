"""The one preprocessing that training (torch) and serving (onnxruntime) both use.

Every number here travels in the bundle manifest, so the exported model is fed exactly what it
was trained on: crop with padding, resize, RGB channel order, scale to [0, 1], normalise, CHW.
Flip TTA is a horizontal flip of the normalised array, and the embeddings of a photo and its
mirror are averaged the one way `embed_with_flip` does, for the torch and the ONNX embedders alike.
The detector uses letterboxing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from gallery.errors import WhaleidError
from gallery.records import Box

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LETTERBOX_REDUCING_GAP",
    "MAX_ASPECT",
    "MIN_SIDE",
    "Box",
    "Crop",
    "EmbedTransform",
    "Letterbox",
    "UnusablePhotoError",
    "check_photo",
    "crop_box",
    "embed_with_flip",
    "hflip",
    "l2_normalize",
    "letterbox",
    "pad_box",
    "to_batch",
    "to_chw",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LETTERBOX_FILL = 114  # the grey ultralytics pads with; the detector was trained on it
# A downscale of 3x or more first averages whole blocks of pixels (Image.reduce), then resamples
# the last 3x or more bilinearly: the setting Pillow documents as indistinguishable from a fair
# resize in most cases. A 4000 x 3000 camera photo letterboxes to 160 px 3-4x faster, with
# boxes as close to the truth (bench/large_photos.py); smaller downscales are the same to the bit.
LETTERBOX_REDUCING_GAP = 3.0

# What a photo must have for the detector and the embedders to see an animal in it. Below 16 px
# a side nothing is left to crop (a padded box of a 16 px fin is already smaller than any
# embedder's input by 5x); past 20:1 the detector's letterbox squeezes the short side to a
# sliver of 32 px of 640 and the embedders' square resize stretches it 20-fold.
MIN_SIDE = 16
MAX_ASPECT = 20.0

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class EmbedTransform(BaseModel):
    """How a crop becomes an embedder input. Stored per embedder in the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_size: tuple[int, int] = Field((224, 224), description="(height, width) in pixels")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def resize(self, img: Image.Image) -> Image.Image:
        """Resize (aspect not kept, as the competition models were trained) to input_size."""
        height, width = self.input_size
        if img.size == (width, height):
            return img
        return img.resize((width, height), _RESAMPLE[self.interpolation])

    def normalize(self, img: Image.Image) -> np.ndarray:
        """An RGB image of input_size → float32 CHW array, scaled and normalised."""
        return to_chw(img, self.mean, self.std)

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.normalize(self.resize(img))


def to_chw(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """RGB image → float32 (3, H, W): x / 255, minus mean, over std."""
    # Planes first, while still bytes, then the arithmetic in place: the same float32
    # operations as on the (H, W, 3) array, so the same bits, about 4x faster per crop
    # (bench/steps.py; numpy's broadcast of an (H, W, 3) array against 3 values is slow).
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    pixels = np.ascontiguousarray(np.asarray(rgb).transpose(2, 0, 1))
    planes = pixels.astype(np.float32)
    planes /= np.float32(255.0)
    planes -= np.asarray(mean, dtype=np.float32)[:, None, None]
    planes /= np.asarray(std, dtype=np.float32)[:, None, None]
    return planes


def to_batch(images: Sequence[Image.Image], transform: EmbedTransform) -> np.ndarray:
    """Crops → float32 (N, 3, H, W) batch for an embedder."""
    if not images:
        height, width = transform.input_size
        return np.zeros((0, 3, height, width), dtype=np.float32)
    return np.stack([transform(img) for img in images])


def hflip(batch: np.ndarray) -> np.ndarray:
    """Horizontal flip of a (..., H, W) array: the flip of flip TTA."""
    return np.ascontiguousarray(batch[..., ::-1])


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)


def embed_with_flip(embed: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """Flip TTA: `embed` ((N, 3, H, W) → (N, D)) runs once on the batch and its mirror
    together; the two normalised embeddings of each photo are averaged and normalised again."""
    n = batch.shape[0]
    both = l2_normalize(embed(np.concatenate([batch, hflip(batch)], axis=0)))
    return l2_normalize(both[:n] + both[n:])


def pad_box(box: Box, padding: float, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Grow a box by `padding` × its width/height on each side, clipped to `size` = (W, H)."""
    x1, y1, x2, y2 = box
    width, height = size
    dx, dy = (x2 - x1) * padding, (y2 - y1) * padding
    left = int(np.clip(np.floor(x1 - dx), 0, width - 1))
    top = int(np.clip(np.floor(y1 - dy), 0, height - 1))
    right = int(np.clip(np.ceil(x2 + dx), left + 1, width))
    bottom = int(np.clip(np.ceil(y2 + dy), top + 1, height))
    return left, top, right, bottom


def crop_box(img: Image.Image, box: Box | None, padding: float = 0.0) -> Image.Image:
    """The padded box of the photo, or the whole photo when there is no box."""
    if box is None:
        return img
    return img.crop(pad_box(box, padding, img.size))


@dataclass(frozen=True)
class Crop:
    """The box a photo was cropped to (original-photo pixels) and the detector's confidence
    (1 for a given box)."""

    box: Box
    confidence: float


class Letterbox(BaseModel):
    """Where a photo went inside the square detector input, to map boxes back."""

    model_config = ConfigDict(frozen=True)

    scale: float
    pad_x: float
    pad_y: float
    size: tuple[int, int]  # the original photo's (W, H)

    def unmap(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) x1y1x2y2 in letterboxed pixels → original-photo pixels, clipped."""
        out = boxes.astype(np.float32).copy()
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.scale
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.scale
        width, height = self.size
        out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
        out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
        return out


def letterbox(img: Image.Image, size: int) -> tuple[np.ndarray, Letterbox]:
    """Fit the photo in a `size`² square keeping its aspect, centred, grey padding.

    Returns float32 (3, size, size) in [0, 1] RGB, as ultralytics feeds its exported models,
    and the Letterbox to map predicted boxes back onto the photo. Any photo of at least a pixel
    fits: a side that would round to nothing keeps one pixel.
    """
    width, height = img.size
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pad_x, pad_y = (size - new_w) / 2, (size - new_h) / 2
    left, top = round(pad_x - 0.1), round(pad_y - 0.1)
    canvas = Image.new("RGB", (size, size), (LETTERBOX_FILL,) * 3)
    # convert() copies even an RGB photo, and decoded photos are RGB already.
    resized = img if img.mode == "RGB" else img.convert("RGB")
    if (new_w, new_h) != (width, height):
        resized = resized.resize(
            (new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=LETTERBOX_REDUCING_GAP
        )
    canvas.paste(resized, (left, top))
    # Planes first, while still bytes, then one division in place: the same float32 bits as
    # dividing the (H, W, 3) array, without its strided copy.
    planes = np.ascontiguousarray(np.asarray(canvas).transpose(2, 0, 1)).astype(np.float32)
    planes /= np.float32(255.0)
    return planes, Letterbox(scale=scale, pad_x=left, pad_y=top, size=(width, height))


class UnusablePhotoError(WhaleidError):
    """A readable photo with nothing to identify in it: too small, too narrow or one flat colour
    (HTTP 422). The photo is at fault, not the server."""


def check_photo(img: Image.Image, name: str = "image") -> None:
    """Refuse, with the reason, a decoded photo that no crop of could show an animal.

    Serving checks each photo with this before it joins a batch, so a photo that cannot be
    used is refused alone and never reaches the models with others' photos.
    """
    width, height = img.size
    if min(width, height) < MIN_SIDE:
        raise UnusablePhotoError(
            f"{name} is {width}x{height} pixels: too small to crop; each side needs at least "
            f"{MIN_SIDE} pixels"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise UnusablePhotoError(
            f"{name} is {width}x{height} pixels: too narrow; the longer side may be at most "
            f"{MAX_ASPECT:g} times the shorter"
        )
    # Pillow's extrema copy out each band of the whole photo (a third of a JPEG's decoding
    # time). Two different pixels in a coarse sample already prove a photo is not one colour,
    # so only a photo whose sample is one colour (nearly always one that is) is read in full.
    sample = img.resize(_UNIFORM_SAMPLE, Image.Resampling.NEAREST)
    if _one_colour(sample) and _one_colour(img):
        raise UnusablePhotoError(f"{name} has no usable pixels: every pixel is the same colour")


_UNIFORM_SAMPLE = (32, 32)


def _one_colour(img: Image.Image) -> bool:
    extrema = img.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return all(low == high for low, high in bands)  # type: ignore[misc]
