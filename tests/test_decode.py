"""Decoding: formats, modes, orientation and the limits that protect the service."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.uploads import bomb_png, encode, exif_rotated
from PIL import Image

from app.decode import (
    QUICK_DECODE_BYTES,
    ImageTooLargeError,
    UnreadableImageError,
    UnsupportedImageTypeError,
    decode_image,
    quick_to_decode,
)


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    img = decode_image(encode(gradient(), fmt))
    assert img.mode == "RGB" and img.size == (64, 48)


def test_gif_is_unsupported() -> None:
    with pytest.raises(UnsupportedImageTypeError, match="GIF"):
        decode_image(encode(gradient(), "GIF"))


@pytest.mark.parametrize("data", [b"", b"hello, this is text", b"\x00" * 100])
def test_garbage_is_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableImageError):
        decode_image(data)


def test_header_cut_short_is_unreadable() -> None:
    data = encode(gradient(), "PNG")
    for size in (9, 20, 33):
        with pytest.raises(UnreadableImageError):
            decode_image(data[:size])


def test_truncated_jpeg_is_unreadable() -> None:
    data = encode(gradient(256, 256), "JPEG")
    with pytest.raises(UnreadableImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_is_checked_before_decoding() -> None:
    data = encode(gradient(200, 100), "PNG")
    with pytest.raises(ImageTooLargeError, match="20,000"):
        decode_image(data, max_pixels=19_999)


def test_decompression_bomb_is_refused() -> None:
    data = bomb_png(40_000, 40_000)
    assert len(data) < 10_000
    with pytest.raises(ImageTooLargeError):
        decode_image(data)


def test_cmyk_palette_alpha_and_16_bit_become_rgb() -> None:
    cmyk = decode_image(encode(gradient().convert("CMYK"), "JPEG"))
    palette = decode_image(encode(gradient().convert("P"), "PNG"))
    rgba = gradient().convert("RGBA")
    rgba.putalpha(0)
    transparent = decode_image(encode(rgba, "PNG"))
    deep = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16))
    sixteen = decode_image(encode(deep, "PNG"))
    for img in (cmyk, palette, transparent, sixteen):
        assert img.mode == "RGB" and img.size == (64, 48)
    assert np.asarray(transparent).std() == 0  # fully transparent → flat background
    assert np.asarray(sixteen)[..., 0].max() > 200  # 16-bit range scaled, not clipped to 255


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation: int) -> None:
    upright = gradient(64, 48)
    if orientation == 1:
        exif = Image.Exif()
        exif[0x0112] = 1
        stored = encode(upright, "JPEG", exif=exif, quality=95)
    else:
        stored = exif_rotated(upright, orientation)
    decoded = decode_image(stored)
    assert decoded.size == (64, 48) and decoded.mode == "RGB"
    diff = np.abs(np.asarray(decoded, dtype=int) - np.asarray(upright, dtype=int)).mean()
    assert diff < 6


def test_large_jpeg_is_draft_decoded() -> None:
    data = encode(gradient(4000, 3000), "JPEG")
    assert max(decode_image(data, draft_side=1000).size) >= 1000
    assert decode_image(data, draft_side=1000).size[0] < 4000
    assert decode_image(data, draft_side=None).size == (4000, 3000)


def test_only_jpegs_of_bounded_size_are_quick_to_decode() -> None:
    """The service lets an embedding worker decode a lone photo only when that is quick."""
    jpeg = encode(gradient(), "JPEG")
    assert quick_to_decode(jpeg)
    # A few KB of PNG can hold a hundred megapixels: never quick, whatever its size.
    assert not quick_to_decode(bomb_png(20_000, 20_000))
    assert not quick_to_decode(encode(gradient(), "PNG"))
    assert not quick_to_decode(jpeg + b"\0" * QUICK_DECODE_BYTES)
    assert not quick_to_decode(b"")


def test_garbage_is_unreadable_with_ultralytics_loaded() -> None:
    """Training processes import ultralytics, which patches Image.open to install a plugin on
    unidentified files; decoding must still answer UnreadableImageError, offline."""
    import subprocess
    import sys

    code = (
        "import ultralytics.utils.patches\n"
        "from app.decode import UnreadableImageError, decode_image\n"
        "try:\n    decode_image(b'hello, this is text')\n"
        "except UnreadableImageError:\n    print('ok')\n"
    )
    env = {"YOLO_AUTOINSTALL": "false", "YOLO_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]
