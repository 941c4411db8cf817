"""`whaleid demo`: from nothing to a serving identification service on a CPU, in a few minutes.

    whaleid demo --out .demo [--port 8000] [--no-serve]

Each step is the project's own code, run on a small synthetic catalogue: `whaleid synth`'s
make_catalogue, the tiny training config (configs/tiny.yaml), the narrow YOLO detector's CPU
recipe (training.detector.narrow), export_bundle with the local matcher (DEMO_MATCHER; its
re-ranking fitted on the open-set validation), `whaleid gallery import` (every photo but one
per individual, which are kept back as queries), a write key made by `whaleid keys`, and
`whaleid serve` on a SQLite gallery. A step whose output is already in --out is skipped, so a
second run starts serving at once.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import time
from pathlib import Path

from app.commands import gallery as gallery_command
from app.commands import serve as serve_command
from app.keys import add_key
from app.manifest import Manifest
from gallery.catalogue import OPTIONAL_COLUMNS, REQUIRED_COLUMNS, read_catalogue
from gallery.errors import WhaleidError
from training.config import load_config
from training.detector import train as detector_training
from training.detector.dataset import read_photos
from training.detector.narrow import cpu_recipe, narrow_model_yaml
from training.detector.run import RUN_FILE
from training.export import MatcherOptions, export_bundle
from training.loop import train
from training.synth import make_catalogue as synth

__all__ = ["build_parser", "run"]

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "tiny.yaml"

# Many individuals with few photos each: identities are what the embedder learns from; 512x384
# keeps the marks of a fin 15% of the frame high (tests/fixtures/catalogue.py measures both).
CATALOGUE = {"individuals": 80, "photos": 5, "species": 3, "seed": 7, "image_size": (512, 384)}
# Small enough to export, check and calibrate in about a minute on a CPU, and for /identify to
# re-rank on one: the numpy matcher, 10 shortlisted photos (LightGlue costs ~30x per pair there).
DEMO_MATCHER = {"extractor": "aliked", "keypoints": 256, "side": 256, "method": "mutual_nn"}
DEMO_SHORTLIST = 10


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Make a synthetic catalogue, train a tiny embedder and detector, export a "
        "bundle, import a gallery and serve it on this machine's CPU.",
    )
    parser.add_argument("--out", type=Path, default=Path(".demo"), help="work folder (.demo)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on (8000)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (127.0.0.1)")
    parser.add_argument(
        "--no-serve", action="store_true", help="build everything, print how to serve, exit"
    )
    return parser


def _step(title: str) -> float:
    print(f"== {title}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _done(start: float) -> None:
    print(f"   done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def make_catalogue(out: Path) -> Path:

    folder = out / "catalogue"
    if not (folder / "train.csv").is_file():
        start = _step(f"synthetic catalogue → {folder}")
        synth(folder, overwrite=True, **CATALOGUE)  # type: ignore[arg-type]
        _done(start)
    return folder


def split_gallery(catalogue: Path, out: Path) -> tuple[Path, list[Path]]:
    """A catalogue folder of every photo but each individual's last (the gallery) and those
    last photos (queries to try). Images and boxes are shared, not copied."""
    folder = out / "gallery-catalogue"
    photos = read_catalogue(catalogue, use_boxes=False).photos
    last = {p.individual_id: p for p in photos}
    held = {p.image for p in last.values()}
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "train.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
        writer.writerows(
            [p.image, p.species, p.individual_id, p.viewpoint or "", p.encounter or ""]
            for p in photos
            if p.image not in held
        )
    for name in ("images", "boxes.csv", "labels"):
        link = folder / name
        if (catalogue / name).exists() and not link.exists():
            link.symlink_to((catalogue / name).resolve(), target_is_directory=name != "boxes.csv")
    return folder, sorted(p.path for p in photos if p.image in held)


def train_embedder(catalogue: Path, out: Path) -> Path:

    run_dir = out / "runs" / "embedder"
    if not (run_dir / "evaluation.json").is_file():
        start = _step(f"tiny embedder ({TINY_CONFIG.name}) → {run_dir}")
        cfg = load_config(TINY_CONFIG, [f"data.catalogue={catalogue}", f"out={out / 'runs'}"])
        train(cfg, run_dir)
        _done(start)
    return run_dir


def train_detector(catalogue: Path, out: Path) -> Path:

    run_dir = out / "runs" / "detector"
    if not (run_dir / RUN_FILE).is_file():
        start = _step(f"tiny fin detector → {run_dir}")
        model_yaml = narrow_model_yaml(out / "runs")
        recipe = cpu_recipe(model_yaml, len(read_photos(catalogue)))
        detector_training.train_detector(catalogue, run_dir, recipe)
        _done(start)
    return run_dir


def export(embedder: Path, detector: Path, out: Path) -> Path:

    bundle = out / "bundle"
    if not (bundle / "manifest.json").is_file():
        start = _step(f"export → {bundle}")
        matcher = MatcherOptions(**DEMO_MATCHER, shortlist=DEMO_SHORTLIST)  # type: ignore[arg-type]
        report = export_bundle(
            [embedder], bundle, detector_run=detector, providers=["cpu"], matcher=matcher
        )
        steps = ", ".join(f"{name} {s:.0f} s" for name, s in report.seconds.items())
        print(f"   matcher and re-ranking: {steps}", file=sys.stderr)
        _done(start)
    return bundle


def import_gallery(bundle: Path, catalogue: Path, out: Path) -> Path:

    db = out / "gallery.db"
    if not db.is_file():
        start = _step(f"gallery import → {db}")
        args = gallery_command.build_parser("whaleid gallery").parse_args(
            ["--gallery", str(db), "import", "--bundle", str(bundle), "--catalogue", str(catalogue)]
        )
        gallery_command.run(args)
        _done(start)
    return db


def run(args: argparse.Namespace) -> int:

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not TINY_CONFIG.is_file():
        raise WhaleidError(f"{TINY_CONFIG} is missing: run the demo from a source checkout")
    catalogue = make_catalogue(out)
    gallery_catalogue, queries = split_gallery(catalogue, out)
    embedder = train_embedder(catalogue, out)
    detector = train_detector(catalogue, out)
    bundle = export(embedder, detector, out)
    db = import_gallery(bundle, gallery_catalogue, out)
    keys_file = out / "keys.json"
    key, _ = add_key(keys_file, scope="write", name="demo")

    cv = Manifest.read(bundle, verify=False).cv_metrics
    url = f"http://{args.host}:{args.port}"
    query = shlex.quote(str(queries[0]))
    print(
        f"""
whaleid demo: bundle {bundle}, gallery {db} ({len(queries)} individuals; one photo of each
kept back as a query in {catalogue / "images"}).

A write key for this demo (shown once; its hash is in {keys_file}):
  export WHALEID_KEY={key}

Try it (the photo is held back from the gallery). The demo model trained for a minute on a CPU:
open-set MAP@5 {cv.get("map5", float("nan")):.2f} on individuals it never saw. Expect the right
fin among the five, often just below new_individual, whose threshold
({cv.get("threshold", float("nan")):.2f}) is near this model's usual same-fin similarity:
  curl -s -H "X-API-Key: $WHALEID_KEY" -F image=@{query} {url}/identify
  curl -s -H "X-API-Key: $WHALEID_KEY" -F image=@{query} -F individual_id=my-new-fin {url}/gallery
  curl -s -H "X-API-Key: $WHALEID_KEY" {url}/gallery/individuals
  open {url}/docs (the API) or {url}/review (upload a photo, see the top-5)
""",
        flush=True,
    )
    serve_args = [
        "--bundle", str(bundle),
        "--gallery", str(db),
        "--keys-file", str(keys_file),
        "--host", args.host,
        "--port", str(args.port),
        "--providers", "cpu",
    ]  # fmt: skip
    if args.no_serve:
        print("serve it with:\n  whaleid serve " + shlex.join(serve_args))
        return 0
    return serve_command.run(serve_command.build_parser("whaleid serve").parse_args(serve_args))
