"""Crash safety over HTTP: 8 clients register individuals concurrently, the server is SIGKILLed
mid-way and restarted; every registration it answered 201 is there with all its photos (records
and photo files), no registration is there in part, and the index holds exactly what the store
holds. tests/test_gallery_crash.py kills a bulk import in process; this kills the service."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fixtures.service import Server, catalogue_photos, start_server

from bench.soak import unique_jpeg

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

CLIENTS = 8
PHOTOS = 2  # per registration
KILL_AFTER = 24  # acknowledged registrations before the kill


@dataclass
class Registrar:
    """A client registering new individuals until the server goes away."""

    number: int
    server: Server
    photos: list[bytes]
    acknowledged: dict[str, list[int]] = field(default_factory=dict)  # id → its image ids
    statuses: list[int] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        with self.server.client(self.server.write_key, timeout=60) as client:
            count = 0
            while not stop.is_set():
                count += 1
                individual_id = f"crash-{self.number}-{count}"
                files = [
                    (
                        "image",
                        (
                            f"{individual_id}-{i}.jpg",
                            unique_jpeg(
                                self.photos[(count + i) % len(self.photos)], f"{individual_id}/{i}"
                            ),
                            "image/jpeg",
                        ),
                    )
                    for i in range(PHOTOS)
                ]
                try:
                    response = client.post(
                        "/gallery", files=files, data={"individual_id": individual_id}
                    )
                except httpx.TransportError:
                    return  # killed: this registration's fate is unknown, and that is allowed
                self.statuses.append(response.status_code)
                if response.status_code == 201:
                    images = response.json()["images"]
                    self.acknowledged[individual_id] = [image["image_id"] for image in images]


def index_size(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    match = re.search(r"^whaleid_gallery_images (\S+)$", text, re.M)
    assert match, "no whaleid_gallery_images in /metrics"
    return int(float(match.group(1)))


def all_individuals(client: httpx.Client) -> dict[str, int]:
    """id → image_count, every page."""
    found: dict[str, int] = {}
    while True:
        page = client.get("/gallery/individuals", params={"limit": 1000, "offset": len(found)})
        assert page.status_code == 200, page.text
        items = page.json()["items"]
        found.update({item["id"]: item["image_count"] for item in items})
        if len(items) < 1000:
            return found


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_under_concurrent_registrations_loses_nothing_acknowledged(
    store: str,
    service_bundle: Path,
    catalogue: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    photos = [
        p.read_bytes() for paths in list(catalogue_photos(catalogue).values())[:8] for p in paths
    ]
    if store == "postgres":
        # A fresh schema; photo files in a folder of their own (PostgreSQL keeps none itself).
        url = str(request.getfixturevalue("pg_url"))
        server = start_server(
            service_bundle, tmp_path / "server", url, WHALEID_PHOTOS_DIR=str(tmp_path / "photos")
        )
    else:
        server = start_server(service_bundle, tmp_path / "server")
    try:
        stop = threading.Event()
        registrars = [Registrar(n, server, photos) for n in range(CLIENTS)]
        threads = [threading.Thread(target=r.run, args=(stop,)) for r in registrars]
        for thread in threads:
            thread.start()
        try:
            while sum(len(r.acknowledged) for r in registrars) < KILL_AFTER:
                assert all(t.is_alive() for t in threads), "a client stopped before the kill"
                stop.wait(0.05)
            server.kill()  # SIGKILL, while registrations are in flight
        finally:
            stop.set()
            for thread in threads:
                thread.join(120)
        statuses = [s for r in registrars for s in r.statuses]
        assert set(statuses) == {201}, statuses  # before the kill, every one was accepted
        acknowledged = {k: v for r in registrars for k, v in r.acknowledged.items()}
        assert len(acknowledged) >= KILL_AFTER

        server.start()
        with server.client(server.write_key) as client:
            stored = all_individuals(client)
            for individual_id, image_ids in acknowledged.items():
                detail = client.get(f"/gallery/individuals/{individual_id}")
                assert detail.status_code == 200, (individual_id, detail.text)
                assert sorted(i["id"] for i in detail.json()["images"]) == sorted(image_ids)
                for image_id in image_ids:  # the photo file survived too
                    thumb = client.get(f"/gallery/images/{image_id}/thumbnail")
                    assert thumb.status_code == 200, (image_id, thumb.text)
            # In flight at the kill: there wholly or not at all.
            assert all(count == PHOTOS for count in stored.values()), stored
            assert index_size(client) == sum(stored.values())
        print(
            f"\n{len(acknowledged)} acknowledged, {len(stored)} stored after the restart "
            f"({len(stored) - len(acknowledged)} answered by nobody but committed)"
        )
    finally:
        server.stop()
