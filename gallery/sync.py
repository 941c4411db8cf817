"""Following other processes' writes, so replicas behind a load balancer agree.

A daemon thread calls `Gallery.refresh()` whenever the store may have moved: on PostgreSQL it
LISTENs on the `whaleid` channel (every write NOTIFYs with its schema's name) and wakes at
once; it also polls every `interval` seconds, which covers SQLite, missed notifications and
a dropped listening connection. Errors are logged and retried: a follower never dies quietly
while the service keeps answering from a stale index.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gallery.gallery import Gallery

__all__ = ["Follower"]

log = logging.getLogger(__name__)


class Follower(threading.Thread):
    def __init__(self, gallery: Gallery, *, interval: float = 0.5) -> None:
        super().__init__(name="gallery-follower", daemon=True)
        self.gallery = gallery
        self.interval = interval
        self._stop_event = threading.Event()
        self._listener: Any = None
        self.last_error: BaseException | None = None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._wait()
                if self._stop_event.is_set():
                    break
                self.gallery.refresh()
                self.last_error = None
            except Exception as exc:  # keep following: the next round may succeed
                if type(exc) is not type(self.last_error):
                    log.exception("gallery follower: refresh failed (retrying)")
                self.last_error = exc
                self._close_listener()
                self._stop_event.wait(self.interval)
        self._close_listener()

    def _wait(self) -> None:
        """Until a notification for our schema arrives or `interval` passes."""
        store = self.gallery.store
        if store.dialect != "postgres":
            self._stop_event.wait(self.interval)
            return
        from gallery.store.postgres import CHANNEL, PostgresStore, connect

        assert isinstance(store, PostgresStore)
        if self._listener is None:
            self._listener = connect(store.url)
            self._listener.execute(f"LISTEN {CHANNEL}")
        deadline = time.monotonic() + self.interval
        for notify in self._listener.notifies(timeout=self.interval):
            if notify.payload == store.schema or time.monotonic() >= deadline:
                break

    def _close_listener(self) -> None:
        if self._listener is not None:
            try:
                self._listener.close()
            finally:
                self._listener = None
