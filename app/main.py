"""The app factory: `create_app(settings)` builds the FastAPI app; its lifespan loads the engine.

Nothing heavy happens at import or in the factory: the lifespan opens the bundle, the gallery
and the index and warms the models up, and `/readyz` says yes only after that. Every object the
app owns lives on `app.state` (settings, keys, metrics, engine), so tests can build apps against
their own temporary folders. Run it with `whaleid serve` or `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from app.engine import Engine
from app.errors import install_error_handlers
from app.keys import KeyRing
from app.metrics import Metrics, MetricsMiddleware
from app.routes import gallery, health, identify, review
from app.settings import Settings, load_settings
from app.uploads import BodyLimit

__all__ = ["create_app"]

log = logging.getLogger("whaleid.app")

DESCRIPTION = """\
Photo-identification of individual whales, dolphins and other marked animals.

`POST /identify` answers a photo with the most likely known individuals, `new_individual`
among them; `POST /gallery` registers photos of an individual. Send an API key in the
`X-API-Key` header (`whaleid keys create --scope read|write`): writes need a `write` key.
Every error is `{"error": {"code", "message"}}` with its HTTP status.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    if not len(app.state.keys):
        log.warning(
            "no API keys configured: every request that needs a key is refused; "
            "make one with 'whaleid keys create --scope write --file keys.json'"
        )
    # Loading opens sessions and reads the whole gallery: off the loop, though nothing is
    # served until it is done (uvicorn waits for the lifespan), and a failure stops the server.
    engine = await run_in_threadpool(Engine.load, settings, app.state.metrics)
    await engine.start()
    app.state.engine = engine
    try:
        yield
    finally:
        await engine.close()
        app.state.engine = None


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app for `settings` (default: read from WHALEID_* and .env, validated now)."""
    settings = settings if settings is not None else load_settings()
    metrics = Metrics()
    app = FastAPI(
        title="whaleid",
        summary="Identify individual animals from photos",
        description=DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = KeyRing.load(settings.keys_file, settings.api_keys)
    app.state.engine = None
    install_error_handlers(app)
    # Added last is outermost: metrics time everything, the 413 for a declared size included.
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(identify.router)
    app.include_router(gallery.router)
    app.include_router(health.router)
    if settings.review_page:
        app.include_router(review.router)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("whaleid")
    except PackageNotFoundError:
        return "0+unknown"
