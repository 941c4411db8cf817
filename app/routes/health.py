"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.engine import Engine
from app.errors import ApiError, responses
from app.metrics import CONTENT_TYPE_LATEST, Metrics
from app.schemas import Health, Readiness

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: models and index loaded",
    responses=responses(503),
)
async def readyz(request: Request) -> Readiness:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise ApiError(503, "models or gallery are loading or stopping")
    return Readiness(
        status="ready",
        model=engine.pipeline.fingerprint,
        providers=engine.providers,
        gallery_size=engine.gallery.size,
        embed_workers=engine.batcher.workers,
        rerank=engine.rerank_status,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format"}},
)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
