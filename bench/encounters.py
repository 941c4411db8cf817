"""One photo against encounters of 2 and 3 photos, and which fusion of their scores.

Protocol, on individuals the bundle was never trained on (a catalogue of another synth seed,
or any catalogue the bundle has not seen): the individuals are split, by a seed, into a
validation half and a test half. In each half 70% are known (one random photo each is the
gallery) and 30% are new (not in the gallery: truth new_individual); every other photo is a
query. Each individual's query photos, shuffled, are cut into encounters of k photos (the same
photos for every k; a remainder is dropped). Every photo is embedded by the bundle's own
pipeline (detector crop, ensemble, flip), searched exactly (top 50), and an encounter's rows are
fused by gallery.encounter.fuse and ranked by gallery.rank, as the service does.

For each k and fusion (max, mean, top2): the test figures at the served threshold (what
/identify uses, `encounter_threshold`: the bundle's for the test gallery's size plus its
offset for k photos, tuned for the service's fusion, so the other fusions' served rows only
show what that threshold does to them), and at the threshold best on the validation half for
that k and fusion. The fusion is chosen on validation; test queries only score.

    nice python -m bench.encounters --bundle BUNDLE --catalogue CAT [--json out.json]
    # a real catalogue the bundle was partly trained on: drop its training individuals
    nice python -m bench.encounters --bundle B --catalogue ../shared/data/dogfacenet \
        --exclude RUN/train-catalogue --individuals 500
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from app.decode import open_image
from app.encounters import encounter_threshold
from app.pipeline import Pipeline
from gallery.batches import chunks
from gallery.catalogue import Photo, read_catalogue
from gallery.encounter import FUSIONS, Fusion, fuse
from gallery.metrics import sweep_thresholds
from gallery.rank import NEW, rank

__all__ = ["main"]

HITS = 50


def _embed(pipeline: Pipeline, paths: list[Path], batch: int = 32) -> np.ndarray:
    out = [
        pipeline.embed([open_image(p) for p in part], local=False).vectors
        for part in chunks(paths, batch)
    ]
    return np.concatenate(out).astype(np.float32)


def _half(
    vectors: np.ndarray, owner: np.ndarray, members: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, int]]]:
    """One half's gallery (vectors, codes) and its queries: (photo indices, truth code)."""
    members = rng.permutation(members)
    known = set(members[: round(0.7 * len(members))].tolist())
    gallery_rows: list[int] = []
    queries: list[tuple[np.ndarray, int]] = []
    for m in members:
        photos = rng.permutation(np.flatnonzero(owner == m))
        if m in known:
            gallery_rows.append(int(photos[0]))
            photos = photos[1:]
        queries.append((photos, int(m) if m in known else NEW))
    rows = np.asarray(gallery_rows)
    return vectors[rows], owner[rows], queries


def _rows(
    vectors: np.ndarray,
    g_vectors: np.ndarray,
    g_codes: np.ndarray,
    queries: list[tuple[np.ndarray, int]],
    k: int,
    fusion: Fusion,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fused hit rows of every encounter of k photos: sims, labels (padded), truth."""
    sims_all = vectors @ g_vectors.T
    top = min(HITS, g_vectors.shape[0])
    fused: list[tuple[np.ndarray, np.ndarray]] = []
    truth: list[int] = []
    for photos, code in queries:
        for start in range(0, len(photos) - k + 1, k):
            group = photos[start : start + k]
            s = sims_all[group]
            order = np.argsort(-s, axis=1)[:, :top]
            hits = fuse(np.take_along_axis(s, order, axis=1), g_codes[order], fusion)
            fused.append((hits.sims[0], hits.labels[0]))
            truth.append(code)
    width = max(len(s) for s, _ in fused)
    sims = np.full((len(fused), width), -np.inf, dtype=np.float32)
    labels = np.full((len(fused), width), -1, dtype=np.int64)
    for i, (s, lab) in enumerate(fused):
        sims[i, : len(s)], labels[i, : len(lab)] = s, lab
    return sims, labels, np.asarray(truth)


def _figures(sims: np.ndarray, labels: np.ndarray, truth: np.ndarray, t: float) -> dict[str, Any]:
    at = sweep_thresholds(sims, labels, truth, [t]).at(t)
    known = truth != NEW
    first = rank(sims[known], labels[known], t, 5).codes[:, 0]
    return {
        "threshold": round(float(t), 3),
        "known_top1": float((first == truth[known]).mean()),
        "known_map5": at["map5_known"],
        "new_map5": at["map5_new"],
        "map5": at["map5"],
        "encounters": len(truth),
    }


def _one_seed(
    pipeline: Pipeline, vectors: np.ndarray, owner: np.ndarray, sizes: list[int], seed: int
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    members = rng.permutation(int(owner.max()) + 1)
    half = len(members) // 2
    validation = _half(vectors, owner, members[:half], rng)
    test = _half(vectors, owner, members[half:], rng)
    grid = np.round(np.arange(-0.2, 1.0001, 0.01), 4)
    results: list[dict[str, Any]] = []
    for k in sizes:
        served = encounter_threshold(pipeline.manifest, None, len(test[0]), k)
        for fusion in FUSIONS if k > 1 else FUSIONS[:1]:
            val = _rows(vectors, validation[0], validation[1], validation[2], k, fusion)
            sweep = sweep_thresholds(*val, grid)
            test_rows = _rows(vectors, test[0], test[1], test[2], k, fusion)
            for kind, t in (("served", served), ("validation-tuned", sweep.best_threshold)):
                row: dict[str, Any] = {"seed": seed, "photos": k, "kind": kind}
                row["fusion"] = fusion if k > 1 else "-"
                row.update(_figures(*test_rows, t))
                row["validation_map5"] = float(sweep.at(t)["map5"])
                results.append(row)
    return results


def _unseen(root: Path, exclude: list[Path], individuals: int) -> list[Photo]:
    """The catalogue's photos of individuals no `exclude` catalogue holds; with `individuals`,
    a subset of that many drawn with a fixed seed (the same subset on every run)."""
    trained = {p.individual_id for folder in exclude for p in read_catalogue(folder).photos}
    photos = [p for p in read_catalogue(root).photos if p.individual_id not in trained]
    if individuals:
        names = sorted({p.individual_id for p in photos})
        rng = np.random.default_rng(0)
        keep = set(rng.choice(names, min(individuals, len(names)), replace=False).tolist())
        photos = [p for p in photos if p.individual_id in keep]
    return photos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument(
        "--catalogue", type=Path, required=True, help="individuals never trained on"
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds")
    parser.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="a catalogue whose individuals the bundle was trained on: left out (repeatable)",
    )
    parser.add_argument(
        "--individuals", type=int, default=0, help="a seeded subset of this many (0: all)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    photos = _unseen(args.catalogue, args.exclude, args.individuals)
    names = sorted({p.individual_id for p in photos})
    code = {name: i for i, name in enumerate(names)}
    owner = np.asarray([code[p.individual_id] for p in photos])
    pipeline = Pipeline.from_bundle(args.bundle)
    vectors = _embed(pipeline, [p.path for p in photos])
    results = [
        r for seed in args.seeds for r in _one_seed(pipeline, vectors, owner, args.sizes, seed)
    ]
    print(f"{len(names)} individuals, {len(vectors)} photos, split seeds {args.seeds}")
    print("test figures: mean (min-max) over the seeds")
    columns = ("known_top1", "known_map5", "new_map5", "map5", "validation_map5")
    print(
        "| photos | fusion | threshold | known top-1 | known MAP@5 | new MAP@5 | MAP@5 "
        "| val MAP@5 |"
    )
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    keys = dict.fromkeys((r["photos"], r["fusion"], r["kind"]) for r in results)
    for k, fusion, kind in keys:
        rows = [r for r in results if (r["photos"], r["fusion"], r["kind"]) == (k, fusion, kind)]
        cells = []
        for c in columns:
            v = np.asarray([r[c] for r in rows])
            cells.append(f"{v.mean():.3f} ({v.min():.2f}-{v.max():.2f})")
        t = np.asarray([r["threshold"] for r in rows])
        print(f"| {k} | {fusion} | {kind} {t.mean():.2f} | " + " | ".join(cells) + " |")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
