"""`whaleid synth`: write a synthetic photo-ID catalogue (photos, train.csv, boxes)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.synth import make_catalogue

__all__ = ["build_parser", "run"]


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"expected WIDTHxHEIGHT such as 512x384, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return w, h


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Make a synthetic photo-ID catalogue: dorsal fins whose identity lies in their "
            "silhouette and marks (notches, scars, pigment), photographed at random scale, pose, "
            "light and colour over sea and sky. Writes images/, train.csv "
            "(image,species,individual_id[,viewpoint]), labels/ (YOLO, class 0 = fin), boxes.csv "
            "(image,x1,y1,x2,y2) and synth.json. The same arguments give byte-identical files."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the catalogue to")
    parser.add_argument("--individuals", type=int, default=40, help="number of animals")
    parser.add_argument("--photos", type=int, default=6, help="photos per individual")
    parser.add_argument("--species", type=int, default=3, help="number of species")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument(
        "--sides",
        type=int,
        default=1,
        help="faces per fin (1 or 2): 2 draws each fin's left and right face with their own "
        "scars and pigment, alternates them over its photos and writes a viewpoint column",
    )
    parser.add_argument(
        "--speckles",
        type=int,
        default=0,
        help="fine marks per face (dots and dashes a few pixels wide in a large photo, as a "
        "speckled skin): identity in detail a global model at low resolution cannot see",
    )
    parser.add_argument(
        "--size", type=_size, default=(512, 384), metavar="WxH", help="photo size in pixels"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the catalogue files in a non-empty --out"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    summary = make_catalogue(
        args.out,
        individuals=args.individuals,
        photos=args.photos,
        species=args.species,
        seed=args.seed,
        image_size=args.size,
        sides=args.sides,
        speckles=args.speckles,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(
        f"wrote {summary.photos} photos of {summary.individuals} individuals "
        f"({', '.join(summary.species)}) to {summary.out}",
        file=sys.stderr if args.quiet else sys.stdout,
    )
    return 0
