"""`whaleid predict`: identify a folder of photos against a gallery, to a submission CSV.

It runs the service's own steps (app.pipeline.Pipeline: detect, crop, embed; Gallery.search:
rank with new_individual at the bundle's threshold) on batches of photos, so a photo gets the
same five answers here as from POST /identify. The CSV is Happywhale's submission format:
`image,predictions` with five space-separated individual ids.

`--photos CSV` lists the photos instead (app.photo_list: image, optional viewpoint and
encounter): each photo is searched among gallery photos of a compatible viewpoint, and with an
encounter column the photos of each encounter are answered together, one
`encounter,predictions` row each, as POST /identify answers several photos.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.decode import open_image
from app.encounters import ENCOUNTER_FUSION, encounter_threshold
from app.photo_list import ListedPhoto, PhotoList, read_photo_list
from app.pipeline import Pipeline
from app.preprocess import check_photo
from gallery.batches import chunks
from gallery.errors import WhaleidError
from gallery.gallery import Gallery
from gallery.store import normalize_url, sqlite_path

__all__ = ["IMAGE_SUFFIXES", "build_parser", "list_images", "run"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"})


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Identify every photo of a folder against a gallery and write "
        "image,predictions (five space-separated ids, new_individual among them) to a CSV.",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    parser.add_argument(
        "--gallery",
        required=True,
        help="gallery store: a SQLite file path, sqlite:///path.db or postgresql://...",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of photos to identify")
    source.add_argument(
        "--photos",
        type=Path,
        help="CSV of photos to identify: image (relative to the CSV), optional viewpoint and "
        "encounter (then one row per encounter, its photos answered together)",
    )
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--top-k", type=int, default=5, help="ids per photo (default 5)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="new_individual threshold (default: the bundle's, tuned for --species or for a "
        "gallery of this size)",
    )
    parser.add_argument("--species", default=None, help="only rank individuals of this species")
    parser.add_argument("--batch-size", type=int, default=32, help="photos per model call")
    parser.add_argument(
        "--providers",
        nargs="+",
        default=None,
        help="onnxruntime providers, e.g. cuda cpu (default: CUDA when present, else CPU)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def list_images(folder: Path) -> list[Path]:
    """The photos directly in `folder` (by suffix), sorted by name."""
    if not folder.is_dir():
        raise WhaleidError(f"--images {folder} is not a folder")
    photos = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not photos:
        accepted = ", ".join(sorted(IMAGE_SUFFIXES))
        raise WhaleidError(f"--images {folder} holds no photos ({accepted})")
    return photos


def _decode(path: Path) -> Image.Image | WhaleidError:
    """The photo, or why it cannot be used (the same refusals as POST /identify)."""
    try:
        image = open_image(path)
        check_photo(image, path.name)
        return image
    except WhaleidError as exc:
        return exc


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.batch_size < 1:
        raise WhaleidError("--top-k and --batch-size must be at least 1")
    listing = (
        read_photo_list(args.photos)
        if args.photos is not None
        else PhotoList([ListedPhoto(p) for p in list_images(args.images)], has_encounters=False)
    )
    pipeline = Pipeline.from_bundle(args.bundle, args.providers)
    url = normalize_url(args.gallery)
    _check_sqlite_exists(url)
    with Gallery.open(url, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim) as gallery:
        if listing.has_encounters:
            rows, skipped = _identify_encounters(args, pipeline, gallery, listing.photos)
        else:
            rows, skipped = _identify(args, pipeline, gallery, listing.photos)
    _write_csv(args.out, rows, first="encounter" if listing.has_encounters else "image")
    # Each was named with its reason as it was skipped.
    note = f", {len(skipped)} unusable photo(s) left out" if skipped else ""
    print(f"wrote {len(rows)} rows to {args.out}{note}", file=sys.stderr)
    return 0


def _check_sqlite_exists(url: str) -> None:
    """Opening a store creates it when new: an empty gallery would answer new_individual for
    every photo, so a SQLite file that is not there is an error here."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise WhaleidError(
            f"--gallery {path} does not exist: fill a gallery first with "
            "'whaleid gallery import --bundle BUNDLE --catalogue DIR'"
        )


def _threshold(
    args: argparse.Namespace, pipeline: Pipeline, gallery: Gallery, viewpoint: str | None
) -> float:
    """As POST /identify does: --threshold, else the species' own threshold where the bundle
    has one, else the one tuned for a gallery of the size searched (the compatible photos)."""
    if args.threshold is not None:
        return float(args.threshold)
    searched = gallery.size if viewpoint is None else gallery.count_compatible(viewpoint)
    return pipeline.manifest.threshold_for(args.species, searched)


def _embedded(
    args: argparse.Namespace, pipeline: Pipeline, photos: list[ListedPhoto]
) -> Iterator[tuple[list[ListedPhoto], np.ndarray, list[str]]]:
    """Batches of (usable photos, their (N, D) vectors, the unusable photos' names)."""
    progress = tqdm(total=len(photos), unit="photo", disable=args.quiet, file=sys.stderr)
    # Decoding overlaps with inference: Pillow releases the GIL while it decodes.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for batch in chunks(photos, args.batch_size):
            decoded = list(pool.map(_decode, [p.path for p in batch]))
            skipped: list[str] = []
            for photo, result in zip(batch, decoded, strict=True):
                if isinstance(result, WhaleidError):
                    skipped.append(photo.name)
                    progress.write(f"skipped {photo.name}: {result}", file=sys.stderr)
            good = [
                (p, img)
                for p, img in zip(batch, decoded, strict=True)
                if isinstance(img, Image.Image)
            ]
            vectors = (
                pipeline.embed([img for _, img in good]).vectors
                if good
                else np.zeros((0, pipeline.embedding_dim), dtype=np.float32)
            )
            yield [p for p, _ in good], vectors, skipped
            progress.update(len(batch))
    progress.close()


def _identify(
    args: argparse.Namespace, pipeline: Pipeline, gallery: Gallery, photos: list[ListedPhoto]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(image, predictions) rows for every usable photo, and the others' names."""
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    thresholds: dict[str | None, float] = {}
    for good, vectors, unusable in _embedded(args, pipeline, photos):
        skipped += unusable
        if not good:
            continue
        viewpoints = [p.viewpoint for p in good]
        for v in set(viewpoints) - set(thresholds):
            thresholds[v] = _threshold(args, pipeline, gallery, v)
        answers = gallery.search(
            vectors,
            top_k=args.top_k,
            threshold=np.asarray([thresholds[v] for v in viewpoints], dtype=np.float32),
            species=args.species,
            viewpoint=viewpoints,
        )
        rows += [
            (photo.name, " ".join(c.individual_id for c in candidates))
            for photo, candidates in zip(good, answers, strict=True)
        ]
    return rows, skipped


def _identify_encounters(
    args: argparse.Namespace, pipeline: Pipeline, gallery: Gallery, photos: list[ListedPhoto]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(encounter, predictions) rows, one per encounter with a usable photo (in order of
    first appearance), each answered from all its photos; and the unusable photos' names."""
    members: dict[str, list[tuple[ListedPhoto, np.ndarray]]] = {}
    for photo in photos:
        members.setdefault(str(photo.encounter), [])
    skipped: list[str] = []
    for good, vectors, unusable in _embedded(args, pipeline, photos):
        skipped += unusable
        for photo, vector in zip(good, vectors, strict=True):
            members[str(photo.encounter)].append((photo, vector))
    rows: list[tuple[str, str]] = []
    for encounter, found in members.items():
        if not found:
            print(f"skipped encounter {encounter}: no usable photo", file=sys.stderr)
            continue
        viewpoints = [p.viewpoint for p, _ in found]
        # The largest sub-gallery any of its photos is searched in (see app.encounters).
        searched = max(
            gallery.size if v is None else gallery.count_compatible(v) for v in viewpoints
        )
        threshold = (
            float(args.threshold)
            if args.threshold is not None
            else encounter_threshold(pipeline.manifest, args.species, searched, len(found))
        )
        candidates = gallery.search_encounter(
            np.stack([v for _, v in found]),
            threshold=threshold,
            top_k=args.top_k,
            species=args.species,
            viewpoint=viewpoints,
            fusion=ENCOUNTER_FUSION,
        )
        rows.append((encounter, " ".join(c.individual_id for c in candidates)))
    return rows, skipped


def _write_csv(path: Path, rows: list[tuple[str, str]], first: str = "image") -> None:
    """Write via a temporary file, so an interrupted run never leaves half a submission."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([first, "predictions"])
        writer.writerows(rows)
    partial.replace(path)
