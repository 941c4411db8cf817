"""Viewpoints in the gallery: stored with each image (migration 3), searched only among
compatible photos (same viewpoint, or unknown on either side), carried by snapshots; and a
gallery without viewpoints answering exactly as before. Vectors are made by hand: no model."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.gallery import photo_bytes, unit_vectors

from gallery.errors import GalleryInputError
from gallery.gallery import Gallery
from gallery.images import ImportItem
from gallery.records import NewImage
from gallery.rules import check_viewpoint
from gallery.snapshot import MAGIC
from gallery.store import open_store
from gallery.store.migrations import latest_version

DIM = 16
VIEWPOINTS = ["left", "right", None]


def fill(gallery: Gallery, n: int, seed: int = 0) -> dict[int, str | None]:
    """n photos of n // 4 individuals, viewpoints cycling left, right, unknown; returns each
    image id's viewpoint."""
    vectors = unit_vectors(n, DIM, seed=seed)
    items = [
        ImportItem(
            f"ind-{seed}-{i % (n // 4)}",
            "orca",
            NewImage(
                photo_bytes(f"{seed}-{i}"), f"p{i}.jpg", vectors[i], viewpoint=VIEWPOINTS[i % 3]
            ),
        )
        for i in range(n)
    ]
    gallery.import_images(items)
    out: dict[int, str | None] = {}
    for individual in {item.individual_id for item in items}:
        for image in gallery.individual(individual).images:
            out[image.id] = image.viewpoint
    return out


def compatible(query: str | None, photo: str | None) -> bool:
    return query is None or photo is None or query == photo


def test_the_viewpoint_rule() -> None:
    assert check_viewpoint(" Left ") == "left"
    assert check_viewpoint("") is None and check_viewpoint(None) is None
    assert check_viewpoint("dorsal_fin-2") == "dorsal_fin-2"
    for bad in ("left side", "-left", "l" * 33, "gauche/droite", 3):
        with pytest.raises(GalleryInputError):
            check_viewpoint(bad)


def test_a_viewpoint_search_never_returns_an_incompatible_photo(
    store_url: str, tmp_path: Path
) -> None:
    snapshot = tmp_path / "index.snap"
    with Gallery.open(store_url, fingerprint="fp", dim=DIM, snapshot=snapshot) as gallery:
        viewpoint_of = fill(gallery, 120)
        queries = unit_vectors(40, DIM, seed=7)
        # Without a viewpoint every photo competes: incompatible evidence would show up.
        unfiltered = gallery.search(queries, top_k=5, threshold=-1.0)
        assert any(
            not compatible("left", viewpoint_of[c.evidence_image_id])
            for row in unfiltered
            for c in row
            if c.evidence_image_id is not None
        )
        for viewpoint in ("left", "right", "fluke"):
            rows = gallery.search(queries, top_k=5, threshold=-1.0, viewpoint=viewpoint)
            evidence = [c.evidence_image_id for row in rows for c in row if c.evidence_image_id]
            assert evidence
            assert all(compatible(viewpoint, viewpoint_of[i]) for i in evidence)
            expected = sum(compatible(viewpoint, v) for v in viewpoint_of.values())
            assert gallery.count_compatible(viewpoint) == expected
        # "fluke" is known to no photo: only the unknown-viewpoint photos are compared.
        assert gallery.count_compatible("fluke") == 40
        assert gallery.count_compatible(None) == gallery.size == 120
        # One viewpoint per query, in one search.
        mixed = gallery.search(
            queries[:3], top_k=3, threshold=-1.0, viewpoint=["left", None, "right"]
        )
        for row, viewpoint in zip(mixed, ["left", None, "right"], strict=True):
            assert all(
                compatible(viewpoint, viewpoint_of[c.evidence_image_id])
                for c in row
                if c.evidence_image_id is not None
            )
        with pytest.raises(GalleryInputError):
            gallery.search(queries[:2], threshold=0.0, viewpoint=["left"])
        # Photos added after the build (the change log replay) carry their viewpoint too.
        viewpoint_of.update(fill(gallery, 40, seed=1))
        before = gallery.search(queries, top_k=5, threshold=-1.0, viewpoint="right")
        assert all(
            compatible("right", viewpoint_of[c.evidence_image_id])
            for row in before
            for c in row
            if c.evidence_image_id is not None
        )
    # Reopened from the snapshot: the same answers, viewpoints and all.
    with Gallery.open(store_url, fingerprint="fp", dim=DIM, snapshot=snapshot) as gallery:
        assert gallery.loaded_from == "snapshot"
        after = gallery.search(queries, top_k=5, threshold=-1.0, viewpoint="right")
        assert [[c.evidence_image_id for c in r] for r in after] == [
            [c.evidence_image_id for c in r] for r in before
        ]


def test_encounter_photos_each_search_their_own_viewpoint(tmp_path: Path) -> None:
    with Gallery.open(f"sqlite:///{tmp_path / 'g.db'}", fingerprint="fp", dim=DIM) as gallery:
        viewpoint_of = fill(gallery, 60)
        queries = unit_vectors(3, DIM, seed=9)
        viewpoints = ["left", "right", "left"]
        for candidate in gallery.search_encounter(
            queries, threshold=-1.0, top_k=10, viewpoint=viewpoints
        ):
            if candidate.evidence_image_id is None:
                continue
            photo = candidate.evidence_photo
            assert photo is not None
            assert compatible(viewpoints[photo], viewpoint_of[candidate.evidence_image_id])


def test_a_gallery_without_viewpoints_answers_as_before(tmp_path: Path) -> None:
    vectors = unit_vectors(80, DIM, seed=3)
    queries = unit_vectors(20, DIM, seed=4)
    with Gallery.open(f"sqlite:///{tmp_path / 'g.db'}", fingerprint="fp", dim=DIM) as gallery:
        gallery.import_images(
            ImportItem(f"ind-{i % 20}", None, NewImage(photo_bytes(str(i)), f"{i}.jpg", v))
            for i, v in enumerate(vectors)
        )
        plain = gallery.search(queries, top_k=5, threshold=0.2)
        # Every photo is of unknown viewpoint, so every query viewpoint compares them all.
        for viewpoint in ("left", "fluke"):
            assert gallery.count_compatible(viewpoint) == gallery.size
            assert gallery.search(queries, top_k=5, threshold=0.2, viewpoint=viewpoint) == plain
        # And the answer is the brute-force one: best cosine per individual, top 5.
        sims = queries @ vectors.T
        for q, row in enumerate(plain):
            best = {f"ind-{i}": sims[q, i::20].max() for i in range(20)}
            known = [c for c in row if c.individual_id != "new_individual"]
            expected = sorted(best, key=lambda k: -best[k])[: len(known)]
            assert [c.individual_id for c in known] == expected


def test_a_snapshot_of_the_old_format_is_rebuilt(tmp_path: Path) -> None:
    url, snapshot = f"sqlite:///{tmp_path / 'g.db'}", tmp_path / "index.snap"
    with Gallery.open(url, fingerprint="fp", dim=DIM, snapshot=snapshot) as gallery:
        fill(gallery, 40)
    data = snapshot.read_bytes()
    assert data.startswith(MAGIC)
    snapshot.write_bytes(b"WHALEID-GALLERY-SNAPSHOT 1\n" + data[len(MAGIC) :])
    with Gallery.open(url, fingerprint="fp", dim=DIM, snapshot=snapshot) as gallery:
        assert gallery.loaded_from == "store"
        assert gallery.count_compatible("left") < gallery.size == 40


def test_migration_3_adds_the_column_to_a_gallery_that_has_images(store_url: str) -> None:
    """A store made before viewpoints (schema 1, images in it) gains the column, its images of
    unknown viewpoint; new images keep theirs."""
    with Gallery.open(store_url, fingerprint="fp", dim=DIM) as gallery:
        fill(gallery, 8)
    store = open_store(store_url)
    with store._transaction(write=True) as cur:
        store._exec(cur, "UPDATE images SET viewpoint = NULL")
        store._exec(cur, "ALTER TABLE images DROP COLUMN viewpoint")
        store._exec(cur, "DELETE FROM schema_version WHERE version = 3")
    store.close()
    store = open_store(store_url)
    try:
        assert store.info().schema_version == latest_version() == 3
        first = store.get_image(image_id=1)
        assert first.viewpoint is None and first.filename == "p0.jpg"
    finally:
        store.close()
    with Gallery.open(store_url, fingerprint="fp", dim=DIM) as gallery:
        assert gallery.count_compatible("left") == gallery.size == 8
        (image_id,) = [
            r.image_id
            for r in gallery.register(
                individual_id="late",
                species=None,
                images=[
                    NewImage(
                        photo_bytes("late"), "late.jpg", unit_vectors(1, DIM)[0], viewpoint="Right"
                    )
                ],
            )
        ]
        assert gallery.image(image_id).viewpoint == "right"
        assert gallery.count_compatible("left") == 8
