"""Write a synthetic catalogue to disk: photos, train.csv, YOLO labels, boxes.csv, synth.json.

Every random draw comes from a generator seeded by (seed, individual) or (seed, individual,
photo) through numpy's SeedSequence, and names are hashes of the same keys, so a catalogue does
not depend on the order it is made in, and the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gallery.errors import WhaleidError
from training.synth.render import FinTexture, Rendering, fin_texture, render_photo
from training.synth.shapes import (
    Individual,
    Species,
    make_individual,
    make_species,
    other_side,
    speckled,
    stable_hex,
)

__all__ = [
    "OUTPUTS",
    "SIDES",
    "CatalogueSummary",
    "SynthError",
    "encode_jpeg",
    "individual",
    "make_catalogue",
    "render",
]

FORMAT_VERSION = 1
JPEG_QUALITY = 92
# What a catalogue consists of; --overwrite removes these and nothing else.
OUTPUTS = ("images", "labels", "train.csv", "boxes.csv", "synth.json")
# First spawn-key element: keeps the kinds of stream apart. The far side has a stream of its
# own, so a one-sided catalogue is byte-identical to what it was before sides existed.
_INDIVIDUAL, _PHOTO, _SIDE, _SPECKLE = 0, 1, 2, 3
# Viewpoint labels of a two-sided catalogue: the near face of the fin, then the far one.
SIDES = ("left", "right")


class SynthError(WhaleidError):
    """Bad arguments for a synthetic catalogue, or an output folder we will not write into."""


@dataclass(frozen=True)
class CatalogueSummary:
    """What `make_catalogue` wrote."""

    out: Path
    individuals: int
    photos: int  # in total
    species: tuple[str, ...]
    sides: int
    image_size: tuple[int, int]
    train_csv: Path
    boxes_csv: Path
    images_dir: Path
    labels_dir: Path


def _check(
    individuals: int,
    photos: int,
    species: int,
    seed: int,
    size: tuple[int, int],
    sides: int,
    speckles: int,
) -> None:
    for name, value in (("individuals", individuals), ("photos", photos), ("species", species)):
        if value < 1:
            raise SynthError(f"--{name} must be at least 1, got {value}")
    if species > individuals:
        raise SynthError(
            f"--species ({species}) cannot exceed --individuals ({individuals}): "
            "every species needs at least one individual"
        )
    if seed < 0:
        raise SynthError(f"--seed must be 0 or more, got {seed}")
    if sides not in (1, 2):
        raise SynthError(f"--sides must be 1 or 2, got {sides}")
    if not 0 <= speckles <= 1000:
        raise SynthError(f"--speckles must be 0 to 1000, got {speckles}")
    if len(size) != 2 or min(size) < 32:
        raise SynthError(f"--size must be at least 32x32 pixels, got {size[0]}x{size[1]}")


def _prepare(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise SynthError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SynthError(f"--out {out} is not empty; pass --overwrite to replace a catalogue")
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def individual(seed: int, index: int, kinds: list[Species]) -> Individual:
    """Individual `index` of a catalogue made with `seed` (species assigned round-robin)."""
    ind_id = stable_hex(seed, "individual", index)
    return make_individual(_rng(seed, _INDIVIDUAL, index), ind_id, kinds[index % len(kinds)])


def textures(
    seed: int, index: int, ind: Individual, sides: int, speckles: int = 0
) -> tuple[list[FinTexture], int]:
    """The textures of `ind`'s photographed faces (near face first) and the face its first
    photo shows; photos alternate faces from there, so every animal with two or more photos
    is seen from both sides. `speckles`: fine marks added to each face, from a stream of its
    own (without them a catalogue is byte-identical to one made before they existed)."""
    if sides == 1:
        faces, first = [ind], 0
    else:
        rng = _rng(seed, _SIDE, index)
        first = int(rng.integers(2))
        faces = [ind, other_side(rng, ind)]
    if speckles:
        faces = [
            speckled(_rng(seed, _SPECKLE, index, k), face, speckles) for k, face in enumerate(faces)
        ]
    return [fin_texture(face, mirrored=k == 1) for k, face in enumerate(faces)], first


def render(
    seed: int, index: int, photo: int, tex: FinTexture, size: tuple[int, int]
) -> tuple[str, Rendering]:
    """Photo `photo` of individual `index`: its file name and pixels, box and fin mask."""
    name = f"{stable_hex(seed, 'photo', index, photo)}.jpg"
    return name, render_photo(tex, _rng(seed, _PHOTO, index, photo), size)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def make_catalogue(
    out: Path,
    *,
    individuals: int,
    photos: int,
    species: int,
    seed: int,
    image_size: tuple[int, int] = (512, 384),
    sides: int = 1,
    speckles: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> CatalogueSummary:
    """Write a catalogue of `individuals` × `photos` photos (`image_size` = width, height) to
    `out`. Individuals are spread evenly over `species`. With `sides=2` each fin has two faces
    with their own scars and pigment (silhouette and notches shared, the far face mirrored),
    photos alternate faces, and train.csv gets a `viewpoint` column (`left`, `right`).
    `speckles` adds that many fine marks to each face (`shapes.speckled`). Raises
    SynthError for bad arguments or a non-empty `out` without `overwrite` (then only the
    catalogue's own files are replaced)."""
    out = Path(out)
    w, h = (int(v) for v in image_size)
    _check(individuals, photos, species, seed, (w, h), sides, speckles)
    _prepare(out, overwrite)
    kinds = make_species(species)

    ids: list[str] = []
    rows: list[tuple[str, ...]] = []
    boxes: dict[str, tuple[float, float, float, float]] = {}
    bar = tqdm(total=individuals * photos, desc="synth", unit="photo", disable=not progress)
    with bar:
        for i in range(individuals):
            ind = individual(seed, i, kinds)
            ids.append(ind.id)
            faces, first = textures(seed, i, ind, sides, speckles)
            for j in range(photos):
                face = (first + j) % len(faces)
                name, photo = render(seed, i, j, faces[face], (w, h))
                if name in boxes:  # 48 bits of hash: never in practice, but never silently
                    raise SynthError(f"image name clash at individual {i}, photo {j}")
                (out / "images" / name).write_bytes(encode_jpeg(photo.image))
                boxes[name] = photo.box
                row = (name, ind.species.name, ind.id)
                rows.append((*row, SIDES[face]) if sides == 2 else row)
                bar.update()
    if len(set(ids)) != len(ids):
        raise SynthError("individual id clash; choose another --seed")

    _write_tables(out, sorted(rows), boxes, (w, h))
    params = {
        "format_version": FORMAT_VERSION,
        "generator": "whaleid synth",
        "individuals": individuals,
        "photos_per_individual": photos,
        "species": [{"name": k.name, "fin_family": k.family.name} for k in kinds],
        "seed": seed,
        "sides": sides,
        "speckles": speckles,
        "image_size": [w, h],
        "jpeg_quality": JPEG_QUALITY,
        "box_classes": ["fin"],
    }
    (out / "synth.json").write_text(json.dumps(params, indent=2) + "\n")
    return CatalogueSummary(
        out=out,
        individuals=individuals,
        photos=len(rows),
        species=tuple(k.name for k in kinds),
        sides=sides,
        image_size=(w, h),
        train_csv=out / "train.csv",
        boxes_csv=out / "boxes.csv",
        images_dir=out / "images",
        labels_dir=out / "labels",
    )


def _write_tables(
    out: Path,
    rows: list[tuple[str, ...]],
    boxes: dict[str, tuple[float, float, float, float]],
    size: tuple[int, int],
) -> None:
    w, h = size
    header = "image,species,individual_id" + (",viewpoint" if rows and len(rows[0]) == 4 else "")
    train = [header] + [",".join(r) for r in rows]
    (out / "train.csv").write_text("\n".join(train) + "\n")
    lines = ["image,x1,y1,x2,y2"]
    for name, *_ in rows:
        x1, y1, x2, y2 = boxes[name]
        lines.append(f"{name},{x1:.1f},{y1:.1f},{x2:.1f},{y2:.1f}")
        yolo = (
            f"{v:.6f}" for v in ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        )
        (out / "labels" / f"{Path(name).stem}.txt").write_text("0 " + " ".join(yolo) + "\n")
    (out / "boxes.csv").write_text("\n".join(lines) + "\n")
