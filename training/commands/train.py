"""`whaleid train`: train an embedding model into a run folder.

whaleid train --config configs/base.yaml data.catalogue=PATH model.backbone=resnet18
whaleid train --resume runs/NAME [optim.epochs=30]
torchrun --nproc_per_node=2 -m training.commands.train --config ...   (DDP)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gallery.errors import NotFoundError
from training.commands.evaluate import format_evaluation
from training.config import load_config
from training.runs import CONFIG, Run

__all__ = ["build_parser", "main", "run"]


def build_parser(prog: str = "whaleid train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train an embedding model on a catalogue; writes a run folder "
        "(config, label encoder, checkpoints, metrics, plots, the tuned threshold).",
    )
    parser.add_argument("--config", type=Path, help="YAML config (see configs/)")
    parser.add_argument("--resume", type=Path, metavar="RUN", help="continue this run folder")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: OUT/NAME from config)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides: optim.epochs=5"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from training.loop import train  # torch is imported only once arguments are valid

    if args.resume is not None:
        if not (args.resume / CONFIG).is_file():
            raise NotFoundError(f"--resume {args.resume}: not a run folder (no {CONFIG})")
        cfg = load_config(args.config or args.resume / CONFIG, args.overrides)
        run_dir = train(cfg, args.resume, resume=True)
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = train(cfg, args.run_dir)
    evaluation = Run(run_dir).evaluation
    if evaluation and os.environ.get("RANK", "0") == "0":
        print(f"run {run_dir}")
        print(format_evaluation(evaluation))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `python -m training.commands.train` (torchrun launches this)."""
    from app.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
