"""Classes by individual against classes by individual + viewpoint, on a two-sided catalogue.

Protocol, identity-disjoint (as bench/accuracy.py): a seeded share of the individuals is the
test set, never trained on; some get gallery photos and are queried with the rest, the others
are not in the gallery (truth new_individual). The rest is the training catalogue (with its
viewpoint column), from which `whaleid train` holds out its own open-set validation, where the
new_individual threshold is tuned; the test queries are only scored at that threshold. Every
search, validation and test, compares a query only with gallery photos of a compatible
viewpoint (gallery.viewpoints), as the service does, so a query of an individual the gallery
shows only from the other side has truth new_individual. Two test galleries:
- one photo: one random photo of each test gallery individual (a catalogue that has seen the
  animal once, the common case);
- both sides: one photo of each side of it (a catalogue that has both).

    whaleid synth --out CAT --individuals 160 --photos 6 --sides 2
    python -m bench.viewpoints --catalogue CAT              # see bench/RESULTS.md
    python -m bench.viewpoints --catalogue CAT --quick      # smoke run: 1 seed, 1 epoch, 32 px
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gallery.metrics import sweep_thresholds  # noqa: E402
from gallery.rank import NEW, best_per_individual  # noqa: E402
from training.catalogue import Photo, load_catalogue  # noqa: E402
from training.config import DataConfig, EvalConfig, load_config  # noqa: E402
from training.embed import embed_images  # noqa: E402
from training.evaluate import knn_hits, sweep_grid  # noqa: E402
from training.loop import train  # noqa: E402
from training.runs import Run  # noqa: E402
from training.splits import build_eval_set, split_open_set  # noqa: E402

CLASS_BY = ("individual", "individual_viewpoint")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--catalogue", type=Path, required=True, help="a two-sided catalogue")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/whaleid-bench-viewpoints"))
    p.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--class-by", nargs="+", default=list(CLASS_BY), choices=CLASS_BY)
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--new-fraction", type=float, default=0.3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="a training config override (repeatable)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="one seed, 1 epoch at 32 px: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.overrides = ["optim.epochs=1", "data.image_size=32", *args.overrides]
    return args


def split(
    photos: list[Photo], args: argparse.Namespace, seed: int
) -> tuple[list[Photo], dict[str, tuple[list[Photo], list[Photo]]]]:
    """(training photos, {test gallery name: (gallery, queries)}) for one seed."""
    rng = np.random.default_rng(seed)
    train_photos, test = split_open_set(photos, args.test_fraction, args.new_fraction, rng)
    by_name = {p.image: p for p in photos}
    one = [by_name[n] for n in test.gallery]
    queries = [by_name[n] for n in test.queries]
    held = one + queries
    # Both sides: the one photo, and the first photo of the other side where there is one.
    both = list(one)
    for photo in one:
        other = [q for q in queries if q.individual_id == photo.individual_id]
        other = [q for q in other if q.viewpoint != photo.viewpoint]
        both += other[:1]
    taken = {p.image for p in both}
    galleries = {
        "one photo": (one, queries),
        "both sides": (both, [p for p in held if p.image not in taken]),
    }
    return train_photos, galleries


def write_training_catalogue(folder: Path, source: Path, photos: list[Photo]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "species", "individual_id", "viewpoint"])
        writer.writerows((p.image, p.species, p.individual_id, p.viewpoint or "") for p in photos)
    if (source / "boxes.csv").is_file():
        shutil.copy(source / "boxes.csv", folder / "boxes.csv")


def score(
    vectors: dict[str, np.ndarray],
    gallery: list[Photo],
    queries: list[Photo],
    threshold: float | None,
    cfg: EvalConfig,
) -> tuple[float, dict[str, float]]:
    """(threshold, figures): at `threshold`, or at the best of a fine sweep when None."""
    eval_set = build_eval_set(gallery, queries)
    g = np.stack([vectors[p.image] for p in gallery])
    q = np.stack([vectors[p.image] for p in queries])
    sims, labels = knn_hits(g, eval_set.gallery_labels, q, cfg.neighbours, eval_set.allowed)
    grid = sweep_grid(sims, cfg.threshold_step) if threshold is None else np.array([threshold])
    result = sweep_thresholds(sims, labels, eval_set.query_truth, grid)
    truth = eval_set.query_truth
    known = truth != NEW
    codes, _, _ = best_per_individual(sims, labels)
    figures = {
        **result.at(result.best_threshold),
        "top1_known": float((codes[known, 0] == truth[known]).mean()) if known.any() else 0.0,
        "queries": len(queries),
        "queries_known": int(known.sum()),
    }
    return result.best_threshold, figures


def run_one(
    args: argparse.Namespace, photos: list[Photo], seed: int, class_by: str
) -> dict[str, dict[str, float]]:
    train_photos, galleries = split(photos, args, seed)
    folder = args.workdir / f"catalogue-{seed}"
    write_training_catalogue(folder, args.catalogue, train_photos)
    overrides = [
        f"data.catalogue={folder}",
        f"data.images={args.catalogue / 'images'}",
        f"data.class_by={class_by}",
        "eval.at_end=false",  # tuned below, once, on the run's own validation
        f"threads={args.threads}",
        f"seed={seed}",
        f"out={args.workdir / 'runs'}",
        f"name={class_by}-{seed}",
        *args.overrides,
    ]
    started = time.perf_counter()
    run = Run(train(load_config(args.config, overrides), None))
    train_s = time.perf_counter() - started
    cfg = run.config
    by_name = {p.image: p for p in run.photos}
    val_gallery = [by_name[n] for n in run.splits.train + run.splits.open_set.gallery]
    val_queries = [by_name[n] for n in run.splits.open_set.queries]
    everything = {p.image: p for p in [*val_gallery, *val_queries, *photos]}
    model = run.load_embedder("best")
    names = list(everything)
    vectors = embed_images(
        model, [everything[n] for n in names], run.transform(), batch_size=64,
        padding=cfg.data.box_padding,
    )  # fmt: skip
    by_image = dict(zip(names, vectors, strict=True))
    threshold, val = score(by_image, val_gallery, val_queries, None, cfg.eval)
    out = {"validation": {**val, "train_s": train_s}}
    for name, (gallery, queries) in galleries.items():
        out[name] = score(by_image, train_photos + gallery, queries, threshold, cfg.eval)[1]
    return out


def markdown(rows: list[tuple[str, int, str, dict[str, float]]]) -> str:
    lines = [
        "| test gallery | classes by | seed | known top-1 | known MAP@5 | new MAP@5 | MAP@5 "
        "| threshold | known / queries |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gallery, seed, class_by, f in rows:
        lines.append(
            f"| {gallery} | {class_by} | {seed} | {f['top1_known']:.3f} | {f['map5_known']:.3f} "
            f"| {f['map5_new']:.3f} | {f['map5']:.3f} | {f['threshold']:.3f} "
            f"| {f['queries_known']} / {f['queries']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    photos = load_catalogue(DataConfig(catalogue=args.catalogue)).photos
    if not any(p.viewpoint for p in photos):
        print(f"{args.catalogue} has no viewpoint labels (whaleid synth --sides 2)")
        return 2
    rows: list[tuple[str, int, str, dict[str, float]]] = []
    results: dict[str, dict] = {}
    for seed in args.seeds:
        for class_by in args.class_by:
            figures = run_one(args, photos, seed, class_by)
            results[f"{class_by}-{seed}"] = figures
            print(f"{class_by} seed {seed}: {json.dumps(figures)}", flush=True)
            rows += [(g, seed, class_by, f) for g, f in figures.items()]
    rows.sort(key=lambda r: (r[0], r[2], r[1]))
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
