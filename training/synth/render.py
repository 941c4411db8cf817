"""Compose one photo of an individual's fin: placement, perspective, lighting, sea and sky.

An individual is drawn once, flat, into a canonical texture (`FinTexture`: shading with its marks,
the fin's alpha and the back's alpha). Each photo warps that texture into the frame with one
homography (scale, rotation, foreshortening, perspective), so the box is exactly the bounding box
of the same warped outline. Colour, light and background are drawn per photo, never per
individual, so mean colour says nothing about who is in the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from training.synth.shapes import Individual

__all__ = ["FinTexture", "Rendering", "fin_texture", "render_photo"]

PX_PER_UNIT = 256  # canonical resolution: a fin 1 unit high is 256 px, more than any photo needs
_SUPERSAMPLE = 2  # drawn at twice the size, then averaged down: antialiased edges
_BASE_SHADE = 128  # shading value meaning "the fin's own colour"; marks go above or below it
_SHADE_SCALE = 1 / _BASE_SHADE
_FIN_SCALE = (0.15, 0.7)  # fin height as a fraction of the frame's height


@dataclass(frozen=True)
class FinTexture:
    """An individual drawn flat. `image` is RGB: shading, fin alpha, back alpha (all 8-bit).
    `outline` is the fin silhouette in the texture's pixel coordinates."""

    image: Image.Image
    outline: np.ndarray


@dataclass(frozen=True)
class Rendering:
    image: np.ndarray  # (H, W, 3) uint8
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels, clipped to the frame
    fin_mask: np.ndarray  # (H, W) float32 in [0, 1]: the whole fin, before any occlusion


def _to_canvas(pts: np.ndarray, origin: tuple[float, float], scale: float) -> np.ndarray:
    """Fin units (v up) to canvas pixels (y down)."""
    return np.stack([(pts[:, 0] - origin[0]) * scale, (origin[1] - pts[:, 1]) * scale], axis=1)


def fin_texture(ind: Individual, *, mirrored: bool = False) -> FinTexture:
    """Draw `ind` flat: silhouette, marks and a stretch of back either side of the fin.
    `mirrored` draws it as seen from the other side (the far face of a fin: `other_side`)."""
    # The back is a low arc whose size follows the base alone: it adds no identity of its own.
    back_half, back_top = ind.base / 2 + 0.45, 0.1 + 0.05 * min(ind.base, 2.0)
    cx = ind.base / 2
    u0 = min(ind.outline[:, 0].min(), cx - back_half) - 0.05
    u1 = max(ind.outline[:, 0].max(), cx + back_half) + 0.05
    v0, v1 = -0.05, 1.05
    size = (int(np.ceil((u1 - u0) * PX_PER_UNIT)), int(np.ceil((v1 - v0) * PX_PER_UNIT)))
    origin = (u0, v1)

    def px(points: np.ndarray, scale: float = PX_PER_UNIT) -> list[tuple[float, float]]:
        return [(float(x), float(y)) for x, y in _to_canvas(np.asarray(points), origin, scale)]

    # Silhouettes are drawn supersampled and averaged down, for antialiased edges; the marks
    # inside are drawn at the final size (the photo is smaller still).
    big = (size[0] * _SUPERSAMPLE, size[1] * _SUPERSAMPLE)
    fin = Image.new("L", big, 0)
    ImageDraw.Draw(fin).polygon(px(ind.outline, PX_PER_UNIT * _SUPERSAMPLE), fill=255)
    fin = fin.reduce(_SUPERSAMPLE)
    back = Image.new("L", big, 0)
    arc = np.array([[cx - back_half, back_top], [cx + back_half, -back_top]])
    xy = [c for pt in px(arc, PX_PER_UNIT * _SUPERSAMPLE) for c in pt]
    ImageDraw.Draw(back).chord(xy, 180, 360, fill=255)
    back = back.reduce(_SUPERSAMPLE)

    shade = Image.new("L", size, _BASE_SHADE)
    draw = ImageDraw.Draw(shade)
    for p in ind.patches:
        # An ellipse at an angle: drawn as a polygon so it can rotate.
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        a = np.deg2rad(p.angle)
        e = np.stack([p.radii[0] * np.cos(t), p.radii[1] * np.sin(t)], axis=1)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        draw.polygon(px(e @ rot.T + np.array(p.centre)), fill=int(_BASE_SHADE * p.tone))
    # Pigment has soft edges; scars, drawn after the blur, stay crisp.
    shade = shade.filter(ImageFilter.BoxBlur(0.025 * PX_PER_UNIT))
    draw = ImageDraw.Draw(shade)
    for sc in ind.scars:
        tone = int(min(255, _BASE_SHADE * sc.tone))
        width = max(1, round(sc.width * PX_PER_UNIT))
        draw.line(px(np.array(sc.points)), fill=tone, width=width, joint="curve")
    # Marks exist only on the fin; the back keeps the plain colour.
    shade = Image.composite(shade, Image.new("L", size, _BASE_SHADE), fin)

    image = Image.merge("RGB", (shade, fin, back))
    outline = _to_canvas(ind.outline, origin, PX_PER_UNIT)
    if mirrored:
        image = ImageOps.mirror(image)
        outline = np.stack([size[0] - outline[:, 0], outline[:, 1]], axis=1)
    return FinTexture(image=image, outline=outline)


def _homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3×3 H with H @ [src, 1] ∝ [dst, 1] from four point pairs."""
    a = []
    b = []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        a.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        a.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        b += [u, v]
    h = np.linalg.solve(np.array(a, dtype=np.float64), np.array(b, dtype=np.float64))
    return np.append(h, 1.0).reshape(3, 3)


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ h.T
    return q[:, :2] / q[:, 2:3]


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: tuple[int, int]) -> np.ndarray:
    """Value noise: a coarse random grid upsampled bicubically, roughly in [-1, 1]."""
    return _grid_up(rng.standard_normal((max(2, cells[1]), max(2, cells[0]))), w, h)


def _place(
    rng: np.random.Generator, tex: FinTexture, w: int, h: int
) -> tuple[np.ndarray, np.ndarray]:
    """Choose the fin's pose; returns the homography texture→photo and the outline in the photo."""
    tw, th = tex.image.size
    fin_h = rng.uniform(*_FIN_SCALE) * h
    scale = fin_h / PX_PER_UNIT
    angle = np.deg2rad(np.clip(rng.normal(0, 7), -20, 20))
    # Seen from off the side the fin is foreshortened along the back; the far end recedes.
    squash = rng.uniform(0.7, 1.05)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    corners = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], dtype=np.float64)
    dst = (corners * [scale * squash, scale]) @ rot.T
    persp = rng.uniform(-0.12, 0.12) * fin_h
    dst[[1, 2], 1] += [persp, -persp]  # one end taller than the other
    dst += rng.normal(0, 0.02 * fin_h, size=dst.shape)
    hmat = _homography(corners, dst)
    outline = _apply(hmat, tex.outline)
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    size = hi - lo
    # Usually the whole fin is in frame; sometimes up to a quarter of it is cut off at an edge.
    slack = size * (0.25 if rng.random() < 0.12 else 0.0)
    shift = np.empty(2)
    for k, extent in enumerate((w, h)):
        low, high = -lo[k] - slack[k], extent - hi[k] + slack[k]
        shift[k] = rng.uniform(low, high) if high > low else (low + high) / 2
    move = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]])
    return move @ hmat, outline + shift


# Colours that real sea and sky photos have; each photo mixes a few, so hue varies but never
# leaves what water and sky look like (no purple seas).
_SKY = np.array(
    [[0.45, 0.65, 0.92], [0.78, 0.84, 0.9], [0.6, 0.63, 0.66], [0.92, 0.78, 0.62], [0.3, 0.45, 0.7]]
)
_WATER = np.array(
    [[0.05, 0.18, 0.32], [0.08, 0.28, 0.3], [0.28, 0.32, 0.35], [0.12, 0.22, 0.2], [0.2, 0.35, 0.5]]
)


def _mix(rng: np.random.Generator, palette: np.ndarray) -> np.ndarray:
    return rng.dirichlet(np.full(len(palette), 0.5)) @ palette


def _background(
    rng: np.random.Generator, w: int, h: int, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sky above `horizon` (a row, may be off-frame), water below; returns it and the water colour.

    Colour varies by row only and texture comes from one small grid upsampled once, so the
    (h, w, 3) image costs one resize and one product."""
    sky_top = _mix(rng, _SKY) * rng.uniform(0.75, 1.1)
    sky_low = np.clip(sky_top + rng.uniform(0.05, 0.25), 0, 1)
    water_far = _mix(rng, _WATER) * rng.uniform(0.8, 1.6)
    water_near = water_far * rng.uniform(0.5, 0.9)
    y = np.arange(h, dtype=np.float64)[:, None]
    is_sky = y < horizon
    depth = np.clip((y - horizon) / max(h - horizon, 1.0), 0, 1) ** 0.7
    sky = sky_top + (sky_low - sky_top) * np.clip(y / max(horizon, 1.0), 0, 1)
    rows = np.where(is_sky, sky, water_far + (water_near - water_far) * depth)

    # Texture on a coarse grid: waves stretched along the horizon and stronger near the camera,
    # a slow swell under them, soft clouds in the sky.
    gh = int(rng.integers(24, 56))
    gw = max(2, gh // 5)
    gy = (np.arange(gh) + 0.5) * h / gh
    g_depth = np.clip((gy - horizon) / max(h - horizon, 1.0), 0, 1)[:, None] ** 0.7
    ripples = rng.standard_normal((gh, gw)) * (0.08 + 0.12 * g_depth)
    swell = _grid_up(rng.standard_normal((4, 6)), gw, gh) * 0.06
    clouds = _grid_up(rng.standard_normal((3, 5)), gw, gh) * rng.uniform(0, 0.12)
    grid = np.where((gy < horizon)[:, None], clouds, ripples + swell)
    texture = _grid_up(grid, w, h)
    bg = rows.astype(np.float32)[:, None, :] * (1 + texture[:, :, None])
    return bg, water_near.astype(np.float32)


def _grid_up(grid: np.ndarray, w: int, h: int) -> np.ndarray:
    img = Image.fromarray(grid.astype(np.float32), mode="F")
    return np.asarray(img.resize((w, h), Image.Resampling.BICUBIC))


def _fin_colour(rng: np.random.Generator) -> np.ndarray:
    """The fin's base colour in this photo: any grey from dark to pale, slightly tinted."""
    grey = rng.uniform(0.12, 0.6)
    return np.clip(grey * (1 + rng.normal(0, 0.05, size=3)), 0.02, 1).astype(np.float32)


def _blob_mask(rng: np.random.Generator, w: int, h: int, box: np.ndarray) -> np.ndarray:
    """Splash or wave crest over part of the fin box: a soft cluster of ellipses."""
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    # Anchor at the bottom (a wave) or a side (spray drifting across).
    ax = rng.uniform(x1, x2)
    ay = y2 - rng.uniform(0, 0.3) * bh if rng.random() < 0.6 else rng.uniform(y1, y2)
    for _ in range(int(rng.integers(3, 8))):
        cx = ax + rng.normal(0, 0.2) * bw
        cy = ay + rng.normal(0, 0.1) * bh
        rx, ry = rng.uniform(0.08, 0.25) * bw, rng.uniform(0.05, 0.15) * bh
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(max(1.0, 0.01 * w)))
    return np.asarray(mask, dtype=np.float32)[:, :, None] / 255


def _glare(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    r = rng.uniform(0.05, 0.3) * max(w, h)
    # A Gaussian is separable: two 1-D profiles and one outer product.
    gx = np.exp(-((np.arange(w) - cx) ** 2) / (2 * r * r)).astype(np.float32)
    gy = np.exp(-((np.arange(h) - cy) ** 2) / (2 * r * r)).astype(np.float32)
    return (np.float32(rng.uniform(0.2, 0.7)) * gy[:, None] * gx[None, :])[:, :, None]


def _camera_lut(rng: np.random.Generator) -> list[int]:
    """Exposure, colour cast, haze and gamma as one 8-bit lookup table per channel."""
    x = np.arange(256) / 255
    gain = rng.uniform(0.7, 1.3) * rng.uniform(0.9, 1.1, size=3)
    haze, haze_level = rng.uniform(0, 0.25), rng.uniform(0.6, 0.95)
    gamma = rng.uniform(0.8, 1.25)
    lut = np.clip(x[None, :] * gain[:, None], 0, 1) * (1 - haze) + haze * haze_level
    return [int(v) for v in np.round(lut**gamma * 255).ravel()]


def _sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean noise of standard deviation `sigma`: the sum of two uniform bytes is close
    enough to Gaussian for sensor grain and several times cheaper to draw."""
    n = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(2 * n), dtype=np.uint8).reshape(2, *shape)
    tri = raw[0].astype(np.float32) + raw[1] - np.float32(255)
    return tri * np.float32(sigma / 104.2)  # 104.2: std of the sum of two uniform bytes


def render_photo(tex: FinTexture, rng: np.random.Generator, size: tuple[int, int]) -> Rendering:
    """One photo of the textured fin, `size` = (width, height); everything else from `rng`."""
    w, h = size
    hmat, outline = _place(rng, tex, w, h)
    # Only the part of the frame the texture lands on is warped and composited.
    tw, th = tex.image.size
    corners = _apply(hmat, np.array([[0, 0], [tw, 0], [tw, th], [0, th]], dtype=np.float64))
    rx0, ry0 = (max(0, int(np.floor(v))) for v in corners.min(axis=0))
    rx1, ry1 = min(w, int(np.ceil(corners[:, 0].max()))), min(h, int(np.ceil(corners[:, 1].max())))
    # PIL's PERSPECTIVE wants the map from output pixels back to texture pixels.
    inv = np.linalg.inv(np.array([[1, 0, -rx0], [0, 1, -ry0], [0, 0, 1]]) @ hmat)
    inv /= inv[2, 2]
    warped = tex.image.transform(
        (rx1 - rx0, ry1 - ry0),
        Image.Transform.PERSPECTIVE,
        tuple(inv.ravel()[:8]),
        Image.Resampling.BILINEAR,
    )
    planes = np.asarray(warped, dtype=np.float32) * np.float32(1 / 255)
    fin_a = planes[:, :, 1:2]
    back_a = planes[:, :, 2:3] * np.float32(rng.random() < 0.7)  # sometimes only the fin shows

    base_y = float(outline[:, 1].max())
    horizon = rng.uniform(-0.3 * h, max(-0.3 * h + 1, base_y - 0.1 * h))
    img, water = _background(rng, w, h, horizon)

    # Light falls across the fin from one side: a gradient over the fin's extent.
    lo, hi = outline.min(axis=0), outline.max(axis=0)
    centre, extent = (lo + hi) / 2, max(float((hi - lo).max()), 1.0)
    phi, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.5)
    gx = np.clip((np.arange(rx0, rx1) - centre[0]) * np.cos(phi) / extent, -1, 1)
    gy = np.clip((np.arange(ry0, ry1) - centre[1]) * np.sin(phi) / extent, -1, 1)
    light = (1 + strength * (gy[:, None] + gx[None, :]) / 2).astype(np.float32)
    shade = planes[:, :, 0] * (light * np.float32(255 * _SHADE_SCALE))
    animal = shade[:, :, None] * _fin_colour(rng)
    region = img[ry0:ry1, rx0:rx1]
    region += (animal - region) * back_a
    region += (animal - region) * fin_a

    box = np.array([*np.clip(lo, 0, None), min(hi[0], w), min(hi[1], h)])
    if rng.random() < 0.25:
        m = _blob_mask(rng, w, h, box)
        foam = water + (1 - water) * np.float32(rng.uniform(0.3, 0.9))
        spray = foam * (1 + 0.15 * _smooth_noise(rng, w, h, (w // 8, h // 8))[:, :, None])
        img += (spray - img) * m
    if rng.random() < 0.4:
        img += _glare(rng, w, h)

    np.clip(img, 0, 1, out=img)
    out = Image.fromarray((img * 255 + 0.5).astype(np.uint8)).point(_camera_lut(rng))
    if rng.random() < 0.6:
        out = out.filter(ImageFilter.BoxBlur(rng.uniform(0.3, 1.2) * w / 512))
    noisy = np.asarray(out, dtype=np.float32) + _sensor_noise(rng, (h, w, 3), rng.uniform(1, 8))
    pixels = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), dtype=np.float32)
    mask[ry0:ry1, rx0:rx1] = fin_a[:, :, 0]
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rendering(image=pixels, box=(x1, y1, x2, y2), fin_mask=mask)
