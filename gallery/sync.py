"""Following other processes' writes, so replicas behind a load balancer agree.

A daemon thread calls `refresh` whenever the store may have moved: it waits with the store's
own `wait_for_change` (PostgreSQL wakes at once on a NOTIFY of its schema; SQLite, and a
missed notification, come round every `interval` seconds). Errors are logged and retried: a
follower never dies quietly while the service keeps answering from a stale index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["ChangeSource", "Follower"]

log = logging.getLogger(__name__)


class ChangeSource(Protocol):
    def wait_for_change(self, *, timeout: float) -> None: ...


class Follower(threading.Thread):
    def __init__(
        self, refresh: Callable[[], object], source: ChangeSource, *, interval: float = 0.5
    ) -> None:
        super().__init__(name="gallery-follower", daemon=True)
        self.refresh = refresh
        self.source = source
        self.interval = interval
        self._stop_event = threading.Event()
        self.last_error: BaseException | None = None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.source.wait_for_change(timeout=self.interval)
                if self._stop_event.is_set():
                    break
                self.refresh()
                self.last_error = None
            except Exception as exc:  # keep following: the next round may succeed
                if type(exc) is not type(self.last_error):
                    log.exception("gallery follower: refresh failed (retrying)")
                self.last_error = exc
                self._stop_event.wait(self.interval)
