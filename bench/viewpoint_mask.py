"""A viewpoint filter as a mask over one index, against one index per viewpoint.

`IndexReplica.shortlist(viewpoint=)` searches the gallery's one index with a faiss ID selector
(a bitmap of the compatible photos: that viewpoint or none recorded), as the species filter
does. The alternative is an index per viewpoint (each with the unknown-viewpoint photos too).
This times both on random unit vectors, for the flat index and IVF-SQ8 (what `auto` picks at
and above 100k): ms per query at batch 1 and 16, median of repeats, top 50.

    nice python -m bench.viewpoint_mask --n 100000 --dim 256
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from gallery.index import VectorIndex
from gallery.labels import Labels

__all__ = ["main"]


def _timed(
    index: VectorIndex, queries: np.ndarray, allowed: np.ndarray | None, repeats: int
) -> float:
    """Median ms of one top-50 search of these queries."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        index.search(queries, 50, allowed)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="gallery photos")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf-sq8"])
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(args.n, dtype=np.int64)
    # Two sides and a fifth unknown: a "left" query compares 60% of the gallery.
    sides = rng.choice(["left", "right", None], size=args.n, p=[0.4, 0.4, 0.2])
    labels = Labels()
    labels.assign(ids, np.zeros(args.n, dtype=np.int32))
    labels.set_viewpoints(ids, list(sides))
    mask = labels.viewpoint_mask("left")
    queries = rng.standard_normal((16, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    print(f"n={args.n} dim={args.dim}: a left query compares {mask.sum()} photos")
    print("| index | batch | unfiltered | mask (one index) | index per viewpoint |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for kind in args.kinds:
        params = {"min_train": 10_000}
        whole = VectorIndex.build(args.dim, kind, ids, vectors, **params)
        part = VectorIndex.build(args.dim, kind, ids[mask], vectors[mask], **params)
        for batch in (1, 16):
            q = queries[:batch]
            plain = _timed(whole, q, None, args.repeats)
            masked = _timed(whole, q, mask, args.repeats)
            split = _timed(part, q, None, args.repeats)
            print(f"| {kind} | {batch} | {plain:.2f} ms | {masked:.2f} ms | {split:.2f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
