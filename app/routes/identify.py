"""POST /identify: a photo in, the top-k individuals (with `new_individual`) out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from app.deps import EngineDep, IdentifyAccess
from app.engine import Identification
from app.errors import responses
from app.preprocess import Crop
from app.schemas import CropOut, Evidence, IdentifyResponse, Prediction
from app.uploads import read_upload
from gallery.rules import LABEL_MAX_LENGTH

__all__ = ["crop_out", "router"]

router = APIRouter(tags=["identify"])


def crop_out(crop: Crop | None) -> CropOut | None:
    if crop is None:
        return None
    x1, y1, x2, y2 = (round(float(v), 1) for v in crop.box)
    return CropOut(box=(x1, y1, x2, y2), confidence=round(float(crop.confidence), 4))


def identify_response(result: Identification, model: str) -> IdentifyResponse:
    predictions = [
        Prediction(
            individual_id=c.individual_id,
            score=round(float(c.score), 6),
            species=c.species,
            evidence=None
            if c.evidence_image_id is None
            else Evidence(
                image_id=c.evidence_image_id,
                similarity=round(float(c.evidence_similarity or 0.0), 6),
                match_count=c.evidence_matches,
                matches=None
                if c.evidence_points is None
                else [
                    (round(float(a), 1), round(float(b), 1), round(float(x), 1), round(float(y), 1))
                    for a, b, x, y in c.evidence_points
                ],
            ),
        )
        for c in result.candidates
    ]
    return IdentifyResponse(
        predictions=predictions,
        threshold=round(float(result.threshold), 6),
        crop=crop_out(result.crop),
        model=model,
        timing_ms=result.timing_ms,
        reranked=result.reranked,
    )


@router.post(
    "/identify",
    response_model=IdentifyResponse,
    summary="Identify the individual in a photo",
    responses=responses(400, 401, 403, 413, 415, 422, 503),
)
async def identify(
    _key: IdentifyAccess,
    engine: EngineDep,
    image: Annotated[
        UploadFile,
        File(description="the photo: JPEG, PNG, WebP or TIFF; EXIF orientation is applied"),
    ],
    top_k: Annotated[int, Form(ge=1, le=100, description="how many predictions")] = 5,
    species: Annotated[
        str | None,
        Form(
            max_length=LABEL_MAX_LENGTH,
            description="only individuals of this species (and its threshold)",
        ),
    ] = None,
    explain: Annotated[
        bool,
        Query(
            description="add each candidate's matched keypoints (`evidence.matches`) where the "
            "answer was re-ranked by local matches"
        ),
    ] = False,
) -> IdentifyResponse:
    """The `top_k` most likely individuals, best first. `new_individual` is one of them, placed
    where the bundle's tuned threshold ranks it: first when no known individual is that similar."""
    upload = await read_upload(image)
    result = await engine.identify(upload, top_k=top_k, species=species or None, explain=explain)
    return identify_response(result, engine.pipeline.fingerprint)
