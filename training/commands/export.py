"""`whaleid export`: training runs (and a detector run) → a model bundle for serving.

whaleid export --run runs/a --out bundle
whaleid export --run runs/a --run runs/b --detector runs/det --out bundle --fp16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["build_parser", "run"]


def build_parser(prog: str = "whaleid export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export training runs to a model bundle: each embedder to ONNX (checked "
        "against torch on catalogue photos), the detector's ONNX, and manifest.json. Several "
        "--run make an ensemble whose new_individual threshold is re-tuned on their shared "
        "open-set validation.",
    )
    parser.add_argument(
        "--run", type=Path, action="append", required=True, metavar="RUN", help="run folder "
        "(repeat for an ensemble)",
    )  # fmt: skip
    parser.add_argument("--detector", type=Path, metavar="DET_RUN", help="detector run folder")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to create")
    parser.add_argument(
        "--fp16", action="store_true", help="half-precision embedders (fp16 in and out)"
    )
    parser.add_argument(
        "--weight",
        type=float,
        action="append",
        metavar="W",
        help="ensemble weight of each --run, in order (default: 1 each)",
    )
    parser.add_argument(
        "--checkpoint", default="best", help="'best' (embedder.pt), 'last' or a checkpoint file"
    )
    parser.add_argument(
        "--parity-photos", type=int, default=16, help="catalogue photos in the parity check"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from training.export import export_bundle  # torch is imported only once arguments are valid

    report = export_bundle(
        args.run,
        args.out,
        detector_run=args.detector,
        fp16=args.fp16,
        weights=args.weight,
        parity_photos=args.parity_photos,
        checkpoint=args.checkpoint,
    )
    manifest = report.manifest
    for parity in report.parity:
        print(
            f"{parity.file}: parity cosine min {parity.min_cosine:.6f} mean "
            f"{parity.mean_cosine:.6f} on {parity.photos} photos (required {parity.required})"
        )
    map5 = manifest.cv_metrics.get("map5", float("nan"))
    tuned = "re-tuned on the ensemble" if report.sweep is not None else "from the run"
    print(
        f"bundle {report.bundle}: {len(manifest.embedders)} embedder(s), dim "
        f"{manifest.embedding_dim}, detector {'yes' if manifest.detector else 'no'}, threshold "
        f"{manifest.threshold:.3f} ({tuned}; open-set MAP@5 {map5:.4f})"
    )
    print(f"fingerprint {manifest.fingerprint}", file=sys.stderr)
    return 0
