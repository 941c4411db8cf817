"""`whaleid detect train|crop|export`: the YOLO cropper, from catalogue boxes to ONNX."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gallery.errors import WhaleidError

__all__ = ["build_parser", "run"]

# config field → the option that sets it, so a validation error names what the user typed
_OPTIONS = {
    "model": "--model",
    "weights": "--weights",
    "class_names": "--classes",
    "imgsz": "--imgsz",
    "epochs": "--epochs",
    "batch": "--batch",
    "val_fraction": "--val-fraction",
    "seed": "--seed",
    "device": "--device",
    "workers": "--workers",
    "patience": "--patience",
    "overrides": "--set",
}


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as lr0=0.005, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def _classes(text: str) -> list[str]:
    return [name.strip() for name in text.split(",")]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train the YOLO detector that crops the fin (fluke, body) out of each photo, "
        "crop a catalogue with it, and export it to ONNX for a model bundle.",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    train = sub.add_parser(
        "train",
        help="train a detector on a catalogue's boxes",
        description="Train an ultralytics YOLO detector from a model yaml (from scratch unless "
        "--weights is given) on the catalogue's boxes (labels/*.txt in YOLO format, else "
        "boxes.csv image,x1,y1,x2,y2[,class]). Validation holds out whole individuals "
        "(train.csv). Works offline: nothing is downloaded or installed.",
        formatter_class=fmt,
    )
    train.add_argument("--catalogue", type=Path, required=True, help="catalogue folder")
    train.add_argument("--out", type=Path, required=True, help="run folder to write")
    train.add_argument("--model", default="yolo11n.yaml", help="ultralytics model yaml")
    train.add_argument("--weights", type=Path, help="a .pt checkpoint to start from")
    train.add_argument(
        "--classes", type=_classes, default=["fin"], help="comma-separated class names, by id"
    )
    train.add_argument("--imgsz", type=int, default=640, help="training size (multiple of 32)")
    train.add_argument("--epochs", type=int, default=100, help="training epochs")
    train.add_argument("--batch", type=int, default=16, help="batch size")
    train.add_argument(
        "--val-fraction", type=float, default=0.2, help="fraction of individuals held out"
    )
    train.add_argument("--seed", type=int, default=0, help="random seed (split and training)")
    train.add_argument("--device", help="'cpu', '0', '0,1' (default: a GPU if there is one)")
    train.add_argument("--workers", type=int, default=2, help="dataloader processes")
    train.add_argument("--patience", type=int, default=50, help="early-stopping patience")
    train.add_argument("--cache", action="store_true", help="keep decoded photos in RAM")
    train.add_argument("--amp", action="store_true", help="bf16 mixed precision (CUDA)")
    train.add_argument(
        "--set",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any further ultralytics train argument, e.g. --set mosaic=0 --set lr0=0.005",
    )

    crop = sub.add_parser(
        "crop",
        help="crop every catalogue photo with a trained detector",
        description="Write OUT/images/ (the padded best box of each photo, or the whole photo "
        "when nothing is found), OUT/train.csv, OUT/boxes.csv (the boxes used, in original "
        "pixels) and OUT/crops.json (counts).",
        formatter_class=fmt,
    )
    crop.add_argument("--run", type=Path, required=True, help="detector run folder")
    crop.add_argument("--catalogue", type=Path, required=True, help="catalogue folder")
    crop.add_argument("--out", type=Path, required=True, help="folder for the crops")
    crop.add_argument("--padding", type=float, default=0.1, help="box growth per side, × size")
    crop.add_argument("--confidence", type=float, default=0.25, help="minimum box confidence")
    crop.add_argument("--imgsz", type=int, help="inference size (default: the training size)")
    crop.add_argument("--batch", type=int, default=16, help="photos per inference batch")
    crop.add_argument("--device", help="'cpu' or a GPU index (default: a GPU if there is one)")
    crop.add_argument("--quiet", action="store_true", help="no progress bar")

    export = sub.add_parser(
        "export",
        help="export a detector run to ONNX (NMS inside)",
        description="ultralytics' ONNX export with NMS inside and a dynamic batch axis; fails "
        "unless onnxruntime gives the same best boxes as ultralytics on held-out photos.",
        formatter_class=fmt,
    )
    export.add_argument("--run", type=Path, required=True, help="detector run folder")
    export.add_argument("--out", type=Path, help="ONNX file to write (default: RUN/detector.onnx)")
    export.add_argument("--imgsz", type=int, help="input size (default: the training size)")
    export.add_argument("--confidence", type=float, default=0.25, help="minimum box confidence")
    export.add_argument("--padding", type=float, default=0.1, help="box growth per side, × size")
    export.add_argument("--no-check", action="store_true", help="skip the parity check")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.action == "train":
        return _train(args)
    if args.action == "crop":
        return _crop(args)
    return _export(args)


def _train(args: argparse.Namespace) -> int:
    from training.detector.config import DetectorTrainConfig
    from training.detector.train import train_detector

    try:
        config = DetectorTrainConfig(
            model=args.model,
            weights=args.weights,
            class_names=args.classes,
            imgsz=args.imgsz,
            epochs=args.epochs,
            batch=args.batch,
            val_fraction=args.val_fraction,
            seed=args.seed,
            device=args.device,
            workers=args.workers,
            patience=args.patience,
            cache=args.cache,
            amp=args.amp,
            overrides=dict(args.set),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        option = _OPTIONS.get(str(first["loc"][0]), str(first["loc"][0]))
        raise WhaleidError(f"{option}: {first['msg'].removeprefix('Value error, ')}") from exc
    result = train_detector(args.catalogue, args.out, config)
    print(json.dumps(result.summary(), indent=2))
    return 0


def _crop(args: argparse.Namespace) -> int:
    from training.detector.crop import crop_catalogue

    if args.padding < 0:
        raise WhaleidError(f"--padding must be ≥ 0, not {args.padding}")
    if not 0.0 <= args.confidence <= 1.0:
        raise WhaleidError(f"--confidence must be between 0 and 1, not {args.confidence}")
    report = crop_catalogue(
        args.run,
        args.catalogue,
        args.out,
        padding=args.padding,
        confidence=args.confidence,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        progress=not args.quiet,
    )
    print(
        f"cropped {report.cropped} of {report.photos} photos into {report.out}; "
        f"{report.whole_photo} kept whole (no box at confidence {report.confidence})"
        + (f"; {len(report.unreadable)} unreadable, left out" if report.unreadable else ""),
        file=sys.stderr if args.quiet else sys.stdout,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.detector.export import export_detector

    if args.padding < 0:
        raise WhaleidError(f"--padding must be ≥ 0, not {args.padding}")
    if not 0.0 <= args.confidence <= 1.0:
        raise WhaleidError(f"--confidence must be between 0 and 1, not {args.confidence}")
    out = args.out or args.run / "detector.onnx"
    spec = export_detector(
        args.run,
        out,
        imgsz=args.imgsz,
        confidence=args.confidence,
        padding=args.padding,
        check=not args.no_check,
    )
    print(json.dumps({"onnx": str(out), **spec.model_dump()}, indent=2))
    return 0
