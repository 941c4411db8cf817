"""ultralytics, kept off the network.

Training machines may have no internet, and ultralytics reaches for it in several places: an
online check and pip auto-install (both read from the environment when ultralytics is first
imported), the AMP check (downloads yolo11n.pt on CUDA), label plots, and `check_font`, which
every dataset check calls and which downloads Arial.ttf when matplotlib has no Arial. A failed
download shows up as a hang or a stack trace far from its cause, so every ultralytics call in
whaleid goes through `load()` and `offline()` here, and passes `OFFLINE_ARGS`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from types import ModuleType
from typing import Any
from unittest import mock

__all__ = ["OFFLINE_ARGS", "OFFLINE_ENV", "load", "offline"]

# Read by ultralytics at import: no DNS probe of 1.1.1.1/8.8.8.8, no `pip install` of whatever a
# code path finds missing (onnx, onnxslim and the rest are our declared dependencies instead).
OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}

# Train/val arguments that would otherwise download: plots want Arial.ttf, AMP wants yolo11n.pt.
OFFLINE_ARGS: dict[str, Any] = {"plots": False, "amp": False}


def load() -> ModuleType:
    """Import ultralytics with its network features off; returns the `ultralytics` module."""
    if "ultralytics" not in sys.modules:
        for key, value in OFFLINE_ENV.items():
            os.environ.setdefault(key, value)
    import ultralytics
    from ultralytics.utils import checks

    # Someone imported ultralytics before us without the environment: switch off what can
    # still be switched off (checks reads AUTOINSTALL as a module global at call time).
    checks.AUTOINSTALL = False
    return ultralytics


@contextmanager
def offline() -> Iterator[None]:
    """Within the block, ultralytics' font check finds nothing to download.

    `check_det_dataset` calls `check_font` unconditionally; it returns the font path only for
    plotting, and we never plot, so it is replaced by a stub that returns None.
    """
    load()
    targets = ["ultralytics.data.utils.check_font", "ultralytics.utils.checks.check_font"]
    with ExitStack() as stack:
        for target in targets:
            stack.enter_context(mock.patch(target, lambda *_args, **_kwargs: None))
        yield
