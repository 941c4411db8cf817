"""The bundle's models on each onnxruntime provider: throughput by batch, fp16 against fp32.

For the detector and every embedder of a bundle, on each provider asked for (cpu, cuda,
tensorrt) and each batch size: images/s and ms per batch (median of timed runs after warm-up),
in fp32 (the bundle's file) and fp16 (the same graph through training.export.to_fp16, fp32 in
and out). Agreement is the cosine between output rows on the same random input: fp16 against
fp32 on the same provider, and each provider's fp32 against the CPU's. A combination the
provider cannot run (fp16 convolutions on the CPU provider, TensorRT without its libraries) is
a row saying why, not a failure. bench/gpu.sh runs this with bench/service.py.

    python -m bench.gpu_models --bundle B --providers cpu cuda --batches 1 8 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np
import onnx
import onnxruntime as ort

from app.manifest import Manifest
from app.sessions import resolve_providers

__all__ = ["main"]


def models(bundle: Path) -> list[tuple[str, Path, tuple[int, int]]]:
    """(name, file, input height × width) of the detector and each embedder."""
    manifest = Manifest.read(bundle, verify=True)
    found: list[tuple[str, Path, tuple[int, int]]] = []
    if manifest.detector is not None:
        side = manifest.detector.input_size
        found.append(("detector", bundle / manifest.detector.file, (side, side)))
    for i, spec in enumerate(manifest.embedders):
        height, width = spec.transform.input_size
        found.append((f"embedder-{i} ({spec.timm_name})", bundle / spec.file, (height, width)))
    return found


def session(model: bytes, provider: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=resolve_providers([provider]))


def rows_of(output: np.ndarray) -> np.ndarray:
    """Outputs as one float64 row per image, for cosines."""
    return np.asarray(output, dtype=np.float64).reshape(len(output), -1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The worst per-image cosine between two outputs."""
    a, b = rows_of(a), rows_of(b)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(np.where(den > 0, num / np.maximum(den, 1e-30), 1.0)))


def time_runs(sess: ort.InferenceSession, x: np.ndarray, seconds: float) -> tuple[float, int]:
    """Median ms per run after two warm-up runs, timing for about `seconds` (at least 3)."""
    name = sess.get_inputs()[0].name
    feed = {name: x.astype(np.float16) if "float16" in sess.get_inputs()[0].type else x}
    for _ in range(2):
        sess.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < seconds and len(times) < 200):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times)), len(times)


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from training.export import to_fp16

    results: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for name, file, (height, width) in models(args.bundle):
        graph = onnx.load(str(file))
        is_fp16 = graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
        variants = {"fp16": graph.SerializeToString()} if is_fp16 else {
            "fp32": graph.SerializeToString(),
            "fp16": to_fp16(graph, keep_io_types=True).SerializeToString(),
        }  # fmt: skip
        for batch in args.batches:
            x = rng.random((batch, 3, height, width), dtype=np.float32)
            reference: np.ndarray | None = None  # CPU fp32 output
            for provider in args.providers:
                outputs: dict[str, np.ndarray] = {}
                for precision, model in variants.items():
                    row: dict[str, Any] = {
                        "model": name,
                        "provider": provider,
                        "precision": precision,
                        "batch": batch,
                    }
                    try:
                        sess = session(model, provider)
                        ms, runs = time_runs(sess, x, args.seconds)
                        feed_type = np.float16 if "float16" in sess.get_inputs()[0].type else None
                        feed = x.astype(feed_type) if feed_type else x
                        out = sess.run(None, {sess.get_inputs()[0].name: feed})[0]
                        outputs[precision] = out
                        row.update(ms_per_batch=ms, images_per_s=1000 * batch / ms, runs=runs)
                        row["providers"] = sess.get_providers()[0]
                    except Exception as exc:  # a row that says why, not a failed run
                        row["error"] = str(exc).splitlines()[0][:160]
                    if precision == "fp16" and "fp32" in outputs and "fp16" in outputs:
                        row["cosine_vs_fp32"] = cosine(outputs["fp16"], outputs["fp32"])
                    if precision == "fp32" and "fp32" in outputs:
                        if provider == "cpu":
                            reference = outputs["fp32"]
                        elif reference is not None:
                            row["cosine_vs_cpu"] = cosine(outputs["fp32"], reference)
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    return results


def markdown(results: list[dict[str, Any]], device: str) -> str:
    lines = [
        f"device: {device}; onnxruntime {ort.__version__} "
        f"(providers here: {', '.join(ort.get_available_providers())})",
        "",
        "| model | provider | precision | batch | ms/batch | images/s | cosine fp16↔fp32 | "
        "cosine ↔ CPU |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if "error" in r:
            lines.append(
                f"| {r['model']} | {r['provider']} | {r['precision']} | {r['batch']} | "
                f"n/a: {r['error']} | | | |"
            )
            continue
        fp16 = f"{r['cosine_vs_fp32']:.5f}" if "cosine_vs_fp32" in r else ""
        cpu = f"{r['cosine_vs_cpu']:.5f}" if "cosine_vs_cpu" in r else ""
        lines.append(
            f"| {r['model']} | {r['provider']} | {r['precision']} | {r['batch']} | "
            f"{r['ms_per_batch']:.2f} | {r['images_per_s']:.1f} | {fp16} | {cpu} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--providers", nargs="+", default=["cpu"], help="cpu cuda tensorrt")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per combination")
    parser.add_argument("--device", default="CPU", help="the device's name, for the table")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    results = measure(args)
    table = markdown(results, args.device)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
