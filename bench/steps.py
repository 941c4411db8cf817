"""Two steps of every photo's pipeline, old and new side by side in one run.

- **The embedder graph**: the run's model exported as torch's exporter writes it, its "same"
  padding computed from each input's shape, and lean, as `whaleid export` now writes it
  (training.fixed_padding, then training.graph_slim). ms per call at batch 1, 2 (one photo
  with flip TTA) and 8, on the run's catalogue crops, the two sessions timed in turns round by
  round so that drift on a shared host hits both; and the largest difference between their
  outputs.
- **The normalisation**: the formula on the (H, W, 3) array as it was written before
  2026-12-05, against `app.preprocess.to_chw`; ms per crop, and whether the two are equal to
  the bit.

    python -m bench.steps --run RUN [--photos 64] [--rounds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
from PIL import Image

from app.preprocess import EmbedTransform, to_chw
from app.sessions import open_session
from training.catalogue import read_photo
from training.export import export_embedder
from training.runs import Run

__all__ = ["main"]

BATCHES = (1, 2, 8)


def normalise_before(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """app.preprocess.to_chw as it was: the arithmetic on (H, W, 3), then the transpose."""
    pixels = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    mean_ = np.asarray(mean, dtype=np.float32)
    std_ = np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean_) / std_).transpose(2, 0, 1))


def ms_per_call(call: Callable[[], Any], calls: int) -> float:
    call()  # warm: first-run allocations are not the step's cost
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls * 1000.0


def time_graphs(
    files: dict[str, Path], batch: np.ndarray, rounds: int
) -> tuple[dict[str, dict[int, float]], float]:
    """Median ms per call of each graph at each batch size, and the outputs' largest gap."""
    sessions = {name: open_session(path, ["cpu"]) for name, path in files.items()}
    feed = {name: s.get_inputs()[0].name for name, s in sessions.items()}
    timings: dict[str, dict[int, list[float]]] = {n: {b: [] for b in BATCHES} for n in sessions}
    for _ in range(rounds):
        for size in BATCHES:
            chunks = [batch[i : i + size] for i in range(0, len(batch) - size + 1, size)]
            for name, s in sessions.items():
                calls = iter(chunks * 2)

                def run(s: Any = s, name: str = name, calls: Any = calls) -> None:
                    s.run(None, {feed[name]: next(calls)})

                timings[name][size].append(ms_per_call(run, len(chunks)))
    before, after = (s.run(None, {feed[n]: batch})[0] for n, s in sessions.items())
    gap = float(np.abs(before - after).max())
    medians = {n: {b: float(np.median(v)) for b, v in t.items()} for n, t in timings.items()}
    return medians, gap


def time_normalise(
    crops: Sequence[Image.Image], transform: EmbedTransform, rounds: int
) -> tuple[dict[str, float], bool]:
    sized = [transform.resize(c.convert("RGB")) for c in crops]
    ways = {"before": normalise_before, "to_chw": to_chw}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            images = iter(sized * 2)
            times[name].append(
                ms_per_call(
                    lambda way=way, images=images: way(next(images), transform.mean, transform.std),
                    len(sized),
                )
            )
    equal = all(
        np.array_equal(
            normalise_before(c, transform.mean, transform.std),
            to_chw(c, transform.mean, transform.std),
        )
        for c in sized
    )
    return {name: float(np.median(t)) for name, t in times.items()}, equal


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.steps", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", type=Path, required=True, help="a training run (its best.pt)")
    parser.add_argument("--photos", type=int, default=64, help="catalogue crops to time on")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; medians reported")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    if args.photos < max(BATCHES) or args.rounds < 1:
        raise SystemExit(f"--photos must be at least {max(BATCHES)} and --rounds at least 1")
    run = Run(args.run)
    transform = run.transform()
    padding = run.config.data.box_padding
    crops = [read_photo(p, padding) for p in run.photos[: args.photos]]
    batch = np.stack([transform(c) for c in crops])
    model = run.load_embedder()
    with tempfile.TemporaryDirectory() as tmp:
        files = {"exported": Path(tmp) / "exported.onnx", "lean": Path(tmp) / "lean.onnx"}
        for name, path in files.items():
            export_embedder(model, transform.input_size, path, lean=name == "lean")
        graph_ms, gap = time_graphs(files, batch, args.rounds)
    normalise_ms, equal = time_normalise(crops, transform, args.rounds)
    result = {
        "backbone": run.config.model.backbone,
        "input_size": list(transform.input_size),
        "graph_ms": graph_ms,
        "graph_max_abs_difference": gap,
        "normalise_ms": normalise_ms,
        "normalise_equal": equal,
    }
    report(result, len(crops), args.rounds)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def report(result: dict[str, Any], photos: int, rounds: int) -> None:
    height, width = result["input_size"]
    print(f"{result['backbone']} at {height}x{width}, {photos} crops, median of {rounds} rounds")
    print("| step | before ms | after ms | before / after |")
    print("| --- | ---: | ---: | ---: |")
    graph = result["graph_ms"]
    for size in BATCHES:
        old, new = graph["exported"][size], graph["lean"][size]
        print(f"| embedder graph, batch {size} | {old:.2f} | {new:.2f} | {old / new:.2f} |")
    old, new = result["normalise_ms"]["before"], result["normalise_ms"]["to_chw"]
    print(f"| normalise one crop | {old:.3f} | {new:.3f} | {old / new:.2f} |")
    print(
        f"outputs: graphs differ by {result['graph_max_abs_difference']:.2e} at most; "
        f"normalisations {'equal to the bit' if result['normalise_equal'] else 'DIFFER'}"
    )


if __name__ == "__main__":
    main()
