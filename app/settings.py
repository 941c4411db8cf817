"""The service's settings: `WHALEID_*` environment variables and an optional `.env` file.

One typed object, validated when the service starts, so a wrong setting stops it with a message
naming the variable instead of failing on the first request. Nothing is read at import: the app
factory and `whaleid serve` build a Settings when they need one (tests build their own).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from app.decode import DEFAULT_DRAFT_SIDE, DEFAULT_MAX_PIXELS
from app.keys import KeyRecord
from app.manifest import MANIFEST_NAME
from gallery.errors import WhaleidError
from gallery.store import normalize_url

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "SettingsError",
    "StoreSettings",
    "load_settings",
    "load_store_settings",
]

ENV_PREFIX = "WHALEID_"

S = TypeVar("S", bound="StoreSettings")


class SettingsError(WhaleidError):
    """A setting is missing or wrong; the message names the environment variable."""


class StoreSettings(BaseSettings):
    """Where the gallery is: all that `whaleid gallery` needs, read the same way as the
    service's settings (environment, then `.env`)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        # Other programs' variables share .env (docker-compose reads it too): ignored here;
        # a misspelt WHALEID_* one is named in a warning by load_settings.
        extra="ignore",
        validate_default=True,
    )

    gallery: str = Field(
        "gallery.db",
        description="gallery store: a SQLite file path, sqlite:///abs/path.db or "
        "postgresql://user:password@host/db",
    )
    photos_dir: Path | None = Field(
        None,
        description="where registered photos are kept (evidence thumbnails, re-embedding); "
        "default: the folder the gallery recorded, else <name>-photos/ beside a SQLite file; "
        "a PostgreSQL gallery keeps none unless given one",
    )

    @field_validator("gallery")
    @classmethod
    def _gallery_is_a_url(cls, value: str) -> str:
        return normalize_url(value)

    @model_validator(mode="after")
    def _photos_dir_usable(self) -> StoreSettings:
        if (
            self.photos_dir is not None
            and self.photos_dir.exists()
            and not self.photos_dir.is_dir()
        ):
            raise ValueError(f"photos_dir {self.photos_dir} exists and is not a folder")
        return self


class Settings(StoreSettings):
    """Everything an operator can set. Each field is `WHALEID_<NAME>` in the environment."""

    # What to serve.
    bundle: Path = Field(description="model bundle folder (holds manifest.json)")
    index: Literal["auto", "flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw"] = Field(
        "auto",
        description="faiss index: auto (flat, exact, below 100,000 photos; ivf-sq8 above, "
        "chosen at each start), or one kind: flat, ivf-flat, ivf-sq8, ivf-pq, hnsw",
    )
    index_nprobe: int = Field(
        64,
        ge=1,
        description="cells an IVF index searches per query (of about √photos): more finds more "
        "of the exact top hits, slower (bench/RESULTS.md, Gallery at scale)",
    )
    index_snapshot: Path | None = Field(
        None, description="file to restore the index from at start and save it to at stop"
    )
    refresh_seconds: float = Field(
        1.0,
        ge=0,
        description="how often to pick up gallery changes made by other workers or replicas "
        "(0: never)",
    )

    # Inference.
    providers: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="onnxruntime providers in order, comma separated (cuda; tensorrt,cuda; "
        "cpu) or a JSON list; default: CUDA when present, else CPU",
    )
    intra_op_spinning: bool = Field(
        False,
        description="let onnxruntime's CPU threads busy-wait between runs (only pays on a CPU "
        "host that serves nothing else; off, the detector and embedders stop stealing each "
        "other's cores)",
    )
    embed_workers: int | None = Field(
        None,
        ge=1,
        le=16,
        description="copies of the models, each embedding one batch at a time in its own thread "
        "(default: 2 on the CPU provider, where two copies overlap one batch's preprocessing and "
        "onnxruntime's thread hand-offs with another's; 1 on a GPU)",
    )
    max_batch: int = Field(16, ge=1, le=1024, description="most photos embedded in one call")
    max_wait_ms: float = Field(
        5.0, ge=0, le=1000, description="how long a batch waits for more photos before it runs"
    )
    warmup: bool = Field(True, description="run the models once at start, before /readyz is ok")
    rerank_shortlist: int | None = Field(
        None,
        ge=0,
        le=200,
        description="gallery photos re-ranked by local matches per query, when the bundle has "
        "a matcher: default the number the bundle was tuned with (20); 0 turns re-ranking off "
        "(global similarity only, the bundle's global threshold)",
    )

    # Uploads.
    max_upload_bytes: int = Field(
        20_000_000, gt=0, description="largest request body accepted, in bytes (else 413)"
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, gt=0, description="largest photo, in pixels, checked before decoding"
    )
    draft_side: int | None = Field(
        DEFAULT_DRAFT_SIDE,
        gt=0,
        description="a JPEG is decoded at 1/2, 1/4 or 1/8 scale while its longer side stays at "
        "least this (2048: photos of 4096 px and more); training decodes with the default",
    )
    max_images: int = Field(32, ge=1, description="most photos in one POST /gallery")
    max_encounter: int = Field(
        10, ge=1, description="most photos of one encounter in one POST /identify"
    )

    # Access.
    keys_file: Path | None = Field(
        None, description="JSON file of hashed API keys, as written by 'whaleid keys create'"
    )
    api_keys: list[KeyRecord] = Field(
        default_factory=list,
        description="hashed API keys as JSON (same records as the keys file)",
    )
    open_identify: bool = Field(
        False, description="let POST /identify and gallery reads run without a key"
    )

    # Server.
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes (each loads the models)")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    review_page: bool = Field(True, description="serve the review page at /review")

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p.strip() for p in text.split(",") if p.strip()] or None
        return value

    @field_validator("bundle")
    @classmethod
    def _bundle_is_a_bundle(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        if not (value / MANIFEST_NAME).is_file():
            raise ValueError(f"{value} is not a model bundle: it has no {MANIFEST_NAME}")
        return value

    @field_validator("keys_file")
    @classmethod
    def _keys_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(
                f"{value} does not exist; make one with 'whaleid keys create --file {value}'"
            )
        return value


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `.env`, with `overrides` on top; a SettingsError names
    each variable that is missing or wrong."""
    return _load(Settings, overrides)


def load_store_settings(**overrides: Any) -> StoreSettings:
    """The gallery's settings alone (what `whaleid gallery` needs), read as load_settings does."""
    return _load(StoreSettings, overrides)


def _load(kind: type[S], overrides: dict[str, Any]) -> S:
    _warn_unknown()
    try:
        return kind(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from exc
    except SourceError as exc:  # a WHALEID_* value that should be JSON and is not
        raise SettingsError(f"invalid settings: {exc}") from exc


def _warn_unknown() -> None:
    """Warn about WHALEID_* names that are no setting (a typo would otherwise be silent)."""
    import difflib
    import logging
    import os

    from dotenv import dotenv_values

    names = set(os.environ)
    if Path(".env").is_file():
        names |= set(dotenv_values(".env"))
    fields = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    # Names the scripts and the demo use for themselves.
    own = {f"{ENV_PREFIX}VENV", f"{ENV_PREFIX}KEY"}
    for name in sorted(n for n in names if n.upper().startswith(ENV_PREFIX)):
        if name.upper() in fields or name.upper() in own:
            continue
        close = difflib.get_close_matches(name.upper(), fields, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        logging.getLogger("whaleid.app").warning("%s is not a setting: ignored%s", name, hint)


def describe(exc: ValidationError) -> str:
    """One line per problem, naming the WHALEID_* variable."""
    lines = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("missing", "extra_forbidden"):
            message = "is required" if error["type"] == "missing" else "is not a setting"
            lines.append(f"{name} {message}")
            continue
        lines.append(f"{name}: {message}")
    return "invalid settings: " + "; ".join(lines)
