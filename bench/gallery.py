"""Gallery at scale: flat against HNSW, and cold start from a snapshot against from the store.

For N random 512-d unit vectors (the brief's worst case: uniform directions, no structure):
- query latency, top-50, batch 1 and batch 64, flat (exact) and HNSW at several efSearch;
- HNSW recall@50 against flat, for uniform random queries (no true near neighbours: the
  hardest case for a graph) and for "known animal" queries (a gallery vector plus noise,
  cosine ≈ 0.8 to it: what a new photo of a registered individual looks like), where recall@1
  is reported too;
- cold start of a `Gallery`: from the SQLite store (read every vector, build the index) and
  from a snapshot file (flat and HNSW), each followed by a catch-up check.
The HNSW build is timed in chunks; if it would run past --hnsw-max-minutes it stops and the
HNSW figures are for the size it reached (stated in the output).

    nice python -m bench.gallery                       # 1,000,000 vectors (about 30 min)
    python -m bench.gallery --quick                    # a smoke run (the test suite runs it)
    python -m bench.gallery --results bench/RESULTS.md # also write the section there
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    # Run as a script, this folder comes first on sys.path and this file would shadow the
    # `gallery` package: look in the repository root instead.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import faiss
import numpy as np

from gallery.gallery import Gallery
from gallery.index import VectorIndex
from gallery.labels import Labels
from gallery.records import NewEntry
from gallery.snapshot import SnapshotHeader, write_snapshot
from gallery.store import open_store

FINGERPRINT = "b" * 64
HITS = 50
SECTION = "## Gallery (issue 6)"
PHOTOS_PER_INDIVIDUAL = 4


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def unit(n: int, dim: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """n random unit vectors, generated in chunks (no float64 copy of the whole matrix)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def near(vectors: np.ndarray, n: int, seed: int, noise: float = 0.75) -> np.ndarray:
    """Queries close to random gallery vectors (cosine ≈ 1/sqrt(1 + noise²) ≈ 0.8)."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), n, replace=False)
    q = vectors[picks] + noise * unit(n, vectors.shape[1], seed + 1)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def latency_ms(search: Callable[[np.ndarray], object], queries: np.ndarray, batch: int) -> float:
    """Median wall time of one search call of `batch` queries (after one warm-up call)."""
    batches = [queries[i : i + batch] for i in range(0, len(queries) - batch + 1, batch)]
    search(batches[0])
    times = []
    for b in batches:
        start = time.perf_counter()
        search(b)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def recall(approx: np.ndarray, exact: np.ndarray, k: int) -> float:
    return float(
        np.mean([len(set(a[:k]) & set(e[:k])) / k for a, e in zip(approx, exact, strict=True)])
    )


def fill_store(url: str, vectors: np.ndarray, batch: int = 20_000) -> tuple[float, np.ndarray]:
    """Write every vector as an image of individual i // 4; returns (seconds, image ids)."""
    store = open_store(url)
    start = time.perf_counter()
    ids: list[int] = []
    for first in range(0, len(vectors), batch):
        entries = [
            NewEntry(
                individual_id=f"ind-{i // PHOTOS_PER_INDIVIDUAL}",
                species="orca",
                content_hash=f"{i:064x}",
                filename=f"{i}.jpg",
                encounter=None,
                box=None,
                vector=vectors[i],
            )
            for i in range(first, min(first + batch, len(vectors)))
        ]
        ids += [r.image_id for r in store.add_images(entries=entries, fingerprint=FINGERPRINT) if r]
        if first // batch % 10 == 0:
            log(f"store: {first + len(entries):,} rows")
    store.set_meta(values={"fingerprint": FINGERPRINT, "dim": str(vectors.shape[1])})
    seconds = time.perf_counter() - start
    store.close()
    return seconds, np.asarray(ids, dtype=np.int64)


def build_hnsw(
    ids: np.ndarray, vectors: np.ndarray, m: int, ef_construction: int, max_minutes: float
) -> tuple[VectorIndex, float, int]:
    """Add in chunks; stop early when the projected total exceeds max_minutes."""
    index = VectorIndex(vectors.shape[1], "hnsw", hnsw_m=m, ef_construction=ef_construction)
    chunk = max(1000, len(ids) // 50)
    start = time.perf_counter()
    done = 0
    while done < len(ids):
        index.add(ids[done : done + chunk], vectors[done : done + chunk])
        done = min(done + chunk, len(ids))
        elapsed = time.perf_counter() - start
        projected = elapsed * len(ids) / done
        log(f"hnsw: {done:,}/{len(ids):,} in {elapsed:.0f} s (projected {projected / 60:.1f} min)")
        # Judge the projection only once it rests on a fair share of the build (a fifth): on
        # a shared host the rate of the first chunks says little.
        settled = done >= len(ids) // 5
        if done < len(ids) and settled and projected > 60 * max_minutes:
            log(f"hnsw: stopping at {done:,}: the full build would take over {max_minutes} min")
            break
    return index, time.perf_counter() - start, done


def run(args: argparse.Namespace) -> dict[str, Any]:
    faiss.omp_set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-gallery-"))
    workdir.mkdir(parents=True, exist_ok=True)
    n, dim = args.n, args.dim
    result: dict[str, Any] = {"n": n, "dim": dim, "threads": args.threads}
    result["loadavg_start"] = _loadavg()
    try:
        log(f"generating {n:,} × {dim} vectors")
        vectors = unit(n, dim, seed=0)
        uniform_q = unit(args.queries, dim, seed=1)
        near_q = near(vectors, args.queries, seed=2)

        url = f"sqlite:///{workdir / 'gallery.db'}"
        if args.reuse_store and (workdir / "gallery.db").exists():
            # The same seed gives the same vectors; a fresh store numbers images 1..n.
            store = open_store(url)
            assert store.count_embeddings(fingerprint=FINGERPRINT) == n, "store of another n"
            store.close()
            result["store_fill_s"] = None
            ids = np.arange(1, n + 1, dtype=np.int64)
            log("store reused")
        else:
            seconds, ids = fill_store(url, vectors)
            result["store_fill_s"] = seconds
            log(f"store filled in {seconds:.0f} s")

        flat = VectorIndex(dim, "flat")
        start = time.perf_counter()
        flat.add(ids, vectors)
        result["flat_build_s"] = time.perf_counter() - start
        search = partial(flat.search, k=HITS)
        result["flat"] = {
            "b1_ms": latency_ms(search, uniform_q[: args.b1_queries], 1),
            "b64_ms": latency_ms(search, uniform_q, 64),
        }
        _, exact_uniform = flat.search(uniform_q, HITS)
        _, exact_near = flat.search(near_q, HITS)
        log(f"flat: {result['flat']}")
        del flat

        hnsw, seconds, built = build_hnsw(
            ids, vectors, args.hnsw_m, args.ef_construction, args.hnsw_max_minutes
        )
        result["hnsw_build"] = {
            "m": args.hnsw_m,
            "ef_construction": args.ef_construction,
            "size": built,
            "seconds": seconds,
        }
        if built < n:  # exact answers over the same prefix
            prefix = VectorIndex(dim, "flat")
            prefix.add(ids[:built], vectors[:built])
            _, exact_uniform = prefix.search(uniform_q, HITS)
            near_q = near(vectors[:built], args.queries, seed=2)
            _, exact_near = prefix.search(near_q, HITS)
            del prefix
        result["hnsw"] = []
        for ef in args.ef_search:
            hnsw.ef_search = ef
            _, got_uniform = hnsw.search(uniform_q, HITS)
            _, got_near = hnsw.search(near_q, HITS)
            row = {
                "ef_search": ef,
                "b1_ms": latency_ms(partial(hnsw.search, k=HITS), uniform_q[: args.b1_queries], 1),
                "b64_ms": latency_ms(partial(hnsw.search, k=HITS), uniform_q, 64),
                "recall50_uniform": recall(got_uniform, exact_uniform, HITS),
                "recall50_near": recall(got_near, exact_near, HITS),
                "recall1_near": recall(got_near, exact_near, 1),
            }
            result["hnsw"].append(row)
            log(f"hnsw: {row}")

        # Cold starts. HNSW from the store would be the build above; from a snapshot:
        store = open_store(url)
        store_uuid, head = store.info().uuid, store.head()
        store.close()
        if built == n:
            labels = Labels()
            labels.assign(ids, np.arange(n, dtype=np.int32) // PHOTOS_PER_INDIVIDUAL)
            for i in range(0, n, PHOTOS_PER_INDIVIDUAL):
                labels.code(f"ind-{i // PHOTOS_PER_INDIVIDUAL}", "orca")
            hnsw_snap = workdir / "hnsw.snap"
            header = SnapshotHeader(store_uuid, FINGERPRINT, dim, "hnsw", head, hnsw.size)
            write_snapshot(hnsw_snap, header, hnsw, labels)
        del hnsw, vectors

        cold: dict[str, float] = {}
        start = time.perf_counter()
        gallery = Gallery.open(url, fingerprint=FINGERPRINT, dim=dim, photos_dir=workdir / "p")
        cold["flat_from_store_s"] = time.perf_counter() - start
        assert gallery.size == n and gallery.loaded_from == "store"
        cold["gallery_search_b1_ms"] = latency_ms(
            lambda q: gallery.search(q, threshold=0.5, hits=HITS), uniform_q[: args.b1_queries], 1
        )
        cold["gallery_search_b64_ms"] = latency_ms(
            lambda q: gallery.search(q, threshold=0.5, hits=HITS), uniform_q, 64
        )
        snap = workdir / "flat.snap"
        start = time.perf_counter()
        gallery.save_snapshot(snap)
        cold["flat_snapshot_write_s"] = time.perf_counter() - start
        cold["flat_snapshot_gb"] = snap.stat().st_size / 1e9
        gallery.close()
        del gallery
        start = time.perf_counter()
        gallery = Gallery.open(url, fingerprint=FINGERPRINT, dim=dim, snapshot=snap)
        cold["flat_from_snapshot_s"] = time.perf_counter() - start
        assert gallery.size == n and gallery.loaded_from == "snapshot"
        gallery.store.close()  # no snapshot rewrite: nothing changed
        del gallery
        if built == n:
            start = time.perf_counter()
            gallery = Gallery.open(
                url, fingerprint=FINGERPRINT, dim=dim, snapshot=hnsw_snap, index="hnsw"
            )
            cold["hnsw_from_snapshot_s"] = time.perf_counter() - start
            assert gallery.size == n and gallery.loaded_from == "snapshot"
            gallery.store.close()
            del gallery
        result["cold_start"] = cold
        result["loadavg_end"] = _loadavg()
        log(f"cold start: {cold}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _loadavg() -> str:
    """The host's 1/5/15-minute load: on a shared machine, context for every timing."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    n, build, cold = result["n"], result["hnsw_build"], result["cold_start"]
    lines = [
        f"machine: {platform.machine()}, Python {platform.python_version()}, "
        f"faiss {faiss.__version__}, {result['threads']} threads",
        f"{n:,} random unit vectors × {result['dim']}; top-{HITS}; "
        f"{args.queries} queries (batch 1: first {args.b1_queries})",
        f"load average (1/5/15 min) at start: {result['loadavg_start']}, "
        f"at end: {result['loadavg_end']}",
        (
            f"store fill (SQLite, 20,000 per transaction): {result['store_fill_s']:.0f} s"
            if result["store_fill_s"] is not None
            else "store fill: reused from an earlier run in --workdir"
        ),
        "",
        "| index | build (s) | batch 1 (ms) | batch 64 (ms) | recall@50 uniform | "
        "recall@50 near | recall@1 near |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| flat (exact) | {result['flat_build_s']:.1f} | {result['flat']['b1_ms']:.1f} | "
        f"{result['flat']['b64_ms']:.1f} | 1 | 1 | 1 |",
    ]
    for i, row in enumerate(result["hnsw"]):
        built = f"{build['seconds']:.0f}" if i == 0 else ""
        lines.append(
            f"| HNSW M={build['m']} efC={build['ef_construction']} efSearch={row['ef_search']} "
            f"| {built} | {row['b1_ms']:.2f} | {row['b64_ms']:.1f} | "
            f"{row['recall50_uniform']:.3f} | {row['recall50_near']:.3f} | "
            f"{row['recall1_near']:.3f} |"
        )
    if build["size"] < n:
        lines.append(
            f"HNSW stopped at {build['size']:,} vectors (projected build past "
            f"{args.hnsw_max_minutes} min); its recall is against flat over the same vectors."
        )
    lines += [
        "",
        "| cold start of a Gallery | seconds |",
        "| --- | ---: |",
        f"| flat, from the store (read {n:,} vectors, build) | {cold['flat_from_store_s']:.1f} |",
        f"| flat, from a snapshot ({cold['flat_snapshot_gb']:.2f} GB; written in "
        f"{cold['flat_snapshot_write_s']:.1f} s) | {cold['flat_from_snapshot_s']:.1f} |",
    ]
    if "hnsw_from_snapshot_s" in cold:
        lines.append(f"| HNSW, from a snapshot | {cold['hnsw_from_snapshot_s']:.1f} |")
        lines.append(f"| HNSW, from the store (= the build) | {build['seconds']:.0f} |")
    if args.note:
        lines += ["", *args.note]
    lines.append(
        f"Gallery.search (flat, incl. per-individual ranking): batch 1 "
        f"{cold['gallery_search_b1_ms']:.1f} ms, batch 64 {cold['gallery_search_b64_ms']:.1f} ms"
    )
    return "\n".join(lines)


def write_section(path: Path, body: str, command: str) -> None:
    """Replace (or append) this benchmark's section, leaving the others alone."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = (
        f"{SECTION}\n\n`{command}` — {time.strftime('%Y-%m-%d')}. See the script's docstring "
        f"for what is measured.\n\n```\n{body}\n```\n"
    )
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=640)
    parser.add_argument("--b1-queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=64)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256, 512])
    parser.add_argument("--hnsw-max-minutes", type=float, default=30.0)
    parser.add_argument("--workdir", type=Path, default=None, help="kept when given")
    parser.add_argument("--results", type=Path, default=None, help="write the section here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--reuse-store", action="store_true", help="keep --workdir's store")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    parser.add_argument("--quick", action="store_true", help="2,000 vectors: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.queries, args.b1_queries, args.ef_search = 2_000, 128, 8, [64]
    result = run(args)
    body = report(result, args)
    print(body)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if args.results:
        command = "python -m bench.gallery" + (" --quick" if args.quick else "")
        write_section(args.results, body, command)
    return result


if __name__ == "__main__":
    main()
