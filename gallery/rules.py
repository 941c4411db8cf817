"""The rules every value of an individual or image obeys, checked in one place.

The HTTP routes, every `whaleid gallery` command and bulk imports all reach the store through
gallery.individuals and gallery.images, which call these checks: a rule holds whichever path a
value comes in by. A broken rule is a GalleryInputError (HTTP 422, CLI exit 2).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gallery.errors import GalleryInputError
from gallery.rank import NEW_INDIVIDUAL

__all__ = [
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "LABEL_MAX_LENGTH",
    "METADATA_MAX_BYTES",
    "VIEWPOINT_MAX_LENGTH",
    "VIEWPOINT_PATTERN",
    "check_individual_id",
    "check_label",
    "check_metadata",
    "check_viewpoint",
]

ID_MAX_LENGTH = 128
# Ids travel in URLs and CSVs: letters, digits and a few separators, no spaces or slashes.
ID_PATTERN = rf"^[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{ID_MAX_LENGTH - 1}}}$"
LABEL_MAX_LENGTH = 200  # species, encounter
METADATA_MAX_BYTES = 10_000  # an individual's metadata, as JSON
# A viewpoint is compared for equality between a query and every gallery photo: a short
# lower-case token ("left", "right", "fluke"), so "Left " and "left" cannot silently differ.
VIEWPOINT_MAX_LENGTH = 32
VIEWPOINT_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{VIEWPOINT_MAX_LENGTH - 1}}}$"

_ID = re.compile(ID_PATTERN)
_VIEWPOINT = re.compile(VIEWPOINT_PATTERN)


def check_individual_id(value: object, *, field: str = "individual_id") -> str:
    """The id, or GalleryInputError naming what is wrong with it."""
    if not isinstance(value, str) or not value:
        raise GalleryInputError(f"{field} must be a non-empty string")
    if value == NEW_INDIVIDUAL:
        raise GalleryInputError(f"{field}: {NEW_INDIVIDUAL!r} is reserved for the answer")
    if len(value) > ID_MAX_LENGTH:
        raise GalleryInputError(f"{field} {value[:40]!r}… is over {ID_MAX_LENGTH} characters")
    if not _ID.match(value):
        raise GalleryInputError(
            f"{field} {value!r}: use letters, digits and _ . : - (starting with a letter or digit)"
        )
    return value


def check_label(value: str | None, *, field: str) -> str | None:
    """A species or encounter: None when empty, else at most LABEL_MAX_LENGTH
    printable characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise GalleryInputError(f"{field} must be a string")
    value = value.strip()
    if not value:
        return None
    if len(value) > LABEL_MAX_LENGTH:
        raise GalleryInputError(f"{field} {value[:40]!r}… is over {LABEL_MAX_LENGTH} characters")
    if not value.isprintable():
        raise GalleryInputError(f"{field} {value[:40]!r} holds control characters")
    return value


def check_viewpoint(value: object, *, field: str = "viewpoint") -> str | None:
    """A viewpoint label, lower-cased: None when empty (unknown), else letters, digits, _ and -
    (starting with a letter or digit), at most VIEWPOINT_MAX_LENGTH characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise GalleryInputError(f"{field} must be a string")
    label = value.strip().lower()
    if not label:
        return None
    if len(label) > VIEWPOINT_MAX_LENGTH:
        raise GalleryInputError(f"{field} {label[:40]!r} is over {VIEWPOINT_MAX_LENGTH} characters")
    if not _VIEWPOINT.match(label):
        raise GalleryInputError(
            f"{field} {label!r}: use letters, digits, _ and - (such as left, right, fluke)"
        )
    return label


def check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A JSON object of at most METADATA_MAX_BYTES; None when empty."""
    if not value:
        return None
    if not isinstance(value, dict):
        raise GalleryInputError("metadata must be a JSON object")
    try:
        size = len(json.dumps(value).encode())
    except (TypeError, ValueError) as exc:
        raise GalleryInputError(f"metadata is not JSON: {exc}") from exc
    if size > METADATA_MAX_BYTES:
        raise GalleryInputError(f"metadata is {size} bytes as JSON, over {METADATA_MAX_BYTES}")
    return value
