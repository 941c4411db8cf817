"""A snapshot of a gallery's index, so a large gallery starts without re-reading every vector.

One file: a magic line, a JSON header (the store it came from, the bundle fingerprint, the
change sequence it reflects, the index kind and dimension), the labels (individuals, species,
viewpoints), then the faiss index. It is trusted only when the store, fingerprint, kind and
dimension match and its sequence is not ahead of the store's; the gallery then catches up from
that sequence. A file of an older format is ignored (the gallery rebuilds from the store and
writes the new one). Written to a temporary file and renamed, so a crash mid-write leaves the
previous snapshot intact.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gallery.index import VectorIndex
from gallery.labels import Labels

__all__ = ["SnapshotHeader", "read_snapshot", "read_snapshot_header", "write_snapshot"]

# 2: the labels carry each image's viewpoint.
MAGIC = b"WHALEID-GALLERY-SNAPSHOT 2\n"


@dataclass(frozen=True)
class SnapshotHeader:
    store_uuid: str
    fingerprint: str
    dim: int
    kind: str
    seq: int
    size: int


def write_snapshot(path: Path, header: SnapshotHeader, index: VectorIndex, labels: Labels) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # JSON and raw arrays, never pickle: a snapshot file must not be able to run code.
    head = json.dumps(asdict(header)).encode()
    names = json.dumps(
        {"names": labels.names, "species": labels.species, "viewpoints": labels.viewpoints}
    ).encode()
    of_image = np.ascontiguousarray(labels.of_image, dtype="<i4").tobytes()
    viewpoint_of_image = np.ascontiguousarray(labels.viewpoint_of_image, dtype="<i2").tobytes()
    try:
        with tmp.open("wb") as fh:
            fh.write(MAGIC)
            fh.write(len(head).to_bytes(8, "little") + head)
            fh.write(len(names).to_bytes(8, "little") + names)
            fh.write(len(of_image).to_bytes(8, "little") + of_image)
            fh.write(len(viewpoint_of_image).to_bytes(8, "little") + viewpoint_of_image)
            index.write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_snapshot_header(path: Path) -> SnapshotHeader | None:
    """The header, or None when the file is missing or not a snapshot."""
    try:
        with Path(path).open("rb") as fh:
            return _header(fh)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _header(fh: io.BufferedReader) -> SnapshotHeader:
    if fh.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a gallery snapshot")
    size = int.from_bytes(fh.read(8), "little")
    return SnapshotHeader(**json.loads(fh.read(size)))


def read_snapshot(
    path: Path, *, ef_search: int = 128, nprobe: int = 64
) -> tuple[SnapshotHeader, VectorIndex, Labels]:
    with Path(path).open("rb") as fh:
        header = _header(fh)
        size = int.from_bytes(fh.read(8), "little")
        names = json.loads(fh.read(size))
        labels = Labels()
        for name, species in zip(names["names"], names["species"], strict=True):
            labels.code(name, species)
        for viewpoint in names["viewpoints"]:
            labels.viewpoint_code(viewpoint)
        size = int.from_bytes(fh.read(8), "little")
        labels.of_image = np.frombuffer(fh.read(size), dtype="<i4").astype(np.int32)
        size = int.from_bytes(fh.read(8), "little")
        labels.viewpoint_of_image = np.frombuffer(fh.read(size), dtype="<i2").astype(np.int16)
        index = VectorIndex.read(
            fh, dim=header.dim, kind=header.kind, ef_search=ef_search, nprobe=nprobe
        )
    return header, index, labels
