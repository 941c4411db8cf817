"""What the HTTP API answers, as pydantic models: the contract of DESIGN.md, described field by
field for the OpenAPI page at /docs. Domain records (gallery.records) become these at the edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from gallery.rules import ID_PATTERN

# Four numbers (a box, or a match's two points) as a plain array of numbers: a tuple's
# `prefixItems` is valid OpenAPI 3.1 that some clients' validators still reject.
Quad = Annotated[list[float], Field(min_length=4, max_length=4)]

__all__ = [
    "CropOut",
    "ErrorDetail",
    "ErrorResponse",
    "Evidence",
    "Health",
    "IdentifyResponse",
    "ImageDetailOut",
    "ImageOut",
    "IndividualDetailOut",
    "IndividualOut",
    "IndividualPage",
    "IndividualUpdate",
    "MergeRequest",
    "Prediction",
    "Readiness",
    "RegisterResponse",
    "RegisteredImageOut",
]


class ErrorDetail(BaseModel):
    code: str = Field(
        description="machine-readable: unreadable_image, missing_key, forbidden, not_found, "
        "conflict, too_large, unsupported_media_type, invalid_field, not_ready, "
        "store_unavailable, internal",
        examples=["unsupported_media_type"],
    )
    message: str = Field(description="what went wrong, for a person", examples=["photo is GIF"])


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class Evidence(BaseModel):
    image_id: int = Field(description="the gallery image that gave the individual its score")
    similarity: float = Field(description="global cosine similarity of that image to the query")
    match_count: int | None = Field(
        None,
        description="local keypoint matches between the query's crop and that image's, where "
        "the bundle re-ranks with local features (null otherwise)",
    )
    matches: list[Quad] | None = Field(
        None,
        description="optional, only where local matching re-ranked the answer and the request "
        "asked for it (`?explain=1`): matched keypoints as [x_query, y_query, x_gallery, "
        "y_gallery], in pixels of the upright query photo and of the upright evidence photo; "
        "the review page draws them as lines",
    )
    photo: int | None = Field(
        None,
        description="for an encounter (several `image` parts): the index, in request order, "
        "of the photo most similar to this gallery image; null for one photo",
    )


class Prediction(BaseModel):
    individual_id: str = Field(
        description="a known individual, or `new_individual` where the threshold ranks it"
    )
    score: float = Field(
        description="the individual's best score; for new_individual, the threshold. Where the "
        "bundle re-ranks with local features (`/readyz` `rerank`), the calibrated probability "
        "that the query shows this individual (global similarity and local matches fused); "
        "otherwise the best cosine similarity"
    )
    species: str | None = Field(None, description="the individual's species, when known")
    evidence: Evidence | None = Field(
        None, description="the gallery image that gave the score (null for new_individual)"
    )


class CropOut(BaseModel):
    box: Quad = Field(description="x1, y1, x2, y2 in pixels of the upright photo")
    confidence: float = Field(description="the detector's confidence")


class IdentifyResponse(BaseModel):
    predictions: list[Prediction] = Field(
        description="top_k candidates, best first; `new_individual` is one of them"
    )
    threshold: float = Field(
        description="score under which new_individual ranks first: the bundle's, tuned "
        "for the species where it has one, else for a gallery of the current size, plus its "
        "offset for an encounter of that many photos (a fused probability where the answer "
        "was re-ranked)"
    )
    reranked: bool = Field(
        False, description="true when local matches re-ranked the global shortlist"
    )
    crop: CropOut | None = Field(
        description="where the photo was cropped; null when the whole photo was used"
    )
    model: str = Field(description="the bundle's fingerprint")
    timing_ms: dict[str, float] = Field(
        description="milliseconds spent: decode, queue (waiting for a batch), embed, search, "
        "and where re-ranked match (local matching of the shortlist) and rank; total"
    )
    viewpoint: str | None = Field(
        None,
        description="the viewpoint the search used, as normalised (lower case): only gallery "
        "photos of it or of no recorded viewpoint were compared; null when none was given "
        "(every photo compared)",
    )
    crops: list[CropOut | None] | None = Field(
        None,
        description="for an encounter: where each photo was cropped, in request order (`crop` "
        "is the first photo's); null for one photo",
    )


class RegisteredImageOut(BaseModel):
    image_id: int
    filename: str
    created: bool = Field(description="false when this exact photo was already registered")
    crop: CropOut | None = Field(description="where the photo was cropped for its embedding")


class RegisterResponse(BaseModel):
    individual_id: str
    images: list[RegisteredImageOut] = Field(description="one per uploaded photo, in order")


class ImageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    filename: str
    encounter: str | None = None
    viewpoint: str | None = Field(None, description="the side of the animal shown; null: unknown")
    box: Quad | None = Field(
        None, description="the crop its embedding was computed on: x1, y1, x2, y2 in pixels"
    )
    created: datetime


class ImageDetailOut(ImageOut):
    individual_id: str = Field(description="the individual it belongs to")
    media_type: str | None = Field(
        None, description="of the photo at /gallery/images/{id}/photo; null when not kept"
    )
    width: int | None = Field(None, description="the upright photo's width in pixels")
    height: int | None = Field(None, description="the upright photo's height in pixels")


class IndividualUpdate(BaseModel):
    """PATCH /gallery/individuals/{id}: each field given is changed, the others are kept."""

    model_config = ConfigDict(extra="forbid")

    individual_id: str | None = Field(
        None,
        pattern=ID_PATTERN,
        description="a new id (must be free: merge into an existing one instead)",
        examples=["fin_0042"],
    )
    species: str | None = Field(
        None, max_length=200, description="its species; null makes it unknown"
    )
    metadata: dict[str, Any] | None = Field(None, description="replaces the stored metadata object")


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    into: str = Field(
        pattern=ID_PATTERN,
        description="the individual that keeps its id and receives this one's photos",
        examples=["fin_0042"],
    )


class IndividualOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    species: str | None = None
    created: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    image_count: int


class IndividualDetailOut(IndividualOut):
    images: list[ImageOut] = Field(default_factory=list)


class IndividualPage(BaseModel):
    items: list[IndividualOut]
    limit: int
    offset: int


class Health(BaseModel):
    status: str = Field("ok", description="the process is up and answering")


class Readiness(BaseModel):
    status: str = Field("ready", description="ready (a 503 error answers otherwise)")
    model: str | None = Field(None, description="the bundle's fingerprint")
    providers: list[str] = Field(default_factory=list, description="onnxruntime providers in use")
    gallery_size: int | None = Field(None, description="images in the search index")
    embed_workers: int = Field(
        1, description="copies of the models embedding batches side by side (WHALEID_EMBED_WORKERS)"
    )
    rerank: str = Field(
        "off",
        description="local-feature re-ranking: `off`, or the method and shortlist in use, "
        "e.g. `lightglue/aliked, 20 photos`",
    )
