"""Open-set MAP@5 on real photos (DogFaceNet): plain ArcFace vs sub-center + dynamic margins,
and the latter with flip TTA, each trained with the same budget.

Protocol (../shared/data/README.md), identity-disjoint:
- a share of the individuals is the test set, never trained on: some get one photo in the
  gallery and are queried with the rest, the others are not in the gallery at all (truth
  new_individual);
- the rest is the training catalogue. `whaleid train` holds out its own open-set validation
  individuals from it and the new_individual threshold is tuned there, never on test queries;
- the test gallery also holds every photo of the training catalogue (the known individuals).

    python -m bench.accuracy                   # the full run (see bench/RESULTS.md)
    python -m bench.accuracy --quick           # smoke run: tiny subset, tiny model, < 1 min
    python -m bench.accuracy --variant 'old=' --variant 'smooth=head.label_smoothing=0.1'
                                               # recipes against each other (config overrides)
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gallery.metrics import sweep_thresholds  # noqa: E402
from gallery.rank import NEW, best_per_individual  # noqa: E402
from training.catalogue import Photo, load_catalogue  # noqa: E402
from training.config import DataConfig, EvalConfig, TrainConfig, load_config  # noqa: E402
from training.embed import embed_images  # noqa: E402
from training.evaluate import knn_hits, sweep_grid  # noqa: E402
from training.loop import train  # noqa: E402
from training.runs import Run  # noqa: E402
from training.splits import build_eval_set, split_open_set  # noqa: E402

DOGFACENET = REPO.parent / "shared" / "data" / "dogfacenet"


@dataclass(frozen=True)
class Variant:
    name: str
    head: list[str]  # overrides
    flip_tta: bool
    trains_as: str  # variants that share a trained model evaluate it differently


VARIANTS = (
    Variant("(a) ArcFace", ["head.kind=arcface", "head.dynamic_margin=false"], False, "a"),
    Variant(
        "(b) sub-center + dynamic margins",
        ["head.kind=subcenter", "head.subcenters=3", "head.dynamic_margin=true"],
        False,
        "b",
    ),
    Variant("(c) (b) + flip TTA", [], True, "b"),
)


def parse_variant(text: str) -> Variant:
    """'NAME=key=value key=value' → a variant trained with those overrides, no flip TTA."""
    name, sep, overrides = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=OVERRIDES")
    return Variant(name.strip(), overrides.split(), False, name.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DOGFACENET, help="catalogue folder")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/whaleid-bench-accuracy"))
    p.add_argument("--individuals", type=int, default=300, help="subset of individuals")
    p.add_argument("--test-fraction", type=float, default=0.25)
    p.add_argument("--new-fraction", type=float, default=0.3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--pretrained", default="efficientnet-lite")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--lr", type=float, help="backbone learning rate (default 1e-3 pretrained, 3e-3 not)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--variant",
        dest="variants",
        action="append",
        type=parse_variant,
        metavar="NAME=OVERRIDES",
        help="train this instead of the default variants: a name, '=', then space-separated "
        "config overrides, e.g. 'smoothing=head.label_smoothing=0.1' (repeatable)",
    )
    p.add_argument("--quick", action="store_true", help="tiny subset and model: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.individuals, args.epochs, args.image_size = 40, 1, 32
        args.backbone, args.pretrained, args.batch_size = "test_efficientnet_gn", "", 16
    return args


def subset_catalogue(
    args: argparse.Namespace,
) -> tuple[Path, list[Photo], list[Photo], list[Photo]]:
    """Pick the individuals, split off the test ones, write the training catalogue's CSV.

    Returns (training catalogue folder, its photos, test gallery photos, test queries)."""
    with (args.data / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted({r["individual_id"] for r in rows})
    rng = np.random.default_rng(args.seed)
    chosen = set(rng.choice(names, size=min(args.individuals, len(names)), replace=False))
    folder = args.workdir / "catalogue"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "all.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "species", "individual_id"])
        writer.writeheader()
        writer.writerows(r for r in rows if r["individual_id"] in chosen)
    data = DataConfig(catalogue=folder, csv="all.csv", images=str(args.data / "images"))
    photos = load_catalogue(data).photos
    train_photos, test = split_open_set(photos, args.test_fraction, args.new_fraction, rng)
    with (folder / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "species", "individual_id"])
        writer.writerows((p.image, p.species, p.individual_id) for p in train_photos)
    by_name = {p.image: p for p in photos}
    test_gallery = [by_name[n] for n in test.gallery]
    test_queries = [by_name[n] for n in test.queries]
    return folder, train_photos, test_gallery, test_queries


def config_for(args: argparse.Namespace, folder: Path, variant: Variant) -> TrainConfig:
    overrides = [
        f"data.catalogue={folder}",
        f"data.images={args.data / 'images'}",
        f"data.image_size={args.image_size}",
        "data.fold=null",  # train on every photo of the training individuals
        "data.open_set_fraction=0.2",
        f"model.backbone={args.backbone}",
        f"model.pretrained={args.pretrained or 'null'}",
        f"optim.epochs={args.epochs}",
        f"optim.batch_size={args.batch_size}",
        f"optim.lr={args.lr or (0.001 if args.pretrained else 0.003)}",
        "optim.warmup_epochs=0.5",
        "eval.every=0",
        "eval.at_end=false",  # this script tunes and tests itself, embedding each photo once
        f"threads={args.threads}",
        "workers=0",
        f"seed={args.seed}",
        f"out={args.workdir / 'runs'}",
        f"name={variant.trains_as}",
        *variant.head,
    ]
    return load_config(REPO / "configs" / "base.yaml", overrides)


def embed_all(run: Run, photos: list[Photo], flip_tta: bool) -> dict[str, np.ndarray]:
    model = run.load_embedder("best")
    cfg = run.config
    vectors = embed_images(
        model, photos, run.transform(), flip_tta=flip_tta, batch_size=64,
        padding=cfg.data.box_padding,
    )  # fmt: skip
    return {p.image: v for p, v in zip(photos, vectors, strict=True)}


def score(
    vectors: dict[str, np.ndarray], gallery: list[Photo], queries: list[Photo],
    thresholds: np.ndarray | None, cfg: EvalConfig,
) -> tuple[float, dict[str, float]]:  # fmt: skip
    """(best threshold, figures there) over `thresholds` (None: a fine sweep)."""
    eval_set = build_eval_set(gallery, queries)
    g = np.stack([vectors[p.image] for p in gallery])
    q = np.stack([vectors[p.image] for p in queries])
    sims, labels = knn_hits(g, eval_set.gallery_labels, q, cfg.neighbours, eval_set.allowed)
    grid = sweep_grid(sims, cfg.threshold_step) if thresholds is None else thresholds
    result = sweep_thresholds(sims, labels, eval_set.query_truth, grid)
    # Known top-1: the best-scored individual is the truth, whatever the threshold.
    truth = eval_set.query_truth
    known = truth != NEW
    codes, _, _ = best_per_individual(sims, labels)
    top1 = float((codes[known, 0] == truth[known]).mean()) if known.any() else float("nan")
    return result.best_threshold, {**result.at(result.best_threshold), "top1_known": top1}


def evaluate(
    run: Run, train_photos: list[Photo], test: tuple[list[Photo], list[Photo]], flip_tta: bool
) -> dict[str, float]:
    """Tune on the run's open-set validation, then score the test queries at that threshold.

    The test gallery is the whole training catalogue (the known individuals) plus one photo of
    each test gallery individual."""
    test_gallery, test_queries = test
    splits = run.splits
    by_name = {p.image: p for p in run.photos}
    started = time.perf_counter()
    vectors = embed_all(run, train_photos + test_gallery + test_queries, flip_tta)
    val_gallery = [by_name[n] for n in splits.train + splits.open_set.gallery]
    val_queries = [by_name[n] for n in splits.open_set.queries]
    threshold, val = score(vectors, val_gallery, val_queries, None, run.config.eval)
    _, figures = score(
        vectors, train_photos + test_gallery, test_queries, np.array([threshold]), run.config.eval
    )
    return {
        **figures,
        "val_map5": val["map5"],
        "embed_eval_s": time.perf_counter() - started,
    }


def markdown(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = [
        "| model | MAP@5 all | known | new | known top-1 | threshold (tuned on val) | val MAP@5 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, f in rows:
        lines.append(
            f"| {name} | {f['map5']:.4f} | {f['map5_known']:.4f} | {f['map5_new']:.4f} "
            f"| {f['top1_known']:.4f} | {f['threshold']:.3f} | {f['val_map5']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data / "train.csv").is_file():
        print(f"skipped: no catalogue at {args.data} (see ../shared/data/README.md)")
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    folder, train_photos, test_gallery, test_queries = subset_catalogue(args)
    n_new = len({p.individual_id for p in test_queries} - {p.individual_id for p in test_gallery})
    print(
        f"{len(train_photos)} training photos of "
        f"{len({p.individual_id for p in train_photos})} individuals; test: "
        f"{len(test_gallery)} gallery individuals, {len(test_queries)} queries "
        f"({n_new} individuals not in the gallery)",
        flush=True,
    )
    rows: list[tuple[str, dict[str, float]]] = []
    trained: dict[str, tuple[Run, float]] = {}
    for variant in args.variants or VARIANTS:
        if variant.trains_as not in trained:
            t0 = time.perf_counter()
            run = Run(train(config_for(args, folder, variant), None))
            trained[variant.trains_as] = (run, time.perf_counter() - t0)
        run, train_s = trained[variant.trains_as]
        figures = evaluate(run, train_photos, (test_gallery, test_queries), variant.flip_tta)
        figures["train_s"] = train_s
        rows.append((variant.name, figures))
        print(f"{variant.name}: {json.dumps(figures)}", flush=True)
    print(
        f"\n{args.backbone} ({args.pretrained or 'no pretrained weights'}), {args.image_size} px, "
        f"{args.epochs} epochs, batch {args.batch_size}, lr {run.config.optim.lr:g}, "
        f"{args.individuals} individuals, "
        f"seed {args.seed}; total {time.perf_counter() - started:.0f} s"
    )
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
