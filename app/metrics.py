"""Prometheus metrics of one app: each app has its own CollectorRegistry, so tests (and several
apps in one process) never share or collide on counters.

Request latency is labelled by route template (`/gallery/individuals/{individual_id}`), never by
raw path, so an attacker cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "MetricsMiddleware"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "whaleid_request_seconds",
            "Request latency by route",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "whaleid_errors",
            "Error answers by code and status",
            ["code", "status"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "whaleid_batch_size",
            "Photos per embedding batch",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "whaleid_batch_seconds",
            "Time to embed one batch (detect, crop, every ensemble member)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.gallery_images = Gauge(
            "whaleid_gallery_images", "Images in the search index", registry=self.registry
        )

    def track_gallery(self, size: Callable[[], float]) -> None:
        """Read the gallery size at each scrape rather than after each change."""
        self.gallery_images.set_function(size)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Times every HTTP request and labels it with the route that matched (or `unmatched`)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(
                method=scope["method"], route=template, status=str(status)
            ).observe(time.perf_counter() - start)
