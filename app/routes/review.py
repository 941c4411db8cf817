"""GET /review: the page where a person decides "this is X" or "new individual" for each photo.

Static files (review.html, review.js, review.css, shipped as package data) that call the JSON
API from the browser with the key the reviewer types in; the server adds nothing to them, so
the page cannot diverge from the API it shows, and it needs no build step and no CDN.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi.responses import HTMLResponse, Response

__all__ = ["router"]

router = APIRouter(tags=["review"])

_MEDIA_TYPES = {"js": "text/javascript", "css": "text/css"}


def _read(name: str) -> str:
    return files("app.routes").joinpath(name).read_text(encoding="utf-8")


@router.get("/review", response_class=HTMLResponse, summary="Review page (HTML)")
async def review() -> HTMLResponse:
    return HTMLResponse(_read("review.html"))


@router.get(
    "/review/review.{kind}",
    response_class=Response,
    summary="The review page's script and style sheet",
    include_in_schema=False,
)
async def asset(kind: Annotated[Literal["js", "css"], Path()]) -> Response:
    return Response(_read(f"review.{kind}"), media_type=_MEDIA_TYPES[kind])
