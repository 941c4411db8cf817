"""`whaleid predict`: identify a folder of photos against a gallery, to a submission CSV.

It runs the service's own steps (app.pipeline.Pipeline: detect, crop, embed; Gallery.search:
rank with new_individual at the bundle's threshold; where the bundle re-ranks, its shortlist
re-ranked by local matches with app.reranker) on batches of photos, so a photo gets the same
five answers here as from POST /identify. The CSV is Happywhale's submission format:
`image,predictions` with five space-separated individual ids.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from app.decode import open_image
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
    parser.add_argument("--images", type=Path, required=True, help="folder of photos to identify")
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
    pipeline = Pipeline.from_bundle(args.bundle, args.providers)
    manifest = pipeline.manifest
    reranker = None
    if args.rerank_shortlist != 0 and manifest.rerank is not None:
        reranker = Reranker.from_manifest(pipeline.bundle.path, manifest, args.providers)
    photos = list_images(args.images)
    url = normalize_url(args.gallery)
    _check_sqlite_exists(url)
    with Gallery.open(url, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim) as gallery:
        # As POST /identify does: the species' own threshold where the bundle has one, else
        # the one tuned for a gallery of this size.
        threshold = args.threshold
        if threshold is None and reranker is not None:
            threshold = manifest.rerank_threshold_for(gallery.size)
        elif threshold is None:
            threshold = manifest.threshold_for(args.species, gallery.size)
        rank = _Ranker(gallery, reranker, pipeline, args, threshold)
        rows, skipped = _identify(args, pipeline, rank, photos)
    _write_csv(args.out, rows)
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
    """Embedded photos → candidates, as POST /identify ranks them."""

    def __init__(
        self,
        gallery: Gallery,
        reranker: Reranker | None,
        pipeline: Pipeline,
        args: argparse.Namespace,
        threshold: float,
    ) -> None:
        self.gallery = gallery
        self.reranker = reranker
        self.matcher = pipeline.manifest.matcher
        rerank = pipeline.manifest.rerank
        self.hits = args.rerank_shortlist or (rerank.shortlist if rerank else 0)
        self.top_k = args.top_k
        self.species = args.species
        self.threshold = threshold

    def __call__(self, vectors: np.ndarray, local: LocalFeatures | None) -> list[list[Candidate]]:
        if self.reranker is None or local is None or self.matcher is None:
            return self.gallery.search(
                vectors, top_k=self.top_k, threshold=self.threshold, species=self.species
            )
        found = self.gallery.shortlist(vectors, hits=self.hits, species=self.species)
        candidates = [
            self.gallery.local_features(
                ids[ids >= 0].tolist(),
                max_keypoints=self.matcher.max_keypoints,
                dim=self.matcher.descriptor_dim,
            )[0]
            for ids in found.image_ids
        ]
        reranked = self.reranker.rerank(
            found.sims, found.codes, local, candidates, self.threshold, self.top_k
        )
        return found.candidates(reranked.ranking, matches=reranked.local)


def _identify(
    args: argparse.Namespace,
    pipeline: Pipeline,
    rank: _Ranker,
    photos: list[Path],
) -> tuple[list[tuple[str, str]], list[str]]:
    """(image, predictions) rows for every usable photo, and the others' names."""
    rows: list[tuple[str, str]] = []
    skipped: list[str] = []
    progress = tqdm(total=len(photos), unit="photo", disable=args.quiet, file=sys.stderr)
    # Decoding overlaps with inference: Pillow releases the GIL while it decodes.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for batch in chunks(photos, args.batch_size):
            decoded = list(pool.map(_decode, batch))
            for path, result in zip(batch, decoded, strict=True):
                if isinstance(result, WhaleidError):
                    skipped.append(path.name)
                    progress.write(f"skipped {path.name}: {result}", file=sys.stderr)
            good = [
                (p, img)
                for p, img in zip(batch, decoded, strict=True)
                if isinstance(img, Image.Image)
            ]
            if good:
                embedded = pipeline.embed([img for _, img in good], local=rank.reranker is not None)
                answers = rank(embedded.vectors, embedded.local)
                rows += [
                    (path.name, " ".join(c.individual_id for c in candidates))
                    for (path, _), candidates in zip(good, answers, strict=True)
                ]
            progress.update(len(batch))
    progress.close()
    return rows, skipped


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """Write via a temporary file, so an interrupted run never leaves half a submission."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "predictions"])
        writer.writerows(rows)
    partial.replace(path)
