"""Dependencies shared by the routers, as `Annotated` aliases (the FastAPI way).

All are `async def`: each only reads app state or hashes a key (microseconds), and FastAPI runs
a plain `def` dependency in its thread pool, a hand-off per dependency per request that cost
more than the work (about 0.2 ms each on a 2-core host, on every /identify).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from app.engine import Engine
from app.errors import ApiError
from app.keys import KeyRecord, KeyRing, Scope
from app.settings import Settings

__all__ = ["EngineDep", "IdentifyAccess", "ReadAccess", "SettingsDep", "WriteAccess"]

API_KEY_HEADER = "X-API-Key"

# auto_error=False: a missing key is our 401 in our error shape, not FastAPI's 403.
_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    scheme_name="ApiKey",
    description="an API key made with `whaleid keys create`; writes need a `write` key",
)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    """The loaded engine, or 503 while the service starts or stops."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None or not engine.ready:
        raise ApiError(503, "the service is not ready: models or gallery are loading or stopping")
    return engine


def _require(
    scope: Scope, *, may_be_open: bool = False
) -> Callable[..., Awaitable[KeyRecord | None]]:
    """A dependency that lets a request through with a key of `scope` (or, where `may_be_open`
    and the operator set WHALEID_OPEN_IDENTIFY, with none). 401 without a key, 403 with a wrong
    one or one whose scope is too small."""

    async def check(
        request: Request, key: Annotated[str | None, Security(_api_key)] = None
    ) -> KeyRecord | None:
        settings: Settings = request.app.state.settings
        if may_be_open and settings.open_identify:
            return None
        if not key:
            raise ApiError(401, f"this route needs an {API_KEY_HEADER} header with a {scope} key")
        keys: KeyRing = request.app.state.keys
        record = keys.authenticate(key)
        if record is None:
            raise ApiError(403, f"the {API_KEY_HEADER} is not a key this service accepts")
        if not record.allows(scope):
            raise ApiError(403, f"this key has scope {record.scope}; this route needs {scope}")
        return record

    return check


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
IdentifyAccess = Annotated[KeyRecord | None, Depends(_require("read", may_be_open=True))]
ReadAccess = Annotated[KeyRecord | None, Depends(_require("read"))]
WriteAccess = Annotated[KeyRecord | None, Depends(_require("write"))]
