"""Errors a user can act on.

`gallery` is the root of the import graph (app and training both import it), so the one base
class lives here and every package raises subclasses of it. The CLI prints such an error as a
single line and exits non-zero; anything else is a bug and keeps its traceback.
"""

__all__ = ["ConflictError", "NotFoundError", "WhaleidError"]


class WhaleidError(Exception):
    """Caused by input, configuration or environment; the message says what to do."""


class NotFoundError(WhaleidError):
    """A named individual, image, run or file does not exist."""


class ConflictError(WhaleidError):
    """The request contradicts what is already stored (e.g. one photo for two individuals)."""
