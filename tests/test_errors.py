"""app.errors maps each domain error to its status and code, in the one JSON error shape."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.decode import ImageTooLargeError, UnreadableImageError, UnsupportedImageTypeError
from app.errors import install_error_handlers
from app.preprocess import UnusablePhotoError
from gallery.errors import ConflictError, NotFoundError, WhaleidError
from gallery.gallery import GalleryInputError


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (UnreadableImageError("truncated"), 400, "unreadable_image"),
        (UnsupportedImageTypeError("a GIF"), 415, "unsupported_media_type"),
        (ImageTooLargeError("40000x40000"), 413, "too_large"),
        (UnusablePhotoError("10000x8: too narrow"), 422, "unusable_image"),
        (NotFoundError("no fin_1"), 404, "not_found"),
        (ConflictError("already fin_2's"), 409, "conflict"),
        (GalleryInputError("'new_individual' is reserved"), 422, "invalid_field"),
        (WhaleidError("something the user did"), 400, "bad_request"),
    ],
)
def test_domain_errors_answer_their_status(error: WhaleidError, status: int, code: str) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/raise")
    def _raise() -> None:
        raise error

    response = TestClient(app).get("/raise")
    assert response.status_code == status
    assert response.json() == {"error": {"code": code, "message": str(error)}}
