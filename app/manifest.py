"""The model bundle's manifest: the contract between training and serving.

A bundle is a folder holding `manifest.json` and the ONNX files it names. Training writes it
(`whaleid export`), serving reads it; it records every number preprocessing needs, so serving
never guesses. The fingerprint (sha256 over the model files, in manifest order) names the
model: gallery embeddings carry it, and a gallery made by another fingerprint is refused.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.matcher_spec import CurvePoint, MatcherSpec, RerankSpec
from app.preprocess import EmbedTransform
from gallery.errors import WhaleidError

__all__ = [
    "MANIFEST_NAME",
    "BundleError",
    "DetectorSpec",
    "EmbedderSpec",
    "EncounterOffset",
    "Manifest",
    "MatcherSpec",
    "RerankSpec",
    "ThresholdPoint",
    "file_digests",
    "fingerprint_files",
    "threshold_at",
]

MANIFEST_NAME = "manifest.json"


class BundleError(WhaleidError):
    """A bundle is missing, malformed or has been tampered with."""


class DetectorSpec(BaseModel):
    """The YOLO cropper, exported by ultralytics with NMS inside."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="ONNX file name inside the bundle")
    input_size: int = Field(640, gt=0, description="square letterbox side in pixels")
    class_names: list[str] = Field(default_factory=lambda: ["fin"])
    confidence: float = Field(0.25, ge=0.0, le=1.0, description="minimum box confidence")
    padding: float = Field(0.1, ge=0.0, description="box growth per side, × box width/height")


class EmbedderSpec(BaseModel):
    """One member of the embedding ensemble."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="ONNX file name inside the bundle")
    timm_name: str = Field(description="the timm backbone it was trained with")
    transform: EmbedTransform = Field(default_factory=EmbedTransform)
    output_dim: int = Field(gt=0)
    weight: float = Field(1.0, gt=0.0, description="weight of its normalised embedding")
    flip_tta: bool = Field(False, description="average with the horizontally flipped crop")


# One point of a threshold curve (global cosine or fused probability alike).
ThresholdPoint = CurvePoint


class EncounterOffset(BaseModel):
    """The threshold for encounters of `photos` photos, as an offset from the single-photo one
    tuned on the same open-set validation (training.evaluate.encounter_offsets)."""

    model_config = ConfigDict(extra="forbid")

    photos: int = Field(ge=2, description="photos per encounter it was tuned on")
    offset: float = Field(description="tuned encounter threshold minus the single-photo one")
    encounters: int = Field(ge=1, description="validation encounters it was tuned on")


class Manifest(BaseModel):
    """Everything serving needs to know about a bundle."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    format_version: Literal[1] = 1
    fingerprint: str = Field(description="sha256 over the model files, in manifest order")
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    detector: DetectorSpec | None = None
    embedders: list[EmbedderSpec] = Field(min_length=1)
    embedding_dim: int = Field(gt=0, description="dimension of the concatenated embedding")
    box_padding: float = Field(
        0.1,
        ge=0.0,
        description="box growth per side × box width/height for every crop, the detector's "
        "and the catalogue's alike: the embedders were trained on crops grown this much",
    )
    threshold: float = Field(description="similarity under which new_individual ranks first")
    threshold_curve: list[ThresholdPoint] = Field(
        default_factory=list,
        description="the threshold tuned on smaller galleries, by size: a new individual's "
        "best impostor scores higher among more photos, so a small gallery needs a lower "
        "threshold; `threshold` holds at the validation gallery's size and beyond",
    )
    species_thresholds: dict[str, float] = Field(default_factory=dict)
    encounter_offsets: list[EncounterOffset] = Field(
        default_factory=list,
        description="added to the global threshold (for the species or gallery size) when "
        "several photos of one encounter are answered together, whose fused scores need "
        "their own threshold; an encounter takes the largest size tuned at or below its own "
        "(app.encounters); none: the single-photo threshold",
    )
    species: list[str] = Field(default_factory=list)
    cv_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="open-set validation figures at `threshold` (map5, map5_known, map5_new, "
        "query counts): the run's own evaluation for one run; for an ensemble, its photos "
        "embedded by this bundle as serving embeds them",
    )
    training_configs: list[dict[str, Any]] = Field(
        default_factory=list, description="each embedder's training config, in order"
    )
    file_digests: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each model file, to name a tampered one"
    )
    matcher: MatcherSpec | None = Field(
        None, description="the local keypoint extractor and matcher (`whaleid export --matcher`)"
    )
    rerank: RerankSpec | None = Field(
        None,
        description="re-ranking of the global shortlist by local matches, with its calibrated "
        "fusion and fused threshold; `threshold` above stays the global-only one",
    )

    @model_validator(mode="after")
    def _dimensions_add_up(self) -> Manifest:
        total = sum(e.output_dim for e in self.embedders)
        if total != self.embedding_dim:
            raise ValueError(f"embedding_dim {self.embedding_dim} != sum of outputs {total}")
        # One padding for every crop, so an imported catalogue box and a detected box of the
        # same fin give the same crop.
        if self.detector is not None and self.detector.padding != self.box_padding:
            raise ValueError(
                f"detector.padding {self.detector.padding} != box_padding {self.box_padding}"
            )
        for curve in (self.threshold_curve, self.rerank.threshold_curve if self.rerank else []):
            sizes = [p.images for p in curve]
            if any(b <= a for a, b in pairwise(sizes)):
                raise ValueError(f"threshold_curve sizes must increase: {sizes}")
        sizes = [o.photos for o in self.encounter_offsets]
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"encounter_offsets: one offset per size, got sizes {sizes}")
        if self.rerank is not None and self.matcher is None:
            raise ValueError("rerank needs a matcher")
        return self

    @property
    def model_files(self) -> list[str]:
        """The files the fingerprint covers, in order: detector first, then embedders, then
        the matcher's (so bundles without a matcher keep their fingerprint)."""
        files = [self.detector.file] if self.detector else []
        files += [e.file for e in self.embedders]
        return files + (self.matcher.files if self.matcher else [])

    def threshold_for(self, species: str | None, gallery_images: int | None = None) -> float:
        """The species' tuned threshold where there is one; else the one for a gallery of
        `gallery_images` embeddings: the curve interpolated in log(size), the curve's first
        point below it, `threshold` at and beyond its last (and when the size is not given)."""
        if species is not None and species in self.species_thresholds:
            return self.species_thresholds[species]
        return threshold_at(self.threshold, self.threshold_curve, gallery_images)

    def rerank_threshold_for(self, gallery_images: int | None = None) -> float:
        """The fused-probability threshold for a gallery of `gallery_images` embeddings, as
        `threshold_for` reads the global one."""
        if self.rerank is None:
            raise ValueError("this bundle has no re-ranking")
        return threshold_at(self.rerank.threshold, self.rerank.threshold_curve, gallery_images)

    def write(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_NAME
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def read(cls, bundle_dir: Path, *, verify: bool = True) -> Manifest:
        """Load and check a bundle's manifest: files present and fingerprint matching."""
        bundle_dir = Path(bundle_dir)
        path = bundle_dir / MANIFEST_NAME
        if not path.is_file():
            raise BundleError(f"{bundle_dir} is not a model bundle: it has no {MANIFEST_NAME}")
        try:
            manifest = cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise BundleError(f"{path}: {where}: {first['msg']}") from exc
        if verify:
            manifest.verify(bundle_dir)
        return manifest

    def verify(self, bundle_dir: Path) -> None:
        """Every model file present and unchanged since export; names the file that is not."""
        missing = [f for f in self.model_files if not (Path(bundle_dir) / f).is_file()]
        if missing:
            raise BundleError(f"bundle {bundle_dir} is missing {', '.join(missing)}")
        for name in self.model_files:
            expected = self.file_digests.get(name)
            if expected is not None and _sha256(Path(bundle_dir) / name) != expected:
                raise BundleError(
                    f"{Path(bundle_dir) / name} has changed since export (sha256 differs from "
                    "the manifest): re-export the bundle or restore the file"
                )
        actual = fingerprint_files(Path(bundle_dir), self.model_files)
        if actual != self.fingerprint:
            raise BundleError(f"bundle {bundle_dir}: fingerprint differs from the manifest")


def threshold_at(threshold: float, curve: list[CurvePoint], gallery_images: int | None) -> float:
    """A threshold curve read at a gallery size: interpolated in log(size), its first point
    below it, `threshold` at and beyond its last point (and when the size is not given)."""
    if gallery_images is None or not curve or gallery_images >= curve[-1].images:
        return threshold
    if gallery_images <= curve[0].images:
        return curve[0].threshold
    upper = next(i for i, p in enumerate(curve) if p.images > gallery_images)
    a, b = curve[upper - 1], curve[upper]
    share = math.log(gallery_images / a.images) / math.log(b.images / a.images)
    return a.threshold + share * (b.threshold - a.threshold)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(bundle_dir: Path, files: list[str]) -> dict[str, str]:
    """sha256 of each model file, by name."""
    return {name: _sha256(Path(bundle_dir) / name) for name in files}


def fingerprint_files(bundle_dir: Path, files: list[str]) -> str:
    """sha256 over the per-file digests, in order: the bundle's name for its model."""
    digest = hashlib.sha256()
    for name, file_digest in file_digests(bundle_dir, files).items():
        digest.update(name.encode() + b"\0" + file_digest.encode() + b"\n")
    return digest.hexdigest()
