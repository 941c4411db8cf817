"""Uploaded photos, from the multipart form to bytes with a safe name.

The limits that protect the service sit in three places, each before the expensive step:
- the request body: at most `max_upload_bytes` (BodyLimit, below). A declared Content-Length
  over the limit is refused before a byte is read; a chunked body is counted while it streams
  in and refused as soon as it passes the limit. Either way a 50 MB upload is never buffered;
- the photo: at most `max_pixels`, read from the header before any pixel is decoded
  (app/decode.py), so a few-KB decompression bomb costs nothing;
- the type: JPEG, PNG, WebP and TIFF, recognised from the bytes, not from what the client says.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from fastapi import Request, UploadFile
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response

__all__ = ["BodyLimit", "BodyTooLargeError", "Upload", "read_upload"]

_MAX_NAME = 200


@dataclass(frozen=True)
class Upload:
    """An uploaded photo: its bytes and the (sanitised) name the client gave it."""

    content: bytes
    filename: str


def safe_filename(name: str | None, default: str = "image") -> str:
    """The last path component only, printable, at most 200 characters."""
    if not name:
        return default
    base = PureWindowsPath(PurePosixPath(name).name).name
    cleaned = "".join(ch for ch in base if ch.isprintable()).strip()
    return cleaned[:_MAX_NAME] or default


async def read_upload(file: UploadFile, default: str = "image") -> Upload:
    """The bytes of an uploaded part (already spooled within the body limit)."""
    content = await file.read()
    return Upload(content=content, filename=safe_filename(file.filename, default))


class BodyTooLargeError(HTTPException):
    """Raised from `receive` when a streamed body passes the limit. An HTTPException, because
    FastAPI lets those through its form parsing (anything else becomes a generic 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit:,} bytes")


class BodyLimit:
    """At most `max_bytes` of request body, checked before and while it is read.

    A declared Content-Length over the limit is answered 413 at once, before the app sees the
    request; a body without one (chunked) is counted as it streams in, and the read that passes
    the limit raises BodyTooLargeError, which the error handlers answer with 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = error_response(
                Request(scope),
                413,
                "too_large",
                f"the request body is {int(declared):,} bytes; the limit is "
                f"{self.max_bytes:,} bytes",
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, counted, send)
