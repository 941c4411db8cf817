"""`whaleid gallery`: build and manage the gallery of known individuals.

    whaleid gallery import  --bundle B --catalogue DIR   bulk registration (resumable)
    whaleid gallery list | show ID | delete ID | rename OLD NEW | merge A B | export
    whaleid gallery reembed --bundle NEW                 recompute embeddings for a new model

`import` and `reembed` run the service's own pipeline (app.pipeline.Pipeline), so a gallery
built here answers exactly as one built through POST /gallery. The other commands work on the
store alone (no model, no index): a running service picks their changes up from the store's
change log.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tqdm import tqdm

from app.decode import decode_image
from gallery.errors import WhaleidError
from gallery.gallery import merge_individuals, rename_individual
from gallery.photos import PhotoStore, content_hash, resolve_photos_dir
from gallery.store import SqlStore, open_store

if TYPE_CHECKING:
    from PIL import Image

    from app.pipeline import Pipeline
    from gallery.records import Box, ImageRecord

__all__ = ["build_parser", "run"]

DEFAULT_GALLERY = "gallery.db"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Manage the gallery of individuals.")
    parser.add_argument(
        "--gallery",
        default=os.environ.get("WHALEID_GALLERY", DEFAULT_GALLERY),
        help="gallery store: a SQLite file path, sqlite:///path.db or postgresql://... "
        f"(default: $WHALEID_GALLERY or {DEFAULT_GALLERY})",
    )
    parser.add_argument(
        "--photos-dir",
        type=Path,
        default=None,
        help="where original photos are kept (default: as recorded in the gallery, or "
        "beside a SQLite file)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("import", help="register a catalogue's photos (batched, resumable)")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    p.add_argument(
        "--catalogue",
        type=Path,
        required=True,
        help="folder with train.csv (image,species,individual_id), images/ and optionally "
        "boxes.csv (image,x1,y1,x2,y2)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="photos per model call and commit")
    p.add_argument("--providers", nargs="+", default=None, help="onnxruntime providers")

    p = sub.add_parser("list", help="list individuals")
    p.add_argument("--species", default=None, help="only individuals of this species")
    p.add_argument("--limit", type=int, default=100, help="most individuals to list")
    p.add_argument("--offset", type=int, default=0, help="individuals to skip first")

    p = sub.add_parser("show", help="one individual and its images")
    p.add_argument("id", help="the individual id")

    p = sub.add_parser("delete", help="delete an individual (or, with --image, one image)")
    p.add_argument("id", help="the individual id (or image id with --image)")
    p.add_argument("--image", action="store_true", help="ID is an image id")

    p = sub.add_parser("rename", help="give an individual a new id")
    p.add_argument("old", help="the individual's current id")
    p.add_argument("new", help="its new id (must not exist)")

    p = sub.add_parser("merge", help="merge individual A into B (B keeps its id)")
    p.add_argument("a", help="the individual to merge away")
    p.add_argument("b", help="the individual that keeps its id and receives A's photos")

    p = sub.add_parser("export", help="CSV of individuals and their images")
    p.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")

    p = sub.add_parser("reembed", help="recompute every embedding with another bundle")
    p.add_argument("--bundle", type=Path, required=True, help="the new model bundle")
    p.add_argument("--batch-size", type=int, default=64, help="photos per model call and commit")
    p.add_argument("--providers", nargs="+", default=None, help="onnxruntime providers")
    p.add_argument(
        "--redetect",
        action="store_true",
        help="crop with the new bundle's detector instead of the boxes recorded at registration",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    url = _url(args.gallery)
    if args.action == "import":
        return _import(args, url)
    if args.action == "reembed":
        return _reembed(args, url)
    store = open_store(url)
    try:
        if args.action == "list":
            _list(store, args.species, args.limit, args.offset)
        elif args.action == "show":
            _show(store, args.id)
        elif args.action == "delete":
            _delete(store, url, args.photos_dir, args.id, image=args.image)
        elif args.action == "rename":
            rename_individual(store, old=args.old, new=args.new)
            print(f"renamed {args.old} to {args.new}")
        elif args.action == "merge":
            merge_individuals(store, source=args.a, target=args.b)
            print(f"merged {args.a} into {args.b}")
        elif args.action == "export":
            if args.out is None:
                _export(store, sys.stdout)
            else:
                with args.out.open("w", newline="") as fh:
                    _export(store, fh)
    finally:
        store.close()
    return 0


def _url(value: str) -> str:
    """A store URL as given, or a file path made absolute (as `whaleid predict` does)."""
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser().resolve()}"


# -- import ------------------------------------------------------------------------------------


def _read_catalogue(folder: Path) -> tuple[list[dict[str, str]], dict[str, Box]]:
    train = folder / "train.csv"
    if not train.is_file():
        raise WhaleidError(f"--catalogue {folder}: no train.csv (image,species,individual_id)")
    with train.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"image", "individual_id"} <= set(rows[0]):
        raise WhaleidError(f"{train}: needs columns image,species,individual_id")
    boxes: dict[str, Box] = {}
    box_file = folder / "boxes.csv"
    if box_file.is_file():
        with box_file.open(newline="") as fh:
            for row in csv.DictReader(fh):
                try:
                    boxes[row["image"]] = (
                        float(row["x1"]),
                        float(row["y1"]),
                        float(row["x2"]),
                        float(row["y2"]),
                    )
                except (KeyError, ValueError) as exc:
                    raise WhaleidError(
                        f"{box_file}: needs columns image,x1,y1,x2,y2 ({exc})"
                    ) from exc
    return rows, boxes


def _chunks(rows: Sequence[dict[str, str]], size: int) -> Iterator[Sequence[dict[str, str]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _import(args: argparse.Namespace, url: str) -> int:
    from app.pipeline import Pipeline
    from gallery.gallery import Gallery, ImportItem, NewImage

    rows, boxes = _read_catalogue(args.catalogue)
    images_dir = args.catalogue / "images"
    pipeline = Pipeline.from_bundle(args.bundle, providers=args.providers)
    added = existing = 0
    conflicts: list[str] = []
    unreadable: list[str] = []
    gallery = Gallery.open(
        url,
        fingerprint=pipeline.fingerprint,
        dim=pipeline.embedding_dim,
        photos_dir=args.photos_dir,
    )
    try:
        bar = tqdm(total=len(rows), unit="photo", desc="import")
        for chunk in _chunks(rows, args.batch_size):
            contents: list[bytes] = []
            for row in chunk:
                try:
                    contents.append((images_dir / row["image"]).read_bytes())
                except OSError as exc:
                    raise WhaleidError(f"cannot read {images_dir / row['image']}: {exc}") from exc
            # Resuming: photos already stored are not embedded again.
            known = gallery.known([content_hash(c) for c in contents])
            todo = [
                (row, c)
                for row, c in zip(chunk, contents, strict=True)
                if content_hash(c) not in known
            ]
            existing += len(chunk) - len(todo)
            decoded: list[tuple[dict[str, str], bytes, Image.Image]] = []
            for row, content in todo:
                try:
                    decoded.append(
                        (row, content, decode_image(content, draft_side=None, name=row["image"]))
                    )
                except WhaleidError as exc:
                    unreadable.append(f"{row['image']}: {exc}")
            if decoded:
                given = [boxes.get(row["image"]) for row, _, _ in decoded] if boxes else None
                embedded = pipeline.embed([img for _, _, img in decoded], given)
                items = [
                    ImportItem(
                        individual_id=row["individual_id"],
                        species=row.get("species") or None,
                        image=NewImage(
                            content=content,
                            filename=row["image"],
                            vector=vector,
                            box=None if crop is None else crop.box,
                        ),
                    )
                    for (row, content, _), vector, crop in zip(
                        decoded, embedded.vectors, embedded.crops, strict=True
                    )
                ]
                report = gallery.import_images(items, batch_size=len(items), on_conflict="skip")
                added += report.added
                existing += report.existing
                conflicts += report.conflicts
            bar.update(len(chunk))
        bar.close()
        size = gallery.size
    finally:
        gallery.close()
    for line in conflicts:
        print(
            f"skipped {line}: the same photo is registered to another individual", file=sys.stderr
        )
    for line in unreadable:
        print(f"skipped {line}", file=sys.stderr)
    print(
        f"imported {added} photos ({existing} already there, {len(conflicts)} conflicts, "
        f"{len(unreadable)} unreadable); the gallery holds {size} embeddings"
    )
    return 0


# -- reembed -----------------------------------------------------------------------------------


def _reembed(args: argparse.Namespace, url: str) -> int:
    from app.pipeline import Pipeline
    from gallery.reembed import reembed

    pipeline = Pipeline.from_bundle(args.bundle, providers=args.providers)
    report = reembed(
        url,
        fingerprint=pipeline.fingerprint,
        dim=pipeline.embedding_dim,
        embed=_embedder(pipeline, redetect=args.redetect),
        photos_dir=args.photos_dir,
        batch_size=args.batch_size,
    )
    if not report.switched:
        print(f"the gallery already uses bundle {pipeline.fingerprint[:12]}…: nothing to do")
    else:
        print(
            f"re-embedded {report.embedded} photos; the gallery ({report.total} photos) now "
            f"uses bundle {pipeline.fingerprint[:12]}…"
        )
    return 0


def _embedder(pipeline: Pipeline, *, redetect: bool):  # type: ignore[no-untyped-def]
    import numpy as np

    def embed(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> np.ndarray:
        images = [
            decode_image(c, draft_side=None, name=r.filename)
            for r, c in zip(records, contents, strict=True)
        ]
        boxes = None if redetect else [r.box for r in records]
        return pipeline.embed(images, boxes).vectors

    return embed


# -- store-only actions ------------------------------------------------------------------------


def _list(store: SqlStore, species: str | None, limit: int, offset: int) -> None:
    individuals = store.list_individuals(limit=limit, offset=offset, species=species)
    total = store.count_individuals(species=species)
    print(f"{'individual':<30} {'species':<24} {'images':>6}  created")
    for ind in individuals:
        created = ind.created.strftime("%Y-%m-%d %H:%M")
        print(f"{ind.id:<30} {ind.species or '-':<24} {ind.image_count:>6}  {created}")
    print(f"{len(individuals)} of {total} individuals (offset {offset})")


def _show(store: SqlStore, individual_id: str) -> None:
    ind = store.get_individual(individual_id=individual_id)
    print(f"individual {ind.id}\nspecies    {ind.species or '-'}\ncreated    {ind.created}")
    if ind.metadata:
        print(f"metadata   {ind.metadata}")
    print(f"images     {ind.image_count}")
    for im in ind.images:
        box = "-" if im.box is None else ",".join(f"{v:g}" for v in im.box)
        print(f"  {im.id:>8}  {im.filename}  encounter={im.encounter or '-'}  box={box}")


def _delete(
    store: SqlStore, url: str, photos_dir: Path | None, target: str, *, image: bool
) -> None:
    folder = resolve_photos_dir(url, stored=store.info().photos_dir, given=photos_dir)
    if image:
        try:
            image_id = int(target)
        except ValueError:
            raise WhaleidError(f"--image: {target!r} is not an image id (a number)") from None
        digests = [store.delete_image(image_id=image_id)]
        print(f"deleted image {image_id}")
    else:
        digests = store.delete_individual(individual_id=target)
        print(f"deleted individual {target} and its {len(digests)} images")
    if folder is not None:
        photos = PhotoStore(folder)
        for digest in digests:
            photos.delete(digest)


EXPORT_COLUMNS = [
    "individual_id",
    "species",
    "individual_created",
    "image_id",
    "filename",
    "content_hash",
    "encounter",
    "x1",
    "y1",
    "x2",
    "y2",
    "image_created",
]


def _export(store: SqlStore, out: IO[str]) -> None:
    """One row per image; an individual without images gets one row with empty image fields."""
    writer = csv.writer(out)
    writer.writerow(EXPORT_COLUMNS)
    offset, page = 0, 1000
    while individuals := store.list_individuals(limit=page, offset=offset):
        for ind in individuals:
            detail = store.get_individual(individual_id=ind.id)
            head = [ind.id, ind.species or "", ind.created.isoformat()]
            if not detail.images:
                writer.writerow(head + [""] * 9)
            for im in detail.images:
                box = ["", "", "", ""] if im.box is None else [f"{v:g}" for v in im.box]
                image = [im.id, im.filename, im.content_hash, im.encounter or ""]
                writer.writerow([*head, *image, *box, im.created.isoformat()])
        offset += page
