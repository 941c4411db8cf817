"""The shared preprocessing: numbers, layout, flips, boxes and letterboxing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from app.preprocess import (
    MAX_ASPECT,
    MIN_SIDE,
    EmbedTransform,
    UnusablePhotoError,
    check_photo,
    crop_box,
    hflip,
    letterbox,
    pad_box,
    to_batch,
)


def test_normalisation_is_rgb_chw_scaled_and_standardised() -> None:
    img = Image.new("RGB", (8, 6), (255, 0, 128))
    transform = EmbedTransform(input_size=(6, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    arr = transform(img)
    assert arr.shape == (3, 6, 8) and arr.dtype == np.float32
    expected = [(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, 128 / 255 - 0.5]
    np.testing.assert_allclose(arr[:, 0, 0], expected, atol=1e-6)


def test_normalisation_is_the_float32_formula_to_the_bit() -> None:
    """Training and serving normalise with one function: whatever makes it fast, each value is
    float32 (x / 255 - mean) / std exactly, or stored gallery embeddings would drift."""
    rng = np.random.default_rng(7)
    transform = EmbedTransform(input_size=(37, 53))
    mean = np.asarray(transform.mean, dtype=np.float32)
    std = np.asarray(transform.std, dtype=np.float32)
    for mode in ("RGB", "L", "RGBA"):
        pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).convert(mode)
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
        expected = ((rgb / np.float32(255.0) - mean) / std).transpose(2, 0, 1)
        actual = transform.normalize(img)
        assert actual.dtype == np.float32 and actual.flags.c_contiguous
        np.testing.assert_array_equal(actual, expected)


def test_resize_and_batch() -> None:
    transform = EmbedTransform(input_size=(32, 48))
    batch = to_batch([Image.new("RGB", (100, 50)), Image.new("RGB", (7, 9))], transform)
    assert batch.shape == (2, 3, 32, 48)
    assert to_batch([], transform).shape == (0, 3, 32, 48)


def test_hflip_is_a_mirror_and_an_involution() -> None:
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(hflip(x)[..., 0], x[..., -1])
    np.testing.assert_array_equal(hflip(hflip(x)), x)


def test_pad_box_grows_and_clips() -> None:
    assert pad_box((10, 20, 30, 60), 0.5, (100, 100)) == (0, 0, 40, 80)
    assert pad_box((90, 90, 99, 99), 1.0, (100, 100)) == (81, 81, 100, 100)
    img = Image.new("RGB", (100, 100))
    assert crop_box(img, (10, 20, 30, 60), 0.0).size == (20, 40)
    assert crop_box(img, None).size == (100, 100)


def test_letterbox_round_trip() -> None:
    img = Image.new("RGB", (400, 200), (10, 20, 30))
    arr, placement = letterbox(img, 320)
    assert arr.shape == (3, 320, 320) and arr.min() >= 0 and arr.max() <= 1
    assert placement.scale == 0.8 and placement.pad_y == 80 and placement.pad_x == 0
    np.testing.assert_allclose(arr[:, 160, 160] * 255, [10, 20, 30], atol=1e-4)
    np.testing.assert_allclose(arr[:, 10, 160] * 255, [114, 114, 114], atol=1e-4)
    box = np.array([[0 * 0.8, 80 + 50 * 0.8, 200 * 0.8, 80 + 150 * 0.8]])
    np.testing.assert_allclose(placement.unmap(box), [[0, 50, 200, 150]], atol=1e-4)


def test_letterbox_keeps_a_pixel_of_a_sliver() -> None:
    # 10000 x 8 scales by 0.064 to 640 x 0.5: the short side keeps one row, not zero.
    img = Image.new("RGB", (10000, 8), (200, 10, 10))
    arr, placement = letterbox(img, 640)
    assert arr.shape == (3, 640, 640)
    rows = np.flatnonzero(np.abs(arr[0, :, 320] * 255 - 200) < 1e-3)
    assert len(rows) == 1 and placement.size == (10000, 8)


def one_bilinear_resize(img: Image.Image, size: int) -> np.ndarray:
    """The letterbox by its definition: the photo resized once, bilinearly, centred on grey,
    divided by 255 as float32."""
    scale = min(size / img.width, size / img.height)
    new_w, new_h = round(img.width * scale), round(img.height * scale)
    canvas = Image.new("RGB", (size, size), (114, 114, 114))
    resized = img if (new_w, new_h) == img.size else img.resize((new_w, new_h), Image.BILINEAR)
    canvas.paste(resized, (round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)))
    return np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)


@pytest.mark.parametrize(
    ("photo", "side"), [((512, 384), 160), ((400, 200), 320), ((90, 300), 160)]
)
def test_letterbox_below_a_threefold_downscale_is_one_bilinear_resize_to_the_bit(
    photo: tuple[int, int], side: int
) -> None:
    img = noisy(*photo)
    arr, _ = letterbox(img, side)
    assert arr.flags.c_contiguous and arr.dtype == np.float32
    np.testing.assert_array_equal(arr, one_bilinear_resize(img, side))


def test_letterbox_of_a_camera_photo_stays_within_grey_levels_of_a_fair_resize() -> None:
    # A 12-megapixel photo to 160 px is a 25x downscale: blocks are averaged first, then the
    # last 3x resampled. Content with detail at every scale: gradients, texture and noise.
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:3000, 0:4000].astype(np.float32)
    texture = 40 * np.sin(x / 7.0) * np.cos(y / 11.0)
    base = np.stack([x / 16 % 256, y / 12 % 256, (x + y) / 28 % 256], axis=-1)
    pixels = base + texture[..., None] + rng.normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    arr, placement = letterbox(img, 160)
    fair = one_bilinear_resize(img, 160)
    difference = np.abs(arr - fair) * 255
    assert difference.mean() < 0.5 and difference.max() <= 3.0
    assert (placement.scale, placement.pad_x, placement.pad_y) == (0.04, 0, 20)


def noisy(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(width * 7 + height)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    ("size", "reason"),
    [
        ((1, 1), "too small"),
        ((MIN_SIDE - 1, 400), "too small"),
        ((10000, 20), "too narrow"),
        ((int(MIN_SIDE * MAX_ASPECT) + 1, MIN_SIDE), "too narrow"),
    ],
)
def test_photos_too_small_or_too_narrow_are_refused_with_the_reason(
    size: tuple[int, int], reason: str
) -> None:
    with pytest.raises(UnusablePhotoError, match=reason) as refused:
        check_photo(noisy(*size), "fin.jpg")
    assert "fin.jpg" in str(refused.value) and f"{size[0]}x{size[1]}" in str(refused.value)


def test_a_flat_photo_has_no_usable_pixels() -> None:
    for mode, colour in (("RGB", (40, 90, 140)), ("L", 7)):
        with pytest.raises(UnusablePhotoError, match="no usable pixels"):
            check_photo(Image.new(mode, (300, 200), colour))  # type: ignore[arg-type]


def test_photos_at_the_limits_are_usable() -> None:
    check_photo(noisy(MIN_SIDE, MIN_SIDE))
    check_photo(noisy(int(MIN_SIDE * MAX_ASPECT), MIN_SIDE))
    check_photo(noisy(MIN_SIDE, int(MIN_SIDE * MAX_ASPECT)))
    almost_flat = Image.new("RGB", (300, 200), (40, 90, 140))
    almost_flat.putpixel((5, 5), (41, 90, 140))
    check_photo(almost_flat)
