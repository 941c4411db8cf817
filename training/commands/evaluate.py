"""`whaleid evaluate --run DIR`: print a run's figures (re-evaluating with --recompute)."""

from __future__ import annotations

import argparse
from pathlib import Path

from training.runs import Run

__all__ = ["build_parser", "format_evaluation", "run"]


def build_parser(prog: str = "whaleid evaluate") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Print a training run's figures.")
    parser.add_argument("--run", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--recompute", action="store_true", help="re-embed and re-tune the threshold first"
    )
    return parser


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_evaluation(evaluation: dict) -> str:
    """The figures as a markdown table (n/a where there were no known or no new queries)."""
    lines = [
        "| figure | value |",
        "| --- | --- |",
        f"| threshold (tuned on open-set validation) | {evaluation['threshold']:.3f} |",
        f"| open-set MAP@5, all | {_f(evaluation['map5'])} |",
        f"| open-set MAP@5, known | {_f(evaluation['map5_known'])} |",
        f"| open-set MAP@5, new | {_f(evaluation['map5_new'])} |",
        f"| queries (new) | {evaluation['queries']} ({evaluation['queries_new']}) |",
        f"| gallery photos (individuals) | {evaluation['gallery']} "
        f"({evaluation['gallery_individuals']}) |",
    ]
    curve = evaluation.get("threshold_curve")
    if curve and len(curve) > 1:
        shown = ", ".join(f"{p['images']}: {p['threshold']:.3f}" for p in curve)
        lines.append(f"| threshold by gallery photos | {shown} |")
    offsets = evaluation.get("encounter_offsets")
    if offsets:
        shown = ", ".join(
            f"{o['photos']}: {o['offset']:+.3f} (MAP@5 {o['map5_at_single']:.4f} → "
            f"{o['map5']:.4f}, {o['encounters']} encounters)"
            for o in offsets
        )
        lines.append(f"| threshold offset by encounter photos | {shown} |")
    closed = evaluation.get("closed_set")
    if closed:
        lines.append(f"| closed-set fold MAP@5 at the threshold | {_f(closed['map5'])} |")
    lines.append(f"| epoch, flip TTA | {evaluation.get('epoch')}, {evaluation.get('flip_tta')} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from gallery.errors import WhaleidError

    run_ = Run(args.run)
    if args.recompute or not run_.evaluation:
        from training.loop import evaluate_run

        evaluate_run(run_)
    evaluation = run_.evaluation
    if not evaluation:
        raise WhaleidError(f"run {args.run} could not be evaluated")
    print(f"run {run_.path}")
    print(format_evaluation(evaluation))
    return 0
