"""Camera-size photos: where one photo's time goes, and what the reduce-first letterbox changes.

The other benchmarks run on catalogue photos, which are small (the synthetic ones 512 x 384).
There the resizes are a few percent of a photo's time. Researchers upload camera photos of
12 megapixels (4000 x 3000) and more.

This bench makes such photos from a catalogue. Each photo is upscaled bicubically to `--side`
pixels on its long side, with light noise so its JPEG is not unrealistically smooth, and saved
at quality 90. Then, on the bundle's models:

- **Each step of one photo, timed.** Medians over the photos, the two letterboxes in turns:
  - decoding, as the service decodes (`app.decode.decode_image`);
  - the detector's letterbox, before (one bilinear resize of the whole photo, as until
    2026-12-05) and now (`app.preprocess.letterbox`: whole blocks averaged first);
  - the detector;
  - cropping and embedding.
- **The two letterboxes' answers, compared:**
  - each box's IoU with the catalogue's true box, scaled to the photo;
  - the two boxes' IoU with each other, and the two embeddings' cosine;
  - leave-one-out nearest-neighbour top-1 accuracy among the photos, individuals as labels:
    boxes from the old letterbox, from the new, and new queries against an old gallery (a
    gallery registered before the change).

    python -m bench.large_photos --bundle B --catalogue C [--side 4000] [--individuals 30]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script, this folder comes first on sys.path and bench/gallery.py would shadow
    # the `gallery` package: look in the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
from PIL import Image

from app.decode import decode_image
from app.detector import best_crop
from app.manifest import DetectorSpec
from app.pipeline import Pipeline
from app.preprocess import LETTERBOX_FILL, Box, Letterbox, crop_box, letterbox
from app.sessions import open_session
from gallery.catalogue import Photo, read_catalogue
from training.detector.evaluate import box_iou

__all__ = ["camera_jpeg", "letterbox_before", "main"]

NOISE = 4.0  # grey levels of Gaussian noise on the upscaled photos
QUALITY = 90
Letterboxer = Callable[[Image.Image, int], tuple[np.ndarray, Letterbox]]


def letterbox_before(img: Image.Image, size: int) -> tuple[np.ndarray, Letterbox]:
    """app.preprocess.letterbox as it was until 2026-12-05: one bilinear resize of the whole
    photo, however large."""
    width, height = img.size
    scale = min(size / width, size / height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    left, top = round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)
    canvas = Image.new("RGB", (size, size), (LETTERBOX_FILL,) * 3)
    resized = img if img.mode == "RGB" else img.convert("RGB")
    if (new_w, new_h) != (width, height):
        resized = resized.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas.paste(resized, (left, top))
    arr = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return np.ascontiguousarray(arr), Letterbox(
        scale=scale, pad_x=left, pad_y=top, size=(width, height)
    )


@dataclass(frozen=True)
class CameraPhoto:
    """A catalogue photo made camera-size: its JPEG, its individual, its true box (scaled)."""

    content: bytes
    individual_id: str
    truth: Box | None


def camera_jpeg(
    content: bytes, side: int, rng: np.random.Generator, name: str = "photo"
) -> tuple[bytes, float]:
    """A photo's bytes made camera-size: upscaled bicubically to `side` px on its long side,
    NOISE grey levels of noise added, saved as a JPEG of QUALITY; and the scale applied."""
    img = decode_image(content, draft_side=None, name=name)
    scale = side / max(img.size)
    size = (round(img.width * scale), round(img.height * scale))
    big = np.asarray(img.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    big += rng.normal(0.0, NOISE, big.shape).astype(np.float32)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue(), scale


def camera_photo(photo: Photo, side: int, rng: np.random.Generator) -> CameraPhoto:
    content, scale = camera_jpeg(photo.path.read_bytes(), side, rng, photo.image)
    truth: Box | None = None
    if photo.box is not None:
        x1, y1, x2, y2 = photo.box
        truth = (x1 * scale, y1 * scale, x2 * scale, y2 * scale)
    return CameraPhoto(content, photo.individual_id, truth)


def pick(photos: Sequence[Photo], individuals: int, per: int) -> list[Photo]:
    """`per` photos of each of the first `individuals` (by id) that have that many."""
    by_id: dict[str, list[Photo]] = {}
    for photo in photos:
        by_id.setdefault(photo.individual_id, []).append(photo)
    chosen = [ps[:per] for _, ps in sorted(by_id.items()) if len(ps) >= per][:individuals]
    return [p for ps in chosen for p in ps]


class Detector:
    """The bundle's detector session, fed by either letterbox; its answer by the service's own
    rule (app.detector.best_crop)."""

    def __init__(self, bundle: Path, spec: DetectorSpec) -> None:
        self.spec = spec
        self.session = open_session(bundle / spec.file)
        self.input = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input: x[None]})[0][0])

    def box(self, img: Image.Image, letterboxer: Letterboxer) -> Box | None:
        x, placement = letterboxer(img, self.spec.input_size)
        crop = best_crop(self.run(x), placement, self.spec.confidence)
        return None if crop is None else crop.box


def iou(a: Box | None, b: Box | None) -> float:
    """training.detector.evaluate's box IoU, where a photo may have no box: 1 when neither
    has one, 0 when only one has."""
    if a is None or b is None:
        return float(a is None and b is None)
    return box_iou(a, b)


def top1(queries: np.ndarray, gallery: np.ndarray, labels: Sequence[str]) -> float:
    """Leave-one-out nearest-neighbour accuracy: query i against every gallery row but i."""
    sims = queries @ gallery.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    return float(np.mean([labels[j] == labels[i] for i, j in enumerate(nearest)]))


def median_ms(samples: Sequence[float]) -> float:
    return float(np.median(samples)) * 1000.0


LETTERBOXES: dict[str, Letterboxer] = {"before": letterbox_before, "now": letterbox}


@dataclass
class Found:
    """What one run over the photos found: each step's seconds, and for each letterbox each
    photo's box and embedding."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    boxes: dict[str, list[Box | None]] = field(default_factory=dict)
    vectors: dict[str, list[np.ndarray]] = field(default_factory=dict)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds.setdefault(step, []).append(time.perf_counter() - start)


def run_photos(
    pipeline: Pipeline, detector: Detector, photos: Sequence[CameraPhoto], rounds: int
) -> Found:
    """Each photo decoded, letterboxed both ways (`rounds` times, in turns), detected, and
    cropped and embedded from each letterbox's box."""
    found = Found()
    size = detector.spec.input_size
    for photo in photos:
        with found.timed("decode"):
            img = decode_image(photo.content)
        for _ in range(rounds):
            for name, letterboxer in LETTERBOXES.items():
                with found.timed(f"letterbox_{name}"):
                    letterboxer(img, size)
        x, _ = letterbox(img, size)
        with found.timed("detector"):
            detector.run(x)
        for name, letterboxer in LETTERBOXES.items():
            box = detector.box(img, letterboxer)
            with found.timed("crop_and_embed"):
                vector = pipeline.embed_crops([crop_box(img, box, pipeline.padding)])[0]
            found.boxes.setdefault(name, []).append(box)
            found.vectors.setdefault(name, []).append(vector)
    return found


def compare(found: Found, photos: Sequence[CameraPhoto]) -> dict[str, Any]:
    """The figures: median ms per step, and how the two letterboxes' answers agree."""
    before, now = np.stack(found.vectors["before"]), np.stack(found.vectors["now"])
    labels = [p.individual_id for p in photos]
    truth_iou = {
        name: [iou(b, p.truth) for b, p in zip(boxes, photos, strict=True)]
        for name, boxes in found.boxes.items()
    }
    pairs = list(zip(found.boxes["before"], found.boxes["now"], strict=True))
    between = [iou(a, b) for a, b in pairs]
    cosine = (before * now).sum(axis=1)
    return {
        "photos": len(photos),
        "photo_size": list(decode_image(photos[0].content).size),
        "ms": {name: median_ms(samples) for name, samples in found.seconds.items()},
        "truth_iou": {
            name: {"mean": float(np.mean(v)), "median": float(np.median(v)), "min": min(v)}
            for name, v in truth_iou.items()
        },
        "boxes_iou": {"mean": float(np.mean(between)), "min": min(between)},
        "boxes_same": float(np.mean([a == b for a, b in pairs])),
        "cosine": {"mean": float(cosine.mean()), "min": float(cosine.min())},
        "top1": {
            "before": top1(before, before, labels),
            "now": top1(now, now, labels),
            "now_against_before": top1(now, before, labels),
        },
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.large_photos",
        description="Camera-size photos made from a catalogue: each step's time, and the "
        "reduce-first letterbox against the one before it (boxes, embeddings, top-1).",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="a bundle with a detector")
    parser.add_argument("--catalogue", type=Path, required=True, help="its catalogue (boxes)")
    parser.add_argument("--side", type=int, default=4000, help="long side of the made photos")
    parser.add_argument("--individuals", type=int, default=30, help="individuals to take")
    parser.add_argument("--per", type=int, default=4, help="photos of each individual")
    parser.add_argument("--rounds", type=int, default=3, help="letterbox timings per photo")
    parser.add_argument("--seed", type=int, default=0, help="of the noise")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.per < 2:
        raise SystemExit("--per must be at least 2: top-1 needs another photo of each")
    pipeline = Pipeline.from_bundle(args.bundle, ["cpu"])
    spec = pipeline.manifest.detector
    if spec is None:
        raise SystemExit(f"{args.bundle} has no detector: nothing to letterbox")
    chosen = pick(read_catalogue(args.catalogue).photos, args.individuals, args.per)
    if len(chosen) < 2 * args.per:
        raise SystemExit(f"{args.catalogue}: fewer than 2 individuals with {args.per} photos")
    rng = np.random.default_rng(args.seed)
    photos = [camera_photo(p, args.side, rng) for p in chosen]
    found = run_photos(pipeline, Detector(args.bundle, spec), photos, args.rounds)
    result = compare(found, photos)
    report(result, spec.input_size)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict[str, Any], detector_size: int) -> None:
    width, height = result["photo_size"]
    ms = result["ms"]
    print(f"{result['photos']} photos of {width} x {height} (decoded), detector {detector_size}px")
    print("| step | ms per photo (median) |")
    print("| --- | ---: |")
    for name, label in (
        ("decode", "decode"),
        ("letterbox_before", "letterbox, before (one bilinear resize)"),
        ("letterbox_now", "letterbox, now (blocks averaged first)"),
        ("detector", "detector"),
        ("crop_and_embed", "crop and embed"),
    ):
        print(f"| {label} | {ms[name]:.2f} |")
    before, now = ms["letterbox_before"], ms["letterbox_now"]
    print(f"letterbox before / now = {before / now:.2f}")
    for name, stats in result["truth_iou"].items():
        print(
            f"IoU with the true box, {name}: mean {stats['mean']:.4f} median "
            f"{stats['median']:.4f} min {stats['min']:.4f}"
        )
    print(
        f"boxes: the same on {result['boxes_same']:.0%}, IoU mean {result['boxes_iou']['mean']:.4f}"
        f" min {result['boxes_iou']['min']:.4f}; embeddings cosine mean "
        f"{result['cosine']['mean']:.5f} min {result['cosine']['min']:.5f}"
    )
    t = result["top1"]
    print(
        f"leave-one-out top-1: before {t['before']:.3f}, now {t['now']:.3f}, now against a "
        f"gallery from before {t['now_against_before']:.3f}"
    )


if __name__ == "__main__":
    main()
