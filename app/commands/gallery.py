"""`whaleid gallery`: build and manage the gallery of known individuals.

    whaleid gallery import  --bundle B --catalogue DIR   bulk registration (resumable)
    whaleid gallery list | show ID | delete ID | rename OLD NEW | merge A B | export
    whaleid gallery reembed --bundle NEW                 recompute embeddings for a new model

`import` and `reembed` run the service's own pipeline (app.pipeline.Pipeline), storing each
photo's keypoints beside its embedding when the bundle has a matcher (`reembed` also fills
those missing under the bundle the gallery already uses), and `import` reads the catalogue
with gallery.catalogue (training's reader and box rule), so a gallery built here answers
exactly as one built through POST /gallery and crops as training did. The other
commands work on the store alone (no model, no index) through the same record functions as the
HTTP routes (gallery.individuals, gallery.images): a running service picks their changes up
from the store's change log. `--gallery` and `--photos-dir` default to WHALEID_GALLERY and
WHALEID_PHOTOS_DIR, from the environment or `.env`, as `whaleid serve` reads them.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from PIL import Image
from tqdm import tqdm

from app.decode import decode_image
from app.pipeline import Pipeline
from app.preprocess import check_photo
from app.settings import StoreSettings, load_store_settings
from gallery import images, individuals
from gallery.batches import chunks
from gallery.catalogue import Photo, read_catalogue
from gallery.errors import WhaleidError
from gallery.gallery import Gallery, ImportReport
from gallery.images import ImportItem
from gallery.keypoints import LocalFeatures, StoredFeatures
from gallery.photos import PhotoStore, content_hash, resolve_photos_dir
from gallery.records import ImageRecord, NewImage
from gallery.reembed import EmbedFn, Reembedded, reembed
from gallery.rules import check_individual_id, check_label, check_viewpoint
from gallery.store import SqlStore, open_store

__all__ = ["build_parser", "run"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Manage the gallery of individuals.")
    parser.add_argument(
        "--gallery",
        default=None,
        help="gallery store: a SQLite file path, sqlite:///path.db or postgresql://... "
        "(default: WHALEID_GALLERY from the environment or .env, else gallery.db)",
    )
    parser.add_argument(
        "--photos-dir",
        type=Path,
        default=None,
        help="where original photos are kept (default: WHALEID_PHOTOS_DIR, else as recorded "
        "in the gallery, else beside a SQLite file)",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = sub.add_parser("import", help="register a catalogue's photos (batched, resumable)")
    p.add_argument("--bundle", type=Path, required=True, help="model bundle folder")
    p.add_argument(
        "--catalogue",
        type=Path,
        required=True,
        help="folder with train.csv (image,species,individual_id[,viewpoint,encounter]), "
        "images/ and optionally boxes (boxes.csv image,x1,y1,x2,y2 or YOLO labels/*.txt)",
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

    p = sub.add_parser(
        "reembed",
        help="recompute every embedding with another bundle (and the keypoints a bundle with "
        "a matcher has not stored yet)",
    )
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
    settings = _settings(args)
    url, photos_dir = settings.gallery, settings.photos_dir
    if args.action == "import":
        return _import(args, url, photos_dir)
    if args.action == "reembed":
        return _reembed(args, url, photos_dir)
    store = open_store(url)
    try:
        if args.action == "list":
            _list(store, args.species, args.limit, args.offset)
        elif args.action == "show":
            _show(store, args.id)
        elif args.action == "delete":
            _delete(store, url, photos_dir, args.id, image=args.image)
        elif args.action == "rename":
            individuals.rename_individual(store=store, old=args.old, new=args.new)
            print(f"renamed {args.old} to {args.new}")
        elif args.action == "merge":
            individuals.merge_individuals(store=store, source=args.a, target=args.b)
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


def _settings(args: argparse.Namespace) -> StoreSettings:
    """The options given, else WHALEID_GALLERY / WHALEID_PHOTOS_DIR (environment or .env)."""
    given = {"gallery": args.gallery, "photos_dir": args.photos_dir}
    return load_store_settings(**{k: v for k, v in given.items() if v is not None})


# -- import ------------------------------------------------------------------------------------


def _import(args: argparse.Namespace, url: str, photos_dir: Path | None) -> int:
    photos = read_catalogue(args.catalogue).photos
    # Every row obeys the records' rules before anything is embedded or stored.
    for photo in photos:
        check_individual_id(photo.individual_id, field=f"{photo.image}: individual_id")
        for name in ("species", "encounter"):
            check_label(getattr(photo, name), field=f"{photo.image}: {name}")
        check_viewpoint(photo.viewpoint, field=f"{photo.image}: viewpoint")
    pipeline = Pipeline.from_bundle(args.bundle, providers=args.providers)
    gallery = Gallery.open(
        url, fingerprint=pipeline.fingerprint, dim=pipeline.embedding_dim, photos_dir=photos_dir
    )
    try:
        counts, unreadable = _import_photos(gallery, pipeline, photos, args.batch_size)
        size = gallery.size
    finally:
        gallery.close()
    for name in counts.conflicts:
        print(
            f"skipped {name}: the same photo is registered to another individual", file=sys.stderr
        )
    for line in unreadable:
        print(f"skipped {line}", file=sys.stderr)
    print(
        f"imported {counts.added} photos ({counts.existing} already there, "
        f"{len(counts.conflicts)} conflicts, {len(unreadable)} unreadable or unusable); "
        f"the gallery holds {size} embeddings"
    )
    return 0


def _import_photos(
    gallery: Gallery, pipeline: Pipeline, photos: Sequence[Photo], batch_size: int
) -> tuple[ImportReport, list[str]]:
    """Embed and register the photos batch by batch (one commit each, so an interrupted import
    keeps what it finished, and a rerun skips photos already stored); returns the counts and
    the unreadable photos."""
    total = ImportReport()
    unreadable: list[str] = []
    with_boxes = any(p.box is not None for p in photos)
    bar = tqdm(total=len(photos), unit="photo", desc="import")
    for chunk in chunks(photos, batch_size):
        contents = [_read(photo) for photo in chunk]
        known = gallery.known([content_hash(c) for c in contents])
        total.existing += sum(content_hash(c) in known for c in contents)
        decoded: list[tuple[Photo, bytes, Image.Image]] = []
        for photo, content in zip(chunk, contents, strict=True):
            if content_hash(content) in known:
                continue
            try:
                image = decode_image(content, draft_side=None, name=photo.image)
                check_photo(image, photo.image)  # refused as POST /gallery refuses it
                decoded.append((photo, content, image))
            except WhaleidError as exc:
                unreadable.append(f"{photo.image}: {exc}")
        if decoded:
            # Boxes as training crops: a photo without one is cropped by nobody (the whole
            # photo) when the catalogue has boxes, by the bundle's detector when it has none.
            given = [p.box for p, _, _ in decoded] if with_boxes else None
            embedded = pipeline.embed([img for _, _, img in decoded], given)
            local: Sequence[StoredFeatures | None] = (
                [None] * len(decoded) if embedded.local is None else _stored(embedded.local)
            )
            items = [
                ImportItem(
                    individual_id=photo.individual_id,
                    species=photo.species,
                    image=NewImage(
                        content=content,
                        filename=photo.image,
                        vector=vector,
                        encounter=photo.encounter,
                        box=None if crop is None else crop.box,
                        local=features,
                        viewpoint=photo.viewpoint,
                    ),
                )
                for (photo, content, _), vector, crop, features in zip(
                    decoded, embedded.vectors, embedded.crops, local, strict=True
                )
            ]
            report = gallery.import_images(items, batch_size=len(items), on_conflict="skip")
            total.added += report.added
            total.existing += report.existing
            total.conflicts += report.conflicts
        bar.update(len(chunk))
    bar.close()
    return total, unreadable


def _stored(local: LocalFeatures) -> list[StoredFeatures]:
    """Each crop's keypoints as the gallery keeps them."""
    return [local.compact(row) for row in range(len(local))]


def _read(photo: Photo) -> bytes:
    try:
        return photo.path.read_bytes()
    except OSError as exc:
        raise WhaleidError(f"cannot read {photo.path}: {exc}") from exc


# -- reembed -----------------------------------------------------------------------------------


def _reembed(args: argparse.Namespace, url: str, photos_dir: Path | None) -> int:
    pipeline = Pipeline.from_bundle(args.bundle, providers=args.providers)
    report = reembed(
        url,
        fingerprint=pipeline.fingerprint,
        dim=pipeline.embedding_dim,
        embed=_embedder(pipeline, redetect=args.redetect),
        local=pipeline.has_matcher,
        photos_dir=photos_dir,
        batch_size=args.batch_size,
    )
    bundle = f"bundle {pipeline.fingerprint[:12]}…"
    if report.switched:
        print(
            f"re-embedded {report.embedded} photos ({report.features} with keypoints); the "
            f"gallery ({report.total} photos) now uses {bundle}"
        )
    elif report.features:
        print(
            f"the gallery already uses {bundle}; stored the keypoints of {report.features} "
            f"photos that had none ({report.total} photos)"
        )
    else:
        print(f"the gallery already uses {bundle}: nothing to do")
    return 0


def _embedder(pipeline: Pipeline, *, redetect: bool) -> EmbedFn:
    def embed(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> Reembedded:
        images = [
            decode_image(c, draft_side=None, name=r.filename)
            for r, c in zip(records, contents, strict=True)
        ]
        boxes = None if redetect else [r.box for r in records]
        embedded = pipeline.embed(images, boxes)
        local = None if embedded.local is None else _stored(embedded.local)
        return Reembedded(embedded.vectors, local)

    return embed


# -- store-only actions ------------------------------------------------------------------------


def _list(store: SqlStore, species: str | None, limit: int, offset: int) -> None:
    found = individuals.list_individuals(store=store, limit=limit, offset=offset, species=species)
    total = individuals.count_individuals(store=store, species=species)
    print(f"{'individual':<30} {'species':<24} {'images':>6}  created")
    for ind in found:
        created = ind.created.strftime("%Y-%m-%d %H:%M")
        print(f"{ind.id:<30} {ind.species or '-':<24} {ind.image_count:>6}  {created}")
    print(f"{len(found)} of {total} individuals (offset {offset})")


def _show(store: SqlStore, individual_id: str) -> None:
    ind = individuals.get_individual(store=store, individual_id=individual_id)
    print(f"individual {ind.id}\nspecies    {ind.species or '-'}\ncreated    {ind.created}")
    if ind.metadata:
        print(f"metadata   {ind.metadata}")
    print(f"images     {ind.image_count}")
    for im in ind.images:
        box = "-" if im.box is None else ",".join(f"{v:g}" for v in im.box)
        print(
            f"  {im.id:>8}  {im.filename}  encounter={im.encounter or '-'}  "
            f"viewpoint={im.viewpoint or '-'}  box={box}"
        )


def _delete(
    store: SqlStore, url: str, photos_dir: Path | None, target: str, *, image: bool
) -> None:
    folder = resolve_photos_dir(url, stored=store.info().photos_dir, given=photos_dir)
    photos = PhotoStore(folder) if folder is not None else None
    if image:
        try:
            image_id = int(target)
        except ValueError:
            raise WhaleidError(f"--image: {target!r} is not an image id (a number)") from None
        images.delete_image(store=store, photos=photos, image_id=image_id)
        print(f"deleted image {image_id}")
    else:
        digests = individuals.delete_individual(store=store, photos=photos, individual_id=target)
        print(f"deleted individual {target} and its {len(digests)} images")


EXPORT_COLUMNS = [
    "individual_id",
    "species",
    "individual_created",
    "image_id",
    "filename",
    "content_hash",
    "encounter",
    "viewpoint",
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
                writer.writerow(head + [""] * (len(EXPORT_COLUMNS) - len(head)))
            for im in detail.images:
                box = ["", "", "", ""] if im.box is None else [f"{v:g}" for v in im.box]
                image = [
                    im.id,
                    im.filename,
                    im.content_hash,
                    im.encounter or "",
                    im.viewpoint or "",
                ]
                writer.writerow([*head, *image, *box, im.created.isoformat()])
        offset += page
