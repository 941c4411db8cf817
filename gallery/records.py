"""The gallery's records: what goes into the store and what comes back out.

Plain frozen dataclasses shared by the stores, the index follower and the `Gallery` facade, so
that the SQLite and PostgreSQL stores answer with the same types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any

import numpy as np

from gallery.keypoints import StoredFeatures

__all__ = [
    "KEEP",
    "Box",
    "Candidate",
    "Change",
    "EmbeddingBatch",
    "ImageRecord",
    "Individual",
    "IndividualDetail",
    "Keep",
    "NewEntry",
    "NewImage",
    "RegisteredImage",
]

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original photo


class Keep(Enum):
    """A field an update leaves as it is (None means "unknown" for some fields)."""

    KEEP = "keep"


KEEP = Keep.KEEP


@dataclass(frozen=True)
class NewImage:
    """A photo to register: its bytes (kept, content addressed), where it came from, the box the
    embedding was computed on, and the (D,) float32 L2-normalised embedding."""

    content: bytes
    filename: str
    vector: np.ndarray
    encounter: str | None = None
    box: Box | None = None
    local: StoredFeatures | None = None  # the crop's keypoints, when the bundle has a matcher
    viewpoint: str | None = None  # the side shown ("left", "fluke"); None: unknown


@dataclass(frozen=True)
class NewEntry:
    """One image row for the store: a NewImage already hashed, with its individual."""

    individual_id: str
    species: str | None
    content_hash: str
    filename: str
    encounter: str | None
    box: Box | None
    vector: np.ndarray
    metadata: dict[str, Any] | None = None
    local: StoredFeatures | None = None  # stored beside the embedding, under its fingerprint
    viewpoint: str | None = None


@dataclass(frozen=True)
class RegisteredImage:
    """The answer to one registered photo; created is False when it was already stored."""

    image_id: int
    individual_id: str
    created: bool


@dataclass(frozen=True)
class ImageRecord:
    id: int
    individual_id: str
    content_hash: str
    filename: str
    encounter: str | None
    box: Box | None
    created: datetime
    viewpoint: str | None = None


@dataclass(frozen=True)
class Individual:
    id: str
    species: str | None
    created: datetime
    metadata: dict[str, Any]
    image_count: int


@dataclass(frozen=True)
class IndividualDetail(Individual):
    images: list[ImageRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Candidate:
    """One ranked answer: an individual (or `new_individual`) and the gallery image that gave it
    its score (None for `new_individual`)."""

    individual_id: str
    score: float
    species: str | None
    evidence_image_id: int | None
    evidence_similarity: float | None  # the global cosine of the evidence photo
    evidence_matches: int | None = None  # local matches with it, when re-ranked
    evidence_points: np.ndarray | None = None  # (M, 4) xq, yq, xg, yg in upright photo pixels
    evidence_photo: int | None = None  # of an encounter: which of its photos found the evidence


@dataclass(frozen=True)
class Change:
    """One entry of the store's change log, in commit order.

    op: "add" (image embedded with the current fingerprint, of individual_id), "remove" (image
    gone), "move" (image now belongs to individual_id), "species" (individual_id's species
    changed), "reset" (the fingerprint changed: every embedding was replaced).
    """

    seq: int
    op: str
    image_id: int | None
    individual_id: str | None


@dataclass(frozen=True)
class EmbeddingBatch:
    """A slice of a consistent scan of the store: the change sequence the scan reflects, image
    ids (N,) int64, vectors (N, D) float32, each image's individual and viewpoint (None:
    unknown; an empty list: none known)."""

    head: int
    ids: np.ndarray
    vectors: np.ndarray
    individual_ids: list[str]
    viewpoints: list[str | None] = field(default_factory=list)
