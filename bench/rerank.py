"""Local-feature re-ranking (issue 13) with a trained model: global only, local only (LightGlue,
the numpy matcher) and fused, on an identity-disjoint open set; and the CPU cost per query.

Protocol (../shared/data/README.md):
- the catalogue's individuals are split before training (seeded): test individuals, `known`
  (one gallery photo each, queried with up to --queries-per-individual others) and `new`
  (only queried; truth new_individual), never trained on; the rest make the training
  catalogue (capped at --train-individuals);
- the global model is trained on it with configs/tiny.yaml (its own open-set validation
  holds out a quarter of the training individuals), exported by `whaleid export --matcher`;
- calibrations, fusion and every threshold are fitted on that validation by
  `training.rerank_fit.fit_rerank`, export's own code, once per local method; the test
  gallery is the training photos (as in the validation) plus the known test individuals'
  photo, so the validation's thresholds hold at its size;
- test figures: global only (the bundle's kNN, threshold tuned on validation), local only
  (the shortlist ranked by match count, ties in global order, threshold tuned on validation)
  and fused (`app.reranker.Reranker.rerank`, what serving answers with);
- cost: CPU ms per query of the global pipeline (embed + search) and what re-ranking adds
  (keypoint extraction of the query, matching B = 10, 20, 40 shortlisted photos).

    python -m bench.rerank --seed 0                       # DogFaceNet
    python -m bench.rerank --synth --seed 0               # synthetic fins, 1024x768 photos
    python -m bench.rerank --quick                        # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.decode import open_image  # noqa: E402
from app.pipeline import Pipeline  # noqa: E402
from app.reranker import LocalMatcher, Reranker, open_local_matcher  # noqa: E402
from gallery.catalogue import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Photo, read_catalogue  # noqa: E402
from gallery.keypoints import LocalFeatures  # noqa: E402
from gallery.metrics import sweep_thresholds  # noqa: E402
from gallery.rank import NEW  # noqa: E402
from training.evaluate import EmbeddedSet, knn_hits, sweep  # noqa: E402
from training.rerank_fit import (  # noqa: E402
    FUSION_CHOICES,
    OpenSetPhotos,
    PairScores,
    RerankFit,
    embed_open_set,
    fit_rerank,
    search,
    top1_known,
)
from training.splits import EvalSet, build_eval_set  # noqa: E402

DOGFACENET = REPO.parent / "shared" / "data" / "dogfacenet"
TINY = REPO / "configs" / "tiny.yaml"
METHODS = ("lightglue", "mutual_nn")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, default=DOGFACENET, help="catalogue folder")
    p.add_argument("--synth", action="store_true", help="a synthetic catalogue instead of --data")
    p.add_argument("--synth-individuals", type=int, default=160)
    p.add_argument("--synth-photos", type=int, default=5)
    p.add_argument("--synth-size", default="1024x768", help="synthetic photo size WxH")
    p.add_argument("--synth-sides", type=int, default=1, help="faces per fin (1 or 2)")
    p.add_argument(
        "--synth-speckles", type=int, default=0, help="fine marks per face (whaleid synth)"
    )
    p.add_argument("--workdir", type=Path, default=Path("/tmp/whaleid-bench-rerank"))
    p.add_argument("--seed", type=int, default=0, help="split, training and synth seed")
    p.add_argument("--train-individuals", type=int, default=160, help="cap on training dogs")
    p.add_argument("--test-known", type=int, default=40)
    p.add_argument("--test-new", type=int, default=15)
    p.add_argument("--queries-per-individual", type=int, default=2)
    p.add_argument("--epochs", type=int, default=10, help="training epochs (tiny.yaml: 10)")
    p.add_argument("--image-size", type=int, default=96, help="training input size")
    p.add_argument("--extractor", choices=["aliked", "disk"], default="aliked")
    p.add_argument("--side", type=int, default=256, help="letterbox side of the extractor")
    p.add_argument("--keypoints", type=int, default=256)
    p.add_argument("--shortlist", type=int, default=20, help="B for the figures")
    p.add_argument("--cost-shortlists", default="10,20,40", help="B for the cost per query")
    p.add_argument("--cost-queries", type=int, default=6, help="test queries timed per B")
    p.add_argument("--matchers", default="lightglue,mutual_nn", help="local methods to measure")
    p.add_argument(
        "--cost-matchers",
        default="lightglue,mutual_nn",
        help="local methods timed per query (LightGlue's fit costs ~100x the numpy one's on a "
        "CPU: it can be timed without being fitted)",
    )
    p.add_argument(
        "--fusion", choices=FUSION_CHOICES, default="auto", help="fusion fitted (export's choice)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sets, 1 epoch")
    args = p.parse_args(argv)
    args.matchers = [m for m in args.matchers.split(",") if m]
    args.cost_matchers = [m for m in args.cost_matchers.split(",") if m]
    if not args.matchers or set(args.matchers + args.cost_matchers) - set(METHODS):
        p.error(f"--matchers, --cost-matchers: choose among {', '.join(METHODS)}")
    args.cost_shortlists = [int(b) for b in args.cost_shortlists.split(",") if b]
    if args.quick:
        args.train_individuals, args.test_known, args.test_new = 40, 6, 3
        args.epochs, args.shortlist, args.cost_shortlists, args.cost_queries = 1, 4, [4], 2
        args.synth_individuals, args.synth_size = 50, "512x384"
    return args


def catalogue(args: argparse.Namespace) -> Path:
    if not args.synth:
        return Path(args.data)
    from training.synth import make_catalogue

    w, h = (int(v) for v in args.synth_size.split("x"))
    name = f"synth-{args.synth_individuals}x{args.synth_photos}-{w}x{h}-s{args.synth_sides}"
    if args.synth_speckles:
        name += f"-speckles{args.synth_speckles}"
    folder = args.workdir / f"{name}-seed{args.seed}"
    if not (folder / "train.csv").is_file():
        make_catalogue(
            folder,
            individuals=args.synth_individuals,
            photos=args.synth_photos,
            species=1,
            seed=args.seed,
            image_size=(w, h),
            sides=args.synth_sides,
            speckles=args.synth_speckles,
            overwrite=True,
        )
    return folder


@dataclass(frozen=True)
class Split:
    train: Path  # a training catalogue folder: the training individuals' photos only
    test_gallery: list[Photo]  # one photo per known test individual
    test_queries: list[Photo]


def split(args: argparse.Namespace, root: Path, out: Path) -> Split:
    """Test individuals drawn before training; the rest (capped) written as a catalogue that
    shares the photos (links, not copies)."""
    photos = read_catalogue(root).photos
    by_id: dict[str, list[Photo]] = {}
    for photo in photos:
        by_id.setdefault(photo.individual_id, []).append(photo)
    rng = np.random.default_rng(args.seed)
    ids = sorted(i for i, group in by_id.items() if len(group) >= 2)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    known = ids[: args.test_known]
    new = ids[args.test_known : args.test_known + args.test_new]
    held = set(known) | set(new)
    rest = [i for i in sorted(by_id) if i not in held]
    train = sorted(rng.choice(rest, min(args.train_individuals, len(rest)), replace=False))
    gallery, queries = [], []
    for ind in known:
        order = rng.permutation(len(by_id[ind]))
        gallery.append(by_id[ind][order[0]])
        queries += [by_id[ind][j] for j in order[1 : 1 + args.queries_per_individual]]
    for ind in new:
        order = rng.permutation(len(by_id[ind]))
        queries += [by_id[ind][j] for j in order[: args.queries_per_individual]]
    folder = out / "train-catalogue"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        writer.writerows(
            [p.image, p.species, p.individual_id, p.viewpoint or "", p.encounter or ""]
            for ind in train
            for p in by_id[ind]
        )
    for name in ("images", "boxes.csv", "labels"):
        link = folder / name
        if (root / name).exists() and not link.exists():
            link.symlink_to((root / name).resolve(), target_is_directory=name != "boxes.csv")
    return Split(folder, gallery, queries)


def train_and_export(args: argparse.Namespace, train_catalogue: Path, out: Path) -> Path:
    """The tiny recipe on the training individuals, exported with the matcher (its own fit is
    the numpy matcher's: cheap; each method is fitted below by the same code)."""
    from training.config import load_config
    from training.export import MatcherOptions, export_bundle
    from training.loop import train

    run_dir = out / "run"
    if not (run_dir / "evaluation.json").is_file():
        overrides = [
            f"data.catalogue={train_catalogue}",
            f"out={out}",
            f"seed={args.seed}",
            f"optim.epochs={args.epochs}",
            f"data.image_size={args.image_size}",
            # One gallery size (validation and test alike): no curve needed.
            "eval.curve_draws=0",
        ]
        train(load_config(TINY, overrides), run_dir)
    bundle = out / f"bundle-{args.extractor}-{args.side}-{args.keypoints}"
    if not (bundle / "manifest.json").is_file():
        options = MatcherOptions(
            extractor=args.extractor,
            keypoints=args.keypoints,
            side=args.side,
            method="mutual_nn",
            shortlist=args.shortlist,
        )
        export_bundle([run_dir], bundle, providers=["cpu"], matcher=options)
    return bundle


_FEATURE_FIELDS = ("keypoints", "scores", "descriptors", "mask", "frames")


def cached_open_set(pipeline: Pipeline, eval_set: EvalSet, path: Path) -> OpenSetPhotos:
    """embed_open_set, kept in `path` (.npz): a rerun with another matcher or fusion skips
    the keypoints of every photo, which cost most of a run."""
    if path.is_file():
        data = np.load(path)
        if data["gallery"].shape[0] == len(eval_set.gallery) and data["queries"].shape[0] == len(
            eval_set.queries
        ):
            features = [
                LocalFeatures(**{f: data[f"{side}_{f}"] for f in _FEATURE_FIELDS})
                for side in ("gallery", "queries")
            ]
            embedded = EmbeddedSet(eval_set, data["gallery"], data["queries"])
            return OpenSetPhotos(embedded, features[0], features[1])
    photos = embed_open_set(pipeline, eval_set, local=True)
    assert photos.gallery_local is not None and photos.query_local is not None
    arrays: dict[str, Any] = {
        "gallery": photos.embedded.gallery,
        "queries": photos.embedded.queries,
    }
    for side, kept in (("gallery", photos.gallery_local), ("queries", photos.query_local)):
        arrays |= {f"{side}_{f}": getattr(kept, f) for f in _FEATURE_FIELDS}
    np.savez(path, **arrays)
    return photos


def cached_pairs(matcher: LocalMatcher, photos: OpenSetPhotos, path: Path) -> PairScores:
    """PairScores for these photos, starting from the local scores kept in `path` (.npy)."""
    assert photos.query_local is not None and photos.gallery_local is not None
    pairs = PairScores(matcher, photos.query_local, photos.gallery_local)
    if path.is_file():
        known = np.load(path)
        if known.shape == pairs.known.shape:
            pairs.known = known
    return pairs


def test_photos(
    pipeline: Pipeline, val: OpenSetPhotos, run_dir: Path, sp: Split, cache: Path
) -> OpenSetPhotos:
    """The test set embedded as the validation was: its gallery is the validation's training
    photos (already embedded) and the known test individuals' photos."""
    from training.runs import Run

    trained = len(Run(run_dir).splits.train)
    train_photos = val.embedded.eval_set.gallery[:trained]
    own = cached_open_set(pipeline, build_eval_set(sp.test_gallery, sp.test_queries), cache)
    eval_set = build_eval_set(train_photos + sp.test_gallery, sp.test_queries)
    assert val.gallery_local is not None and own.gallery_local is not None
    gallery = np.concatenate([val.embedded.gallery[:trained], own.embedded.gallery])
    local = LocalFeatures.concat([val.gallery_local.take(np.arange(trained)), own.gallery_local])
    return OpenSetPhotos(
        EmbeddedSet(eval_set, gallery, own.embedded.queries), local, own.query_local
    )


def at(scores: np.ndarray, labels: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    result = sweep_thresholds(scores, labels, truth, [threshold])
    return {
        "map5": float(result.map_all[0]),
        "top1_known": top1_known(scores, labels, truth),
        "map5_known": float(result.map_known[0]),
        "map5_new": float(result.map_new[0]),
        "threshold": float(threshold),
    }


def local_only(sims: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Match counts over the shortlist, ties in global order; unmatched slots last."""
    return np.where(np.isnan(local), -1.0, local) + 1e-3 * sims


def measure(
    args: argparse.Namespace,
    method: str,
    pairs: PairScores,
    fit: RerankFit,
    val: OpenSetPhotos,
    test: OpenSetPhotos,
) -> dict[str, dict]:
    """Test figures of local only and fused for one method, thresholds from validation."""
    assert fit.shortlists is not None and test.query_local and test.gallery_local
    v_sims, v_labels, v_local = fit.shortlists
    v_truth = val.embedded.eval_set.query_truth
    ts = test.embedded
    truth = ts.eval_set.query_truth
    labels_g = ts.eval_set.gallery_labels
    sims, index = search(ts.gallery, ts.queries, args.shortlist)
    labels = np.where(index >= 0, labels_g[index.clip(0)], -1)
    local = pairs.scores(index, args.shortlist)

    v_only = local_only(v_sims, v_local)
    grid = np.unique(np.r_[np.quantile(v_only[:, 0], np.linspace(0, 1, 201)), v_only.max() + 1])
    tuned = sweep_thresholds(v_only, v_labels, v_truth, grid).best_threshold
    rows = {f"local only, {method}": at(local_only(sims, local), labels, truth, tuned)}
    reranker = Reranker(pairs.reranker.matcher, fit.spec.fusion)
    fused = reranker.rerank(
        sims, labels, test.query_local, [], fit.spec.threshold, local=(local, [])
    )
    row = at(fused.fused, labels, truth, fit.spec.threshold)
    rows[f"fused, {method} ({fit.spec.fusion.method})"] = row
    return rows


def cpu_ms(fn: Callable[[], object]) -> float:
    """CPU milliseconds `fn` took, every thread of this process."""
    start = time.process_time()
    fn()
    return 1000 * (time.process_time() - start)


def costs(
    args: argparse.Namespace,
    pipeline: Pipeline,
    rerankers: dict[str, Reranker],
    test: OpenSetPhotos,
) -> dict[str, float]:
    """CPU ms per query: the global pipeline (decode, embed, search), the query's keypoints,
    and matching B shortlisted photos with each method (from the stored gallery features)."""
    assert test.gallery_local is not None and test.query_local is not None
    gallery_local, query_local = test.gallery_local, test.query_local
    ts = test.embedded
    paths = [p.path for p in ts.eval_set.queries[: args.cost_queries]]
    n = len(paths)

    def global_only(path: Path) -> None:
        vectors = pipeline.embed([open_image(path)], local=False).vectors
        knn_hits(ts.gallery, ts.eval_set.gallery_labels, vectors, 50)

    def embed(path: Path, local: bool) -> None:
        pipeline.embed([open_image(path)], local=local)

    def match(reranker: Reranker, q: int, b: int) -> None:
        candidates = [gallery_local.take(index[q, :b])]
        reranker.local_scores(query_local.take([q]), candidates, b)

    out = {"global embed+search": sum(cpu_ms(partial(global_only, p)) for p in paths) / n}
    with_local = sum(cpu_ms(partial(embed, p, True)) for p in paths)
    without = sum(cpu_ms(partial(embed, p, False)) for p in paths)
    out["query keypoints"] = (with_local - without) / n
    _, index = search(ts.gallery, ts.queries[:n], max(args.cost_shortlists))
    for method, reranker in rerankers.items():
        for b in args.cost_shortlists:
            total = sum(cpu_ms(partial(match, reranker, q, b)) for q in range(n))
            out[f"{method} B={b}"] = total / n
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.synth and not (args.data / "train.csv").is_file():
        print(f"real data not found at {args.data}: nothing to measure", file=sys.stderr)
        return 2
    from training.runs import Run

    root = catalogue(args)
    out = args.workdir / f"{'synth' if args.synth else root.name}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    sp = split(args, root, out)
    bundle = train_and_export(args, sp.train, out)
    pipeline = Pipeline.from_bundle(bundle, ["cpu"])
    manifest = pipeline.manifest
    assert manifest.matcher is not None
    run = Run(out / "run")
    cfg = run.config.eval
    cache = out / f"cache-{bundle.name}"
    cache.mkdir(exist_ok=True)
    val = cached_open_set(pipeline, run.open_set_split(), cache / "validation.npz")
    test = test_photos(pipeline, val, out / "run", sp, cache / "test.npz")

    ts = test.embedded
    truth = ts.eval_set.query_truth
    tuned = sweep(val.embedded, cfg).best_threshold
    sims, labels = knn_hits(ts.gallery, ts.eval_set.gallery_labels, ts.queries, cfg.neighbours)
    rows = {"global only": at(sims, labels, truth, tuned)}
    validation: dict[str, dict[str, float]] = {}
    matchers = {
        method: open_local_matcher(
            bundle, manifest.matcher, method, ransac_px=0.02 * args.side, providers=["cpu"]
        )
        for method in dict.fromkeys(args.matchers + args.cost_matchers)
    }
    fits = {}
    for method in args.matchers:
        pairs = cached_pairs(matchers[method], val, cache / f"pairs-validation-{method}.npy")
        fit = fit_rerank(
            val,
            matchers[method],
            cfg,
            method=method,  # type: ignore[arg-type]
            shortlist=args.shortlist,
            ransac_px=0.02 * args.side,
            fusion=args.fusion,
            pairs=pairs,
        )
        np.save(cache / f"pairs-validation-{method}.npy", pairs.known)
        validation[method] = fit.figures
        test_pairs = cached_pairs(matchers[method], test, cache / f"pairs-test-{method}.npy")
        rows |= measure(args, method, test_pairs, fit, val, test)
        np.save(cache / f"pairs-test-{method}.npy", test_pairs.known)
        fits[method] = fit
    # Timing matches only: a method that was not fitted borrows a fusion it never reads.
    any_fusion = next(iter(fits.values())).spec.fusion
    rerankers = {
        m: Reranker(matchers[m], fits[m].spec.fusion if m in fits else any_fusion)
        for m in args.cost_matchers
    }
    cost = costs(args, pipeline, rerankers, test)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "bundle": str(bundle),
        "test": {
            "queries": len(truth),
            "new": int((truth == NEW).sum()),
            "gallery": len(ts.gallery),
        },
        "validation": validation,
        "keypoints_per_photo": float(test.query_local.mask.sum(axis=1).mean()),  # type: ignore[union-attr]
        "cpu_ms_per_query": cost,
        "methods": rows,
    }
    name = f"rerank-{'synth' if args.synth else root.name}-B{args.shortlist}-seed{args.seed}.json"
    (args.workdir / name).write_text(json.dumps(result, indent=2))
    print(json.dumps({"test": result["test"], "cpu_ms_per_query": cost}, indent=2))
    print(f"{'method':34} {'MAP@5':>6} {'top1 known':>10} {'MAP@5 new':>9} {'thr':>7}")
    for method, r in rows.items():
        print(
            f"{method:34} {r['map5']:6.3f} {r['top1_known']:10.3f} {r['map5_new']:9.3f} "
            f"{r['threshold']:7.3f}"
        )
    print(f"written to {args.workdir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
