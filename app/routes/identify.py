"""POST /identify: a photo (or several of one encounter) in, the top-k individuals (with
`new_individual`) out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from app.deps import EngineDep, IdentifyAccess
from app.engine import EncounterIdentification, Identification
from app.errors import ApiError, responses
from app.preprocess import Crop
from app.schemas import CropOut, Evidence, IdentifyResponse, Prediction
from app.uploads import read_upload
from gallery.records import Candidate
from gallery.rules import LABEL_MAX_LENGTH

__all__ = ["crop_out", "router"]

router = APIRouter(tags=["identify"])


def crop_out(crop: Crop | None) -> CropOut | None:
    if crop is None:
        return None
    x1, y1, x2, y2 = (round(float(v), 1) for v in crop.box)
    return CropOut(box=(x1, y1, x2, y2), confidence=round(float(crop.confidence), 4))


def prediction_out(c: Candidate) -> Prediction:
    """One ranked candidate as the API answers it; evidence fields only where they exist
    (local matches where re-ranked, the finding photo for encounters)."""
    evidence = None
    if c.evidence_image_id is not None:
        points = c.evidence_points
        evidence = Evidence(
            image_id=c.evidence_image_id,
            similarity=round(float(c.evidence_similarity or 0.0), 6),
            match_count=c.evidence_matches,
            matches=None
            if points is None
            else [
                (round(float(a), 1), round(float(b), 1), round(float(x), 1), round(float(y), 1))
                for a, b, x, y in points
            ],
            photo=c.evidence_photo,
        )
    return Prediction(
        individual_id=c.individual_id,
        score=round(float(c.score), 6),
        species=c.species,
        evidence=evidence,
    )


def identify_response(result: Identification, model: str) -> IdentifyResponse:
    return IdentifyResponse(
        predictions=[prediction_out(c) for c in result.candidates],
        threshold=round(float(result.threshold), 6),
        crop=crop_out(result.crop),
        model=model,
        timing_ms=result.timing_ms,
        reranked=result.reranked,
        viewpoint=result.viewpoint,
    )


def encounter_response(result: EncounterIdentification, model: str) -> IdentifyResponse:
    crops = [crop_out(c) for c in result.crops]
    return IdentifyResponse(
        predictions=[prediction_out(c) for c in result.candidates],
        threshold=round(float(result.threshold), 6),
        crop=crops[0],
        model=model,
        timing_ms=result.timing_ms,
        viewpoint=result.viewpoint,
        crops=crops,
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
        list[UploadFile],
        File(
            description="the photo: JPEG, PNG, WebP or TIFF; EXIF orientation is applied. "
            "Several `image` parts are photos of one encounter, answered together"
        ),
    ],
    top_k: Annotated[int, Form(ge=1, le=100, description="how many predictions")] = 5,
    species: Annotated[
        str | None,
        Form(
            max_length=LABEL_MAX_LENGTH,
            description="only individuals of this species (and its threshold)",
        ),
    ] = None,
    viewpoint: Annotated[
        str | None,
        Form(
            max_length=LABEL_MAX_LENGTH,
            description="the side of the animal the photos show (e.g. left, right, fluke; "
            "letters, digits, _ and -, case ignored): only gallery photos of that viewpoint or "
            "of none recorded are compared, and the threshold is the one for that many photos",
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
    where the bundle's tuned threshold ranks it: first when no known individual is that similar.

    Several `image` parts are one encounter: each photo is searched, each individual's scores
    are fused across the photos (the mean of its two best), `new_individual` is placed at the
    threshold tuned for encounters of that many photos where the bundle has one, and each
    prediction's evidence names the photo that found it (`evidence.photo`)."""
    # The settings from the engine, not a dependency: each one FastAPI solves costs every request.
    max_encounter = engine.settings.max_encounter
    if len(image) > max_encounter:
        raise ApiError(422, f"image: at most {max_encounter} photos of one encounter")
    if len(image) == 1:
        uploads = [await read_upload(image[0])]
    else:
        uploads = [await read_upload(f, default=f"image-{i}") for i, f in enumerate(image)]
    model = engine.pipeline.fingerprint
    if len(uploads) == 1:
        result = await engine.identify(
            uploads[0],
            top_k=top_k,
            species=species or None,
            viewpoint=viewpoint or None,
            explain=explain,
        )
        return identify_response(result, model)
    encounter = await engine.identify_encounter(
        uploads, top_k=top_k, species=species or None, viewpoint=viewpoint or None
    )
    return encounter_response(encounter, model)
