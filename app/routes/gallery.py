"""The gallery over HTTP: register photos of an individual; list, show, edit, merge and delete
individuals; show, fetch and delete images."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile

from app.deps import EngineDep, ReadAccess, SettingsDep, WriteAccess
from app.errors import ApiError, responses
from app.routes.identify import crop_out
from app.schemas import (
    ImageDetailOut,
    ImageOut,
    IndividualDetailOut,
    IndividualOut,
    IndividualPage,
    IndividualUpdate,
    MergeRequest,
    RegisteredImageOut,
    RegisterResponse,
)
from app.uploads import read_upload
from gallery.records import KEEP, IndividualDetail
from gallery.rules import ID_PATTERN, LABEL_MAX_LENGTH, METADATA_MAX_BYTES

__all__ = ["router"]

router = APIRouter(prefix="/gallery", tags=["gallery"])

# The schema states the records' own rules (gallery.rules), which hold on every path.
IndividualId = Annotated[
    str, Path(pattern=ID_PATTERN, description="the individual's id", examples=["fin_0042"])
]
# Both stores count in signed 64-bit integers (image ids, offsets): a larger number is
# refused here rather than overflowing in the store's driver.
INT64_MAX = 2**63 - 1
ImageId = Annotated[int, Path(ge=0, le=INT64_MAX, description="the image's id")]


@router.post(
    "",
    status_code=201,
    response_model=RegisterResponse,
    summary="Register photos of an individual (new or known)",
    responses=responses(400, 401, 403, 409, 413, 415, 422, 503),
)
async def register(
    _key: WriteAccess,
    engine: EngineDep,
    settings: SettingsDep,
    image: Annotated[
        list[UploadFile], File(description="one or more photos of the same individual")
    ],
    individual_id: Annotated[
        str,
        Form(pattern=ID_PATTERN, description="a new id, or a known one to add photos to"),
    ],
    species: Annotated[
        str | None, Form(max_length=LABEL_MAX_LENGTH, description="its species")
    ] = None,
    encounter: Annotated[
        str | None,
        Form(max_length=LABEL_MAX_LENGTH, description="the encounter (survey, date, place)"),
    ] = None,
    metadata: Annotated[
        str | None, Form(max_length=METADATA_MAX_BYTES, description="a JSON object stored with it")
    ] = None,
    viewpoint: Annotated[
        str | None,
        Form(
            max_length=LABEL_MAX_LENGTH,
            description="the side of the animal every photo of this request shows (e.g. left, "
            "right, fluke; letters, digits, _ and -, case ignored); empty: unknown",
        ),
    ] = None,
) -> RegisterResponse:
    """Embed each photo and store it with the individual. Durable when it answers: a photo
    registered here ranks its individual from the next request on, also after a restart."""
    if len(image) > settings.max_images:
        raise ApiError(422, f"image: at most {settings.max_images} photos per request")
    uploads = [await read_upload(f, default=f"image-{i}") for i, f in enumerate(image)]
    result = await engine.register(
        uploads,
        individual_id=individual_id,
        species=species or None,
        encounter=encounter or None,
        metadata=_json_object(metadata),
        viewpoint=viewpoint or None,
    )
    return RegisterResponse(
        individual_id=result.individual_id,
        images=[
            RegisteredImageOut(
                image_id=record.image_id,
                filename=filename,
                created=record.created,
                crop=crop_out(crop),
            )
            for record, filename, crop in result.images
        ],
    )


@router.get(
    "/individuals",
    response_model=IndividualPage,
    summary="List individuals",
    responses=responses(401, 403, 422, 503),
)
async def list_individuals(
    _key: ReadAccess,
    engine: EngineDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="page size")] = 100,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX, description="how many to skip")] = 0,
    species: Annotated[
        str | None, Query(max_length=LABEL_MAX_LENGTH, description="only this species")
    ] = None,
) -> IndividualPage:
    items = await engine.individuals(limit=limit, offset=offset, species=species)
    return IndividualPage(
        items=[IndividualOut.model_validate(i) for i in items], limit=limit, offset=offset
    )


@router.get(
    "/individuals/{individual_id}",
    response_model=IndividualDetailOut,
    summary="One individual and its images",
    responses=responses(401, 403, 404, 422, 503),
)
async def get_individual(
    _key: ReadAccess, engine: EngineDep, individual_id: IndividualId
) -> IndividualDetailOut:
    return _detail_out(await engine.individual(individual_id))


@router.patch(
    "/individuals/{individual_id}",
    response_model=IndividualDetailOut,
    summary="Rename an individual, set its species or metadata",
    responses=responses(400, 401, 403, 404, 409, 422, 503),
)
async def update_individual(
    _key: WriteAccess, engine: EngineDep, individual_id: IndividualId, update: IndividualUpdate
) -> IndividualDetailOut:
    """Each field given is changed, in one transaction: `individual_id` renames it (its photos
    follow; 409 when the new id exists: merge instead), `species` sets it (null: unknown),
    `metadata` replaces the stored object. Answers the individual as it is now."""
    given = update.model_fields_set
    detail = await engine.update_individual(
        individual_id,
        new_id=update.individual_id,
        species=update.species if "species" in given else KEEP,
        metadata=update.metadata,
    )
    return _detail_out(detail)


@router.post(
    "/individuals/{individual_id}/merge",
    response_model=IndividualDetailOut,
    summary="Merge an individual into another",
    responses=responses(400, 401, 403, 404, 409, 422, 503),
)
async def merge_individual(
    _key: WriteAccess, engine: EngineDep, individual_id: IndividualId, merge: MergeRequest
) -> IndividualDetailOut:
    """For two ids found to be one animal: this individual's photos move to `into`, which
    keeps its id (and its species and metadata, completed from this one's); this id is gone.
    409 for a merge into itself or across species. Answers the surviving individual; identify
    answers its id from the next request on."""
    return _detail_out(await engine.merge(individual_id, merge.into))


@router.delete(
    "/individuals/{individual_id}",
    status_code=204,
    response_class=Response,
    summary="Delete an individual and all its images",
    responses=responses(401, 403, 404, 422, 503),
)
async def delete_individual(
    _key: WriteAccess, engine: EngineDep, individual_id: IndividualId
) -> Response:
    await engine.delete_individual(individual_id)
    return Response(status_code=204)


@router.get(
    "/images/{image_id}",
    response_model=ImageDetailOut,
    summary="One image: its individual, crop box and photo size",
    responses=responses(401, 403, 404, 422, 503),
)
async def get_image(_key: ReadAccess, engine: EngineDep, image_id: ImageId) -> ImageDetailOut:
    record, info = await engine.image(image_id)
    return ImageDetailOut(
        **ImageOut.model_validate(record).model_dump(),
        individual_id=record.individual_id,
        media_type=None if info is None else info.media_type,
        width=None if info is None else info.width,
        height=None if info is None else info.height,
    )


@router.get(
    "/images/{image_id}/photo",
    response_class=Response,
    summary="A gallery photo as it was registered",
    responses={
        200: {
            "content": {t: {} for t in ("image/jpeg", "image/png", "image/webp", "image/tiff")},
            "description": "the original bytes (EXIF orientation not applied)",
        },
        **responses(401, 403, 404, 422, 503),
    },
)
async def photo(_key: ReadAccess, engine: EngineDep, image_id: ImageId) -> Response:
    content, media_type = await engine.photo(image_id)
    # Content-addressed: an image id's photo never changes while the image exists.
    return Response(content, media_type=media_type, headers={"Cache-Control": "max-age=3600"})


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    summary="A gallery photo as a small JPEG (evidence)",
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "the upright photo, scaled down"},
        **responses(401, 403, 404, 422, 503),
    },
)
async def thumbnail(
    _key: ReadAccess,
    engine: EngineDep,
    image_id: ImageId,
    size: Annotated[int, Query(ge=16, le=1024, description="longer side in pixels")] = 256,
) -> Response:
    content = await engine.thumbnail(image_id, size)
    return Response(content, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.delete(
    "/images/{image_id}",
    status_code=204,
    response_class=Response,
    summary="Delete one image",
    responses=responses(401, 403, 404, 422, 503),
)
async def delete_image(_key: WriteAccess, engine: EngineDep, image_id: ImageId) -> Response:
    await engine.delete_image(image_id)
    return Response(status_code=204)


def _detail_out(detail: IndividualDetail) -> IndividualDetailOut:
    return IndividualDetailOut(
        id=detail.id,
        species=detail.species,
        created=detail.created,
        metadata=detail.metadata,
        image_count=detail.image_count,
        images=[ImageOut.model_validate(i) for i in detail.images],
    )


def _json_object(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(422, f"metadata: not JSON ({exc.msg} at {exc.pos})") from exc
    if not isinstance(value, dict):
        raise ApiError(422, "metadata: must be a JSON object")
    return value
