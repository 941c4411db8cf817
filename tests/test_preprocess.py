"""The shared preprocessing: numbers, layout, flips, boxes and letterboxing."""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.preprocess import EmbedTransform, crop_box, hflip, letterbox, pad_box, to_batch


def test_normalisation_is_rgb_chw_scaled_and_standardised() -> None:
    img = Image.new("RGB", (8, 6), (255, 0, 128))
    transform = EmbedTransform(input_size=(6, 8), mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    arr = transform(img)
    assert arr.shape == (3, 6, 8) and arr.dtype == np.float32
    expected = [(1 - 0.5) / 0.25, (0 - 0.5) / 0.5, 128 / 255 - 0.5]
    np.testing.assert_allclose(arr[:, 0, 0], expected, atol=1e-6)


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
