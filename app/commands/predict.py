"""`whaleid predict`: identify a folder of photos against a gallery, to a submission CSV.

It runs the service's own steps (app.pipeline.Pipeline: detect, crop, embed; Gallery.search:
rank with new_individual at the bundle's threshold; where the bundle re-ranks, its shortlist
re-ranked by local matches with app.reranker) on batches of photos, so a photo gets the same
five answers here as from POST /identify. The CSV is Happywhale's submission format:
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
from app.reranker import Reranker
from gallery.batches import chunks
from gallery.errors import WhaleidError
from gallery.gallery import Gallery
from gallery.keypoints import LocalFeatures
from gallery.records import Candidate
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
    parser.add_argument(
        "--rerank-shortlist",
        type=int,
        default=None,
        help="gallery photos re-ranked by local matches per photo, when the bundle has a "
        "matcher (default: the bundle's, as the service; 0: global similarity only)",
    )
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
    if args.rerank_shortlist is not None and args.rerank_shortlist < 0:
        raise WhaleidError("--rerank-shortlist must be 0 (off) or more")
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
            reranker = None
            if args.rerank_shortlist != 0:
                reranker = Reranker.from_manifest(
                    pipeline.bundle.path, pipeline.manifest, args.providers
                )
            rank = _Ranker(gallery, pipeline, reranker, args)
            rows, skipped = _identify(args, pipeline, rank, listing.photos)
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


class _Ranker:
    """Embedded photos → candidates, as POST /identify ranks one photo: the global ranking, or
    where the bundle re-ranks, its shortlist re-ranked by local matches (app.reranker)."""

    def __init__(
        self,
        gallery: Gallery,
        pipeline: Pipeline,
        reranker: Reranker | None,
        args: argparse.Namespace,
    ) -> None:
        self.gallery = gallery
        self.manifest = pipeline.manifest
        self.reranker = reranker
        self.args = args
        rerank = self.manifest.rerank
        self.hits = args.rerank_shortlist or (rerank.shortlist if rerank else 0)
        self._thresholds: dict[str | None, float] = {}

    def threshold(self, viewpoint: str | None) -> float:
        """As POST /identify does: --threshold, else the fused threshold where it re-ranks,
        else the species' own threshold where the bundle has one, else the one tuned for a
        gallery of the size searched (the compatible photos)."""
        if viewpoint not in self._thresholds:
            gallery, args = self.gallery, self.args
            searched = gallery.size if viewpoint is None else gallery.count_compatible(viewpoint)
            if args.threshold is not None:
                found = float(args.threshold)
            elif self.reranker is not None:
                found = self.manifest.rerank_threshold_for(searched)
            else:
                found = self.manifest.threshold_for(args.species, searched)
            self._thresholds[viewpoint] = found
        return self._thresholds[viewpoint]

    def __call__(
        self, vectors: np.ndarray, local: LocalFeatures | None, viewpoints: list[str | None]
    ) -> list[list[Candidate]]:
        thresholds = np.asarray([self.threshold(v) for v in viewpoints], dtype=np.float32)
        matcher = self.manifest.matcher
        if self.reranker is None or local is None or matcher is None:
            return self.gallery.search(
                vectors,
                top_k=self.args.top_k,
                threshold=thresholds,
                species=self.args.species,
                viewpoint=viewpoints,
            )
        found = self.gallery.shortlist(
            vectors, hits=self.hits, species=self.args.species, viewpoint=viewpoints
        )
        candidates = [
            self.gallery.local_features(
                ids[ids >= 0].tolist(),
                max_keypoints=matcher.max_keypoints,
                dim=matcher.descriptor_dim,
            )[0]
            for ids in found.image_ids
        ]
        reranked = self.reranker.rerank(
            found.sims, found.codes, local, candidates, thresholds, self.args.top_k
        )
        return found.candidates(reranked.ranking, matches=reranked.local)


def _embedded(
    args: argparse.Namespace, pipeline: Pipeline, photos: list[ListedPhoto], local: bool = False
) -> Iterator[tuple[list[ListedPhoto], np.ndarray, LocalFeatures | None, list[str]]]:
    """Batches of (usable photos, their (N, D) vectors, their crops' keypoints when `local`
    and the bundle has a matcher, the unusable photos' names)."""
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
            if good:
                embedded = pipeline.embed([img for _, img in good], local=local)
                vectors, features = embedded.vectors, embedded.local
            else:
                vectors = np.zeros((0, pipeline.embedding_dim), dtype=np.float32)
                features = None
            yield [p for p, _ in good], vectors, features, skipped
            progress.update(len(batch))
    progress.close()


def _identify(
    args: argparse.Namespace, pipeline: Pipeline, rank: _Ranker, photos: list[ListedPhoto]
) -> tuple[list[tuple[str, str]], list[str]]:
    """(image, predictions) rows for every usable photo, and the others' names."""
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    local = rank.reranker is not None
    for good, vectors, features, unusable in _embedded(args, pipeline, photos, local):
        skipped += unusable
        if not good:
            continue
        answers = rank(vectors, features, [p.viewpoint for p in good])
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
    for good, vectors, _, unusable in _embedded(args, pipeline, photos):
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
