"""Training augmentations: the seeds' list, each with a configurable probability and size.

They act on the resized crop (PIL in, PIL out) between EmbedTransform.resize and
EmbedTransform.normalize, so serving's preprocessing is exactly training's minus these.
Every random draw comes from the generator passed in, seeded per (run seed, epoch, photo): a
photo gets the same augmentation whichever process or worker loads it, which keeps resumed and
multi-process runs equal to a single uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageFilter

from training.config import AugmentConfig

__all__ = ["augment", "augment_flipped", "grid_shuffle"]


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _resized_crop(
    img: Image.Image,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> Image.Image:
    """RandomResizedCrop's sampling (10 tries, then the whole image), back to the same size."""
    width, height = img.size
    area = width * height
    log_ratio = np.log(ratio)
    for _ in range(10):
        target = area * _uniform(rng, *scale)
        aspect = float(np.exp(rng.uniform(log_ratio[0], log_ratio[1])))
        w = round(np.sqrt(target * aspect))
        h = round(np.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return TF.resized_crop(img, top, left, h, w, [height, width], antialias=True)
    return img


def grid_shuffle(pixels: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """Cut an (H, W, C) array into grid × grid cells and put them back in random order."""
    height, width = pixels.shape[:2]
    ys = np.linspace(0, height, grid + 1).astype(int)
    xs = np.linspace(0, width, grid + 1).astype(int)
    cells = [(ys[i], ys[i + 1], xs[j], xs[j + 1]) for i in range(grid) for j in range(grid)]
    out = pixels.copy()
    # Cells only swap with cells of the same shape, so uneven edges never distort.
    shapes: dict[tuple[int, int], list[int]] = {}
    for n, (y0, y1, x0, x1) in enumerate(cells):
        shapes.setdefault((y1 - y0, x1 - x0), []).append(n)
    for members in shapes.values():
        for dst, src in zip(members, rng.permutation(members), strict=True):
            y0, y1, x0, x1 = cells[dst]
            sy0, sy1, sx0, sx1 = cells[int(src)]
            out[y0:y1, x0:x1] = pixels[sy0:sy1, sx0:sx1]
    return out


def augment(img: Image.Image, cfg: AugmentConfig, rng: np.random.Generator) -> Image.Image:
    """One random augmentation of a resized RGB crop; the size stays the same."""
    return augment_flipped(img, cfg, rng)[0]


def augment_flipped(
    img: Image.Image, cfg: AugmentConfig, rng: np.random.Generator, *, may_flip: bool = True
) -> tuple[Image.Image, bool]:
    """augment, and whether the crop was flipped horizontally (never when not `may_flip`: a
    photo whose flip would fake another viewpoint). The flip is drawn either way, so the other
    draws stay the same whatever `may_flip` is."""
    width, height = img.size
    if rng.random() < cfg.resized_crop.p:
        img = _resized_crop(img, cfg.resized_crop.scale, cfg.resized_crop.ratio, rng)
    if rng.random() < cfg.affine.p:
        a = cfg.affine
        img = TF.affine(
            img,
            angle=_uniform(rng, -a.degrees, a.degrees),
            translate=[
                round(_uniform(rng, -a.translate, a.translate) * width),
                round(_uniform(rng, -a.translate, a.translate) * height),
            ],
            scale=1.0,
            shear=[_uniform(rng, -a.shear, a.shear), _uniform(rng, -a.shear, a.shear)],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
    flipped = rng.random() < cfg.hflip_p and may_flip
    if flipped:
        img = TF.horizontal_flip(img)
    if rng.random() < cfg.color.p:
        c = cfg.color
        img = TF.adjust_brightness(img, _uniform(rng, 1 - c.brightness, 1 + c.brightness))
        img = TF.adjust_contrast(img, _uniform(rng, max(0.0, 1 - c.contrast), 1 + c.contrast))
    if rng.random() < cfg.gray_p:
        img = TF.rgb_to_grayscale(img, num_output_channels=3)
    if rng.random() < cfg.blur.p:
        img = img.filter(ImageFilter.GaussianBlur(radius=_uniform(rng, *cfg.blur.sigma)))
    noisy = rng.random() < cfg.noise.p
    shuffled = rng.random() < cfg.grid_shuffle.p
    if noisy or shuffled:
        pixels = np.asarray(img, dtype=np.float32)
        if noisy:
            std = _uniform(rng, *cfg.noise.std) * 255.0
            pixels = pixels + rng.normal(0.0, std, size=pixels.shape).astype(np.float32)
        if shuffled:
            pixels = grid_shuffle(pixels, cfg.grid_shuffle.grid, rng)
        img = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
    return img, flipped
