"""Editing the gallery over HTTP: rename, species and metadata (PATCH), merge, and one image's
record and photo, against a real `whaleid serve` (the `edit_service` server, so the figures
the service tests measure are not moved by these edits)."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from fixtures.service import GALLERY_INDIVIDUALS, Server, catalogue_photos, next_frame
from fixtures.uploads import encode
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

NEW = "new_individual"


def parts(*paths: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]


def register(client: httpx.Client, individual_id: str, *paths: Path) -> list[int]:
    made = client.post("/gallery", files=parts(*paths), data={"individual_id": individual_id})
    assert made.status_code == 201, made.text
    return [i["image_id"] for i in made.json()["images"]]


def identify_ids(client: httpx.Client, content: bytes) -> list[str]:
    answer = client.post("/identify", files={"image": ("q.jpg", content, "image/jpeg")})
    assert answer.status_code == 200, answer.text
    return [p["individual_id"] for p in answer.json()["predictions"]]


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code
    return str(body["message"])


def test_patch_renames_and_sets_species_and_metadata(edit_service: Server, catalogue: Path) -> None:
    photos = catalogue_photos(catalogue)
    shots = photos[list(photos)[GALLERY_INDIVIDUALS + 40]]
    write, read = (
        edit_service.client(edit_service.write_key),
        edit_service.client(edit_service.read_key),
    )
    with write, read:
        ids = register(write, "edit-a", *shots[:2])
        register(write, "edit-taken", shots[2])

        renamed = write.patch(
            "/gallery/individuals/edit-a",
            json={"individual_id": "edit-b", "species": "orca", "metadata": {"sex": "F"}},
        )
        assert renamed.status_code == 200, renamed.text
        body = renamed.json()
        assert (body["id"], body["species"], body["metadata"]) == ("edit-b", "orca", {"sex": "F"})
        assert [i["id"] for i in body["images"]] == ids
        error(read.get("/gallery/individuals/edit-a"), 404, "not_found")
        # The index follows: the next frame of a renamed photo answers the new id.
        assert identify_ids(read, next_frame(shots[0]))[0] == "edit-b"
        # Species filter sees the new species too.
        orca = read.post(
            "/identify",
            files={"image": ("q.jpg", next_frame(shots[0]), "image/jpeg")},
            data={"species": "orca"},
        )
        assert orca.json()["predictions"][0]["individual_id"] == "edit-b"

        # Only what is given changes; null species makes it unknown.
        cleared = write.patch("/gallery/individuals/edit-b", json={"species": None}).json()
        assert cleared["species"] is None and cleared["metadata"] == {"sex": "F"}

        taken = write.patch("/gallery/individuals/edit-b", json={"individual_id": "edit-taken"})
        assert "already exists" in error(taken, 409, "conflict")
        missing = write.patch("/gallery/individuals/nobody-here", json={"species": "orca"})
        error(missing, 404, "not_found")
        reserved = write.patch("/gallery/individuals/edit-b", json={"individual_id": NEW})
        assert "reserved" in error(reserved, 422, "invalid_field")
        spaced = write.patch("/gallery/individuals/edit-b", json={"individual_id": "a b"})
        assert "individual_id" in error(spaced, 422, "invalid_field")
        unknown = write.patch("/gallery/individuals/edit-b", json={"colour": "grey"})
        assert "colour" in error(unknown, 422, "invalid_field")
        error(read.patch("/gallery/individuals/edit-b", json={"species": "x"}), 403, "forbidden")
        with edit_service.client() as anonymous:
            no_key = anonymous.patch("/gallery/individuals/edit-b", json={"species": "x"})
            error(no_key, 401, "missing_key")
        # None of the refused requests changed anything.
        after = read.get("/gallery/individuals/edit-b").json()
        assert (after["id"], after["species"], after["image_count"]) == ("edit-b", None, 2)


def test_merge_moves_photos_and_identify_answers_the_survivor(
    edit_service: Server, catalogue: Path
) -> None:
    photos = catalogue_photos(catalogue)
    shots = photos[list(photos)[GALLERY_INDIVIDUALS + 41]]
    write, read = (
        edit_service.client(edit_service.write_key),
        edit_service.client(edit_service.read_key),
    )
    with write, read:
        moved = register(write, "dup-a", *shots[:2])
        kept = register(write, "dup-b", shots[2])
        assert identify_ids(read, next_frame(shots[0]))[0] == "dup-a"

        error(
            read.post("/gallery/individuals/dup-a/merge", json={"into": "dup-b"}), 403, "forbidden"
        )
        merged = write.post("/gallery/individuals/dup-a/merge", json={"into": "dup-b"})
        assert merged.status_code == 200, merged.text
        body = merged.json()
        assert body["id"] == "dup-b" and body["image_count"] == 3
        assert sorted(i["id"] for i in body["images"]) == sorted(moved + kept)
        error(read.get("/gallery/individuals/dup-a"), 404, "not_found")

        # The index follows at once: the moved photo's next frame answers the surviving id.
        answer = read.post(
            "/identify", files={"image": ("q.jpg", next_frame(shots[0]), "image/jpeg")}
        ).json()
        top = answer["predictions"][0]
        assert top["individual_id"] == "dup-b" and top["evidence"]["image_id"] == moved[0]
        assert "dup-a" not in [p["individual_id"] for p in answer["predictions"]]

        itself = write.post("/gallery/individuals/dup-b/merge", json={"into": "dup-b"})
        assert "itself" in error(itself, 409, "conflict")
        error(
            write.post("/gallery/individuals/dup-b/merge", json={"into": "nobody"}),
            404,
            "not_found",
        )
        error(
            write.post("/gallery/individuals/nobody/merge", json={"into": "dup-b"}),
            404,
            "not_found",
        )
        reserved = write.post("/gallery/individuals/dup-b/merge", json={"into": NEW})
        assert "reserved" in error(reserved, 422, "invalid_field")
        assert read.get("/gallery/individuals/dup-b").json()["image_count"] == 3


def test_image_record_and_photo(edit_service: Server, catalogue: Path) -> None:
    photos = catalogue_photos(catalogue)
    shot = photos[list(photos)[GALLERY_INDIVIDUALS + 42]][0]
    with edit_service.client(edit_service.write_key) as write:
        (image_id,) = register(write, "with-photo", shot)
    with edit_service.client(edit_service.read_key) as read:
        record = read.get(f"/gallery/images/{image_id}")
        photo = read.get(f"/gallery/images/{image_id}/photo")
        missing = read.get("/gallery/images/999999")
        missing_photo = read.get("/gallery/images/999999/photo")
    assert record.status_code == 200, record.text
    body = record.json()
    width, height = Image.open(shot).size
    assert body["id"] == image_id and body["individual_id"] == "with-photo"
    assert body["filename"] == shot.name and body["media_type"] == "image/jpeg"
    assert (body["width"], body["height"]) == (width, height)
    assert photo.status_code == 200 and photo.headers["content-type"] == "image/jpeg"
    assert photo.content == shot.read_bytes()
    assert Image.open(io.BytesIO(photo.content)).size == (width, height)
    error(missing, 404, "not_found")
    error(missing_photo, 404, "not_found")
    with edit_service.client() as anonymous:
        error(anonymous.get(f"/gallery/images/{image_id}/photo"), 401, "missing_key")


def test_image_record_gives_the_upright_size_of_a_turned_png(
    edit_service: Server, catalogue: Path
) -> None:
    """A PNG whose EXIF says "turn a quarter": the record gives the size the page draws in
    (upright, as the crop box is), the photo comes back as registered, as a PNG."""
    photos = catalogue_photos(catalogue)
    shot = photos[list(photos)[GALLERY_INDIVIDUALS + 43]][0]
    img = Image.open(shot).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    content = encode(img, "PNG", exif=exif)
    with edit_service.client(edit_service.write_key) as write:
        made = write.post(
            "/gallery",
            files={"image": ("turned.png", content, "image/png")},
            data={"individual_id": "turned"},
        )
        assert made.status_code == 201, made.text
        image_id = made.json()["images"][0]["image_id"]
        record = write.get(f"/gallery/images/{image_id}").json()
        photo = write.get(f"/gallery/images/{image_id}/photo")
        thumb = write.get(f"/gallery/images/{image_id}/thumbnail", params={"size": 1024})
    width, height = img.size
    assert (record["width"], record["height"], record["media_type"]) == (height, width, "image/png")
    assert photo.headers["content-type"] == "image/png" and photo.content == content
    assert Image.open(io.BytesIO(thumb.content)).size == (height, width)


def test_openapi_documents_the_editing_routes(edit_service: Server) -> None:
    with edit_service.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    patch = paths["/gallery/individuals/{individual_id}"]["patch"]
    merge = paths["/gallery/individuals/{individual_id}/merge"]["post"]
    for route in (patch, merge):
        assert {"401", "403", "404", "409", "422"} <= set(route["responses"])
        assert "requestBody" in route
    assert (
        "image/jpeg"
        in paths["/gallery/images/{image_id}/photo"]["get"]["responses"]["200"]["content"]
    )
    assert "404" in paths["/gallery/images/{image_id}"]["get"]["responses"]
