"""A store that cannot be written answers 503 and the service goes on identifying from its index.

The SQLite file is made immutable under a running server with `chattr +i` (tests run as root,
and root ignores file modes; the immutable flag holds for root too, and ext4 enforces it on
files already open, which a running server's are). Skips where chattr cannot set the flag.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fixtures.bundle import make_toy_bundle
from fixtures.gallery import unit_vectors
from fixtures.service import start_server
from PIL import Image

from gallery.errors import StoreUnavailableError
from gallery.gallery import Gallery, NewImage


def _photo(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _chattr(flag: str, paths: list[Path]) -> bool:
    if shutil.which("chattr") is None:
        return False
    done = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, check=False)
    return done.returncode == 0


def test_read_only_store_answers_503_and_identify_goes_on(tmp_path: Path) -> None:
    server = start_server(make_toy_bundle(tmp_path / "bundle"), tmp_path / "service")
    files = [server.workdir / "gallery.db", server.workdir / "gallery.db-wal"]
    frozen = False
    try:
        with server.client(server.write_key) as client:
            first = client.post(
                "/gallery",
                files={"image": ("a.png", _photo(0), "image/png")},
                data={"individual_id": "fin-1"},
            )
            assert first.status_code == 201, first.text
            frozen = _chattr("+i", files)
            if not frozen:
                pytest.skip("chattr +i is not available on this file system")
            refused = client.post(
                "/gallery",
                files={"image": ("b.png", _photo(1), "image/png")},
                data={"individual_id": "fin-2"},
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "store_unavailable"
            answer = client.post("/identify", files={"image": ("a.png", _photo(0), "image/png")})
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["individual_id"] == "fin-1"
            _chattr("-i", files)
            frozen = False
            again = client.post(
                "/gallery",
                files={"image": ("b.png", _photo(1), "image/png")},
                data={"individual_id": "fin-2"},
            )
            assert again.status_code == 201, again.text
    finally:
        if frozen:
            _chattr("-i", files)
        server.stop()


def test_photos_that_cannot_be_kept_refuse_the_registration(tmp_path: Path) -> None:
    """The photo folder cannot be written (here: its parent is a file): 503, nothing stored."""
    (tmp_path / "blocker").write_bytes(b"a file where a folder should be")
    url = f"sqlite:///{tmp_path / 'g.db'}"
    with Gallery.open(url, fingerprint="f" * 64, dim=8, photos_dir=tmp_path / "blocker" / "p") as g:
        image = NewImage(b"photo", "a.jpg", unit_vectors(1, 8)[0])
        with pytest.raises(StoreUnavailableError, match="cannot keep the photos"):
            g.register(individual_id="fin-1", species=None, images=[image])
        assert g.size == 0 and g.store.count_images() == 0
