"""`whaleid export`: training runs (and a detector run) → a model bundle for serving.

whaleid export --run runs/a --out bundle
whaleid export --run runs/a --run runs/b --detector runs/det --out bundle --fp16
whaleid export --run runs/a --detector runs/det --out bundle --matcher aliked
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from app.matcher_spec import EXTRACTORS, LOCAL_METHODS

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
    local = parser.add_argument_group(
        "local-feature re-ranking",
        "--matcher adds a keypoint extractor and LightGlue (ONNX, checked against torch on "
        "catalogue crops) and fits re-ranking on the open-set validation: each query's global "
        "shortlist scored by local matches, both scores calibrated and fused, new_individual "
        "tuned on the fused probability.",
    )
    local.add_argument("--matcher", choices=EXTRACTORS, help="keypoint extractor (default: none)")
    local.add_argument("--keypoints", type=_positive, default=512, help="keypoints per crop (512)")
    local.add_argument(
        "--matcher-side",
        type=_side,
        default=512,
        help="square side crops are letterboxed to for the extractor, a multiple of 32 (512)",
    )
    local.add_argument(
        "--local-method",
        choices=LOCAL_METHODS,
        default="lightglue",
        help="how serving matches two crops: LightGlue, or mutual nearest descriptors + RANSAC "
        "(numpy, ~30x cheaper on a CPU) (lightglue)",
    )
    local.add_argument(
        "--shortlist", type=_positive, default=20, help="gallery photos re-ranked per query (20)"
    )
    local.add_argument(
        "--fusion",
        choices=["mean", "logistic", "auto"],
        default="auto",
        help="mean of calibrated probabilities, a logistic fit on both, or the better of the "
        "two on validation MAP@5 (auto)",
    )
    return parser


def _side(text: str) -> int:
    value = _positive(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32, got {value}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    # torch is imported only once arguments are valid
    from training.export import MatcherOptions, export_bundle

    matcher = None
    if args.matcher:
        matcher = MatcherOptions(
            extractor=args.matcher,
            keypoints=args.keypoints,
            side=args.matcher_side,
            method=args.local_method,
            shortlist=args.shortlist,
            fusion=args.fusion,
        )
    report = export_bundle(
        args.run,
        args.out,
        detector_run=args.detector,
        fp16=args.fp16,
        weights=args.weight,
        parity_photos=args.parity_photos,
        checkpoint=args.checkpoint,
        matcher=matcher,
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
    if report.matcher_parity is not None and manifest.matcher is not None:
        mp = report.matcher_parity
        print(
            f"{manifest.matcher.extractor_file} + {manifest.matcher.matcher_file}: keypoints "
            f"within 0.5 px {mp.keypoints_matched:.1%}, confident matches agree "
            f"{mp.match_agreement:.1%} of {mp.confident_pairs} on {mp.crops} crops"
        )
    if manifest.rerank is not None:
        cv = manifest.rerank.cv_metrics
        print(
            f"re-ranking: {manifest.rerank.method}, B={manifest.rerank.shortlist}, fusion "
            f"{manifest.rerank.fusion.method}, fused threshold {manifest.rerank.threshold:.3f}; "
            f"open-set MAP@5 {cv.get('map5', float('nan')):.4f} fused against "
            f"{cv.get('global_map5', float('nan')):.4f} global only (known top-1 "
            f"{cv.get('top1_known', float('nan')):.3f} against "
            f"{cv.get('global_top1_known', float('nan')):.3f})"
        )
    print(f"fingerprint {manifest.fingerprint}", file=sys.stderr)
    return 0
