"""Decode photo bytes into an upright RGB image, refusing what we cannot or should not read.

Both sides use this: the service for uploads and training for catalogue photos, so a photo is
seen the same way when it is trained on, registered and queried.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from gallery.errors import WhaleidError

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "ImageTooLargeError",
    "PhotoInfo",
    "UnreadableImageError",
    "UnsupportedImageTypeError",
    "decode_image",
    "open_image",
    "photo_info",
    "quick_to_decode",
]

# MPO is how Pillow names the JPEGs many cameras write (a JPEG with extra frames).
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "TIFF"})
DEFAULT_MAX_PIXELS = 100_000_000
# Large JPEGs are decoded at a reduced scale (libjpeg's DCT scaling, nearly free) as long as the
# longer side stays at least this big: more pixels than any detector or embedder input needs.
DEFAULT_DRAFT_SIDE = 2048
# A JPEG of at most this many bytes decodes in about 20 ms at most on a 2-core host (measured:
# 1 MB of noisy 1600x1200, 20 ms; a 24-megapixel camera photo of 8 MB takes 90 ms even
# DCT-scaled). Other types can take seconds for few bytes: a PNG of one flat colour packs a
# hundred megapixels into kilobytes.
QUICK_DECODE_BYTES = 1024 * 1024
_JPEG_SIGNATURE = b"\xff\xd8\xff"


class UnreadableImageError(WhaleidError):
    """The bytes are not a complete image of a type we read (HTTP 400)."""


class UnsupportedImageTypeError(WhaleidError):
    """A real image, but of a type we do not accept (HTTP 415)."""


class ImageTooLargeError(WhaleidError):
    """More pixels than allowed: refused before decoding (HTTP 413)."""


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_side: int | None = DEFAULT_DRAFT_SIDE,
    name: str = "image",
) -> Image.Image:
    """Decode `data` into an RGB image with EXIF orientation applied.

    Raises UnreadableImageError, UnsupportedImageTypeError or ImageTooLargeError, each with a
    message naming `name`.
    """
    if not data:
        raise UnreadableImageError(f"{name} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{name} has too many pixels ({exc})") from exc
    except (UnidentifiedImageError, ImportError, OSError, SyntaxError, ValueError) as exc:
        # ImportError: ultralytics, when loaded in the same process (training), patches
        # Image.open to fetch a HEIF plugin on unidentified files; offline that import fails.
        # OSError & co: a header cut short fails while Pillow is still reading it.
        raise UnreadableImageError(f"{name} is not an image we can read") from exc
    if img.format not in ACCEPTED_FORMATS:
        accepted = ", ".join(sorted(ACCEPTED_FORMATS - {"MPO"}))
        raise UnsupportedImageTypeError(f"{name} is {img.format}; accepted types are {accepted}")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    if draft_side and img.format in ("JPEG", "MPO") and max(width, height) > draft_side:
        scale = draft_side / max(width, height)
        img.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{name} is truncated or corrupt ({exc})") from exc
    # In place: otherwise Pillow copies every photo that is already upright (most of them).
    ImageOps.exif_transpose(img, in_place=True)
    return to_rgb(img)


def quick_to_decode(data: bytes) -> bool:
    """Whether these bytes decode in a bounded, short time: a JPEG of at most
    QUICK_DECODE_BYTES (decided from the signature, before Pillow reads anything)."""
    return data.startswith(_JPEG_SIGNATURE) and len(data) <= QUICK_DECODE_BYTES


def open_image(path: str | Path, **kwargs: object) -> Image.Image:
    """Read and decode a photo from disk (same rules as uploads)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UnreadableImageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return decode_image(data, name=str(path), **kwargs)  # type: ignore[arg-type]


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: CMYK, palette, alpha, 16-bit and float included."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent areas become mid grey: neither fin-dark nor sky-bright.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    arr = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        scaled = arr / 65535.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    grey = Image.fromarray(np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return grey.convert("RGB")


@dataclass(frozen=True)
class PhotoInfo:
    """What a stored photo is, read from its header alone: its HTTP media type and its size
    upright (EXIF orientation applied, as decode_image turns it)."""

    media_type: str
    width: int
    height: int


_MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png"}
# EXIF orientations 5-8 turn the photo a quarter: width and height swap.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def photo_info(data: bytes, *, name: str = "image") -> PhotoInfo:
    """The media type and upright size of a photo, without decoding its pixels."""
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(f"{name} is not an image we can read") from exc
    fmt = img.format or ""
    if fmt not in ACCEPTED_FORMATS:
        raise UnsupportedImageTypeError(f"{name} is {fmt or 'of an unknown type'}")
    width, height = img.size
    if img.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS:
        width, height = height, width
    return PhotoInfo(_MEDIA_TYPES.get(fmt, f"image/{fmt.lower()}"), width, height)
