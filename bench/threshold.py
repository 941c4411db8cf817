"""The new_individual threshold: one for every gallery size against the bundle's curve.

Out of sample: the animals are a synthetic catalogue of another seed, which neither training
nor the threshold's tuning saw. Each trial registers one photo of `--newcomers` of them (as
POST /gallery does, cropped by the bundle's detector) beside `--distractors` individuals of the
training catalogue, queries the newcomers' other photos and every photo of the rest (truth
`new_individual`), and scores both thresholds on the same answers: MAP@5 (all, known, new) and
how often a newcomer ranks first. Trials draw the newcomers and the distractors anew.

    python -m bench.threshold --bundle B --run R           # 8, 40 and every distractor
    python -m bench.threshold --bundle B --run R --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # as bench/service.py: no shadowing

import numpy as np

from app.decode import open_image
from app.pipeline import Pipeline
from gallery.metrics import sweep_thresholds
from gallery.rank import NEW, rank
from training.evaluate import knn_hits
from training.runs import Run
from training.synth import make_catalogue

HITS = 50
FIGURES = ["photos", "threshold", "map5", "known", "new", "first"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.threshold", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    parser.add_argument("--run", type=Path, required=True, help="a run the bundle was made from")
    parser.add_argument("--individuals", type=int, default=60, help="animals of the other seed")
    parser.add_argument("--newcomers", type=int, default=40, help="of them registered (1 photo)")
    parser.add_argument(
        "--distractors",
        type=int,
        nargs="+",
        default=[8, 40, 0],
        help="training individuals in the gallery (0: all of them)",
    )
    parser.add_argument("--trials", type=int, default=5, help="draws per gallery size")
    parser.add_argument("--seed", type=int, default=4242, help="the other catalogue's seed")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 12 animals, 2 trials")
    args = parser.parse_args(argv)
    if args.quick:
        args.individuals, args.newcomers, args.trials, args.distractors = 12, 8, 2, [4, 0]
    if not 0 < args.newcomers < args.individuals:
        parser.error("--newcomers must be between 0 and --individuals")
    return args


def embed(pipeline: Pipeline, paths: list[Path]) -> np.ndarray:
    """Photos as POST /identify and POST /gallery embed them: detector crop, then the ensemble."""
    parts = [np.zeros((0, pipeline.embedding_dim), dtype=np.float32)]
    for start in range(0, len(paths), 32):
        images = [open_image(p) for p in paths[start : start + 32]]
        parts.append(pipeline.embed(images).vectors)
    return np.concatenate(parts)


def catalogue_paths(catalogue: Path) -> dict[str, list[Path]]:
    photos: dict[str, list[Path]] = {}
    with (catalogue / "train.csv").open() as fh:
        for row in csv.DictReader(fh):
            photos.setdefault(row["individual_id"], []).append(catalogue / "images" / row["image"])
    return photos


def trained_paths(run: Run) -> dict[str, list[Path]]:
    """The training individuals' photos (the open-set validation's individuals left out)."""
    train = set(run.splits.train)
    photos: dict[str, list[Path]] = {}
    for photo in run.photos:
        if photo.image in train:
            photos.setdefault(photo.individual_id, []).append(photo.path)
    return photos


def trial(
    animals: list[np.ndarray],
    distractors: list[np.ndarray],
    newcomers: int,
    thresholds: dict[str, float],
) -> dict[str, tuple[float, ...]]:
    """One gallery: the figures at each named threshold, on the same answers."""
    known, new = animals[:newcomers], animals[newcomers:]
    gallery = np.concatenate([a[:1] for a in known] + distractors)
    labels = np.concatenate(
        [np.full(1, k) for k in range(len(known))]
        + [np.full(len(d), len(known) + j) for j, d in enumerate(distractors)]
    )
    queries = np.concatenate([a[1:] for a in known] + new)
    truth = np.concatenate(
        [np.full(len(a) - 1, k) for k, a in enumerate(known)] + [np.full(len(a), NEW) for a in new]
    )
    sims, hit_labels = knn_hits(gallery, labels, queries, HITS)
    out = {}
    for name, threshold in thresholds.items():
        t = float(threshold)
        figures = sweep_thresholds(sims, hit_labels, truth, [t])
        first = rank(sims, hit_labels, t).codes[truth != NEW, 0] == truth[truth != NEW]
        out[name] = (
            len(gallery),
            t,
            figures.map_all[0],
            figures.map_known[0],
            figures.map_new[0],
            first.mean(),
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pipeline = Pipeline.from_bundle(args.bundle)
    manifest = pipeline.manifest
    run = Run(args.run)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-threshold-") as tmp:
        other = Path(tmp) / "catalogue"
        make_catalogue(other, individuals=args.individuals, photos=5, species=3, seed=args.seed)
        animals = [embed(pipeline, paths) for paths in catalogue_paths(other).values()]
    trained = [embed(pipeline, paths) for paths in trained_paths(run).values()]

    print(
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}; bundle {manifest.fingerprint[:12]} "
        f"(threshold {manifest.threshold:.3f}, curve of {len(manifest.threshold_curve)} points); "
        f"{args.individuals} animals of seed {args.seed}, {args.newcomers} registered with one "
        f"photo, {args.trials} trials a row"
    )
    print("| distractors | photos | threshold | value | MAP@5 | known | new | newcomer first |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    rows = []
    for count in args.distractors:
        count = count or len(trained)
        results: dict[str, list[tuple[float, ...]]] = {"one": [], "by size": []}
        for _ in range(args.trials):
            order = rng.permutation(len(animals))
            chosen = rng.choice(len(trained), min(count, len(trained)), replace=False)
            gallery_size = args.newcomers + sum(len(trained[i]) for i in chosen)
            thresholds = {
                "one": manifest.threshold,
                "by size": manifest.threshold_for(None, gallery_size),
            }
            figures = trial([animals[i] for i in order], [trained[i] for i in chosen],
                            args.newcomers, thresholds)  # fmt: skip
            for name in results:
                results[name].append(figures[name])
        for name, values in results.items():
            mean = np.mean(values, axis=0)
            row = dict(
                zip(["photos", "threshold", "map5", "known", "new", "first"], mean, strict=True)
            )
            rows.append({"distractors": count, "threshold_kind": name, **row})
            print(
                f"| {count} | {mean[0]:.0f} | {name} | {mean[1]:.3f} | {mean[2]:.3f} | "
                f"{mean[3]:.3f} | {mean[4]:.3f} | {mean[5]:.0%} |"
            )
    return {"rows": rows}


if __name__ == "__main__":
    main()
