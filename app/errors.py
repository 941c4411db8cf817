"""Every error the service answers is `{"error": {"code", "message"}}` with its status.

The domain raises WhaleidError subclasses; this module is the one place that turns them, and
FastAPI's own validation errors and HTTP exceptions (404 for an unknown path, 405, 413 from the
body limit), into that shape, and counts them by code for /metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.decode import ImageTooLargeError, UnreadableImageError, UnsupportedImageTypeError
from app.preprocess import UnusablePhotoError
from app.schemas import ErrorResponse
from gallery.errors import (
    ConflictError,
    GalleryInputError,
    NotFoundError,
    StoreUnavailableError,
    WhaleidError,
)

__all__ = ["ApiError", "error_response", "install_error_handlers", "responses"]

log = logging.getLogger("whaleid.app")

# The code each status answers with when nothing more specific is known.
CODES: dict[int, str] = {
    400: "bad_request",
    401: "missing_key",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_field",
    500: "internal",
    503: "not_ready",
}

# Domain errors → (status, code). Checked in order: subclasses before their bases.
_DOMAIN: list[tuple[type[WhaleidError], int, str]] = [
    (UnreadableImageError, 400, "unreadable_image"),
    (UnsupportedImageTypeError, 415, "unsupported_media_type"),
    (ImageTooLargeError, 413, "too_large"),
    # Readable, but too small, too narrow or blank to identify anything in.
    (UnusablePhotoError, 422, "unusable_image"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    # A value that breaks a rule of the records (reserved or over-long id, a label, metadata,
    # a wrong vector): a field of the request is at fault, not the server.
    (GalleryInputError, 422, "invalid_field"),
    # The store cannot be written or reached now; searches go on from the index.
    (StoreUnavailableError, 503, "store_unavailable"),
]


class ApiError(Exception):
    """Raised by routes and dependencies for an answer that is not a domain error."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code=code, status=str(status)).inc()
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _domain_status(exc: WhaleidError) -> tuple[int, str]:
    for cls, status, code in _DOMAIN:
        if isinstance(exc, cls):
            return status, code
    return 400, "bad_request"


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    headers = {"WWW-Authenticate": "X-API-Key"} if exc.status == 401 else None
    return error_response(request, exc.status, exc.code, exc.message, headers)


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, WhaleidError)
    status, code = _domain_status(exc)
    return error_response(request, status, code, str(exc))


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 422, "invalid_field", _describe_validation(exc.errors()))


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no such path: {request.method} {request.url.path}"
    elif status == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    elif isinstance(exc.detail, str) and exc.detail:
        message = exc.detail
    else:
        message = HTTPStatus(status).phrase
    return error_response(request, status, CODES.get(status, "error"), message, exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "internal", "internal error; the server logged it")


def _describe_validation(errors: Any) -> str:
    """FastAPI's list of errors → one line naming each field ('body.image: Field required')."""
    parts = []
    for error in errors:
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
        where = ".".join(loc) or "request"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(WhaleidError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unexpected)


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route: each error status documented with the error schema."""
    described = {
        400: "the upload is not a complete image (empty, text, truncated), or the body "
        "cannot be parsed",
        401: "no X-API-Key header",
        403: "the key is unknown or lacks the scope",
        404: "no such individual or image",
        409: "conflicts with what is stored",
        413: "the body or the photo's pixel count is over the limit",
        415: "an image type that is not accepted (JPEG, PNG, WebP, TIFF are)",
        422: "a field is missing or invalid, or a photo is too small, too narrow or blank "
        "to identify anything in (code unusable_image)",
        503: "models or gallery not loaded yet, or the gallery store cannot be written now",
    }
    return {s: {"model": ErrorResponse, "description": described[s]} for s in statuses}
