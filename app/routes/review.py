"""GET /review: a small page where a researcher uploads a photo and sees the top-5 with evidence.

One static HTML file (app/routes/review.html, shipped as package data) that calls the JSON API
from the browser with the key the researcher types in; the server adds nothing to it, so the
page cannot diverge from the API it shows.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

__all__ = ["router"]

router = APIRouter(tags=["review"])


@router.get("/review", response_class=HTMLResponse, summary="Review page (HTML)")
async def review() -> HTMLResponse:
    page = files("app.routes").joinpath("review.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
