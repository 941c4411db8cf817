"""Re-embedding from the kept photos: resumable, switches the model only when complete."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from fixtures.gallery import photo_bytes, unit_vectors

from gallery.gallery import FingerprintMismatchError, Gallery, NewImage
from gallery.records import ImageRecord
from gallery.reembed import Reembedded, reembed

OLD, NEW = "1" * 64, "2" * 64


def new_model(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> Reembedded:
    """A stand-in model: a vector derived from the photo's bytes (8-d)."""
    return Reembedded(np.stack([unit_vectors(1, 8, seed=sum(c))[0] for c in contents]))


def test_reembed_resumes_and_switches(store_url: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    with Gallery.open(store_url, fingerprint=OLD, dim=16, photos_dir=photos) as g:
        vectors = unit_vectors(10, 16)
        for i in range(10):
            g.register(
                individual_id=f"ind-{i % 3}",
                species=None,
                images=[NewImage(photo_bytes(f"p{i}"), f"p{i}.jpg", vectors[i])],
            )
    calls = 0

    def flaky(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> Reembedded:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the user stops it half-way
        return new_model(records, contents)

    with pytest.raises(KeyboardInterrupt):
        reembed(store_url, fingerprint=NEW, dim=8, embed=flaky, batch_size=3, progress=False)
    # Half-way, the gallery still belongs to the old model, intact.
    with Gallery.open(store_url, fingerprint=OLD, dim=16) as g:
        assert g.size == 10
    report = reembed(store_url, fingerprint=NEW, dim=8, embed=new_model, batch_size=3)
    assert (report.embedded, report.total, report.switched) == (4, 10, True)
    with pytest.raises(FingerprintMismatchError, match="reembed"):
        Gallery.open(store_url, fingerprint=OLD, dim=16)
    with Gallery.open(store_url, fingerprint=NEW, dim=8) as g:
        assert g.size == 10
        query = new_model([], [photo_bytes("p4")]).vectors
        (row,) = g.search(query, threshold=0.5)
        assert row[0].individual_id == "ind-1" and row[0].score == pytest.approx(1.0)
    again = reembed(store_url, fingerprint=NEW, dim=8, embed=new_model, progress=False)
    assert not again.switched and again.embedded == 0


def test_an_open_gallery_follows_a_reembed_or_refuses(store_url: str, tmp_path: Path) -> None:
    g = Gallery.open(store_url, fingerprint=OLD, dim=16, photos_dir=tmp_path / "photos")
    g.register(
        individual_id="A", species=None, images=[NewImage(b"x", "x.jpg", unit_vectors(1, 16)[0])]
    )
    reembed(store_url, fingerprint=NEW, dim=8, embed=new_model, progress=False)
    with pytest.raises(FingerprintMismatchError, match="whaleid gallery reembed"):
        g.refresh()
    g.close()


@pytest.mark.postgres
def test_a_gallery_without_photos_cannot_be_reembedded(pg_url: str) -> None:
    with Gallery.open(pg_url, fingerprint=OLD, dim=16) as g:  # PostgreSQL, no photos_dir
        g.register(
            individual_id="A",
            species=None,
            images=[NewImage(b"y", "y.jpg", unit_vectors(1, 16)[0])],
        )
    with pytest.raises(Exception, match="keeps no photos"):
        reembed(pg_url, fingerprint=NEW, dim=8, embed=new_model, progress=False)
