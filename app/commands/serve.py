"""`whaleid serve`: run the identification service with uvicorn.

Options override the WHALEID_* settings (environment and `.env`). Settings are checked here,
before uvicorn starts, so a wrong one is a one-line error; each worker process then builds its
own app from the same environment (`app.main:create_app`, a factory), loading its own models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import uvicorn

from app.manifest import Manifest
from app.sessions import resolve_providers
from app.settings import ENV_PREFIX, load_settings

__all__ = ["build_parser", "run"]


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve POST /identify, POST /gallery and the gallery resources over HTTP. "
        "Every option can also be set as WHALEID_<OPTION> in the environment or in .env.",
    )
    parser.add_argument("--bundle", type=Path, help="model bundle folder (WHALEID_BUNDLE)")
    parser.add_argument(
        "--gallery", help="SQLite file or postgresql:// URL (WHALEID_GALLERY; default gallery.db)"
    )
    parser.add_argument("--keys-file", type=Path, help="hashed API keys (WHALEID_KEYS_FILE)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8000)")
    parser.add_argument("--workers", type=int, help="worker processes (default 1)")
    parser.add_argument(
        "--providers", help="onnxruntime providers, comma separated: cuda, tensorrt, cpu"
    )
    parser.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        default=None,
        help="logging level (WHALEID_LOG_LEVEL; default info)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    overrides = {
        "bundle": args.bundle,
        "gallery": args.gallery,
        "keys_file": args.keys_file,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "log_level": args.log_level,
        "providers": None if args.providers is None else args.providers.split(","),
    }
    # Options travel to the workers as environment variables: they build their own Settings.
    for name, value in overrides.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, list) else str(value)
        if isinstance(value, Path):
            text = str(value.resolve())
        os.environ[f"{ENV_PREFIX}{name.upper()}"] = text
    settings = load_settings()
    # The checks the workers would fail on, made here so they are one line, not a traceback.
    Manifest.read(settings.bundle, verify=True)
    resolve_providers(settings.providers)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        # Clients get a clean close, not a reset, while in-flight batches finish.
        timeout_graceful_shutdown=30,
        proxy_headers=True,
    )
    return 0
