"""Errors a user can act on.

`gallery` is the root of the import graph (app and training both import it), so the one base
class lives here and every package raises subclasses of it. The CLI prints such an error as a
single line and exits non-zero (2 for a value the user gave that breaks a rule, as argparse
does for a bad argument; 1 otherwise); anything else is a bug and keeps its traceback.
"""

__all__ = [
    "ConflictError",
    "GalleryInputError",
    "NotFoundError",
    "StoreUnavailableError",
    "WhaleidError",
]


class WhaleidError(Exception):
    """Caused by input, configuration or environment; the message says what to do."""


class NotFoundError(WhaleidError):
    """A named individual, image, run or file does not exist."""


class ConflictError(WhaleidError):
    """The request contradicts what is already stored (e.g. one photo for two individuals)."""


class GalleryInputError(WhaleidError):
    """A value breaks a rule of the gallery's records (an id's pattern, length or the reserved
    `new_individual`, a label, metadata, a vector's shape or norm): HTTP 422, CLI exit 2."""


class StoreUnavailableError(WhaleidError):
    """The store cannot take a write or answer now (read-only or full disk, database down):
    HTTP 503. The index already in memory goes on answering searches."""
