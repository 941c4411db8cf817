"""Local features in the gallery store, against SQLite and the real PostgreSQL: stored with the
embedding, read back padded in the order asked (fp16 descriptors), gone with their image, kept
through rename and merge, switched over by a re-embed, which fills them resumably."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from fixtures.gallery import photo_bytes, unit_vectors

from gallery.errors import GalleryInputError
from gallery.gallery import Gallery, NewImage
from gallery.keypoints import StoredFeatures
from gallery.records import ImageRecord
from gallery.reembed import Reembedded, reembed
from gallery.store import migrations, open_store

OLD, NEW = "1" * 64, "2" * 64
DIM = 16  # embedding
D = 32  # descriptor
SIDE = 256.0


def features(seed: int, count: int, dim: int = D) -> StoredFeatures:
    """Random keypoints in a SIDE-px letterbox, unit descriptors, a frame onto the photo."""
    rng = np.random.default_rng(seed)
    descriptors = rng.standard_normal((count, dim)).astype(np.float32)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    return StoredFeatures(
        keypoints=rng.uniform(0, SIDE, (count, 2)).astype(np.float32),
        scores=rng.uniform(0.1, 1.0, count).astype(np.float32),
        descriptors=descriptors.astype(np.float16),
        frame=np.array([rng.uniform(0, 50), rng.uniform(0, 50), rng.uniform(0.5, 3)], np.float32),
    )


def photo(i: int, local: StoredFeatures | None, vectors: np.ndarray) -> NewImage:
    return NewImage(photo_bytes(f"p{i}"), f"p{i}.jpg", vectors[i], local=local)


def test_features_round_trip_in_the_order_asked(store_url: str, tmp_path: Path) -> None:
    vectors = unit_vectors(6, DIM)
    stored = {i: features(i, count) for i, count in enumerate([40, 7, 0, 25])}
    with Gallery.open(store_url, fingerprint=OLD, dim=DIM, photos_dir=tmp_path / "p") as g:
        ids = [
            r.image_id
            for r in g.register(
                individual_id="A",
                species=None,
                images=[photo(i, stored[i], vectors) for i in range(4)],
            )
        ]
        # One registered without features (a bundle without a matcher, an older service).
        (bare,) = g.register(individual_id="B", species=None, images=[photo(4, None, vectors)])
        deleted = max(ids) + 100  # never an image id
        order = [ids[3], bare.image_id, ids[0], deleted, ids[1], ids[2], ids[0]]
        local, found = g.local_features(order, max_keypoints=30, dim=D)
        empty, none_found = g.local_features([], max_keypoints=8, dim=D)
        assert empty.keypoints.shape == (0, 8, 2) and none_found.shape == (0,)

    assert found.tolist() == [True, False, True, False, True, True, True]
    assert local.keypoints.shape == (7, 30, 2) and local.descriptors.shape == (7, 30, D)
    assert local.descriptors.dtype == np.float32 and local.mask.dtype == bool
    source = [stored[3], None, stored[0], None, stored[1], stored[2], stored[0]]
    for row, s in enumerate(source):
        if s is None:
            assert not local.mask[row].any() and not local.frames[row].any()
            continue
        # K = 30 keeps the best-scored keypoints of a crop stored with more.
        keep = np.argsort(-s.scores, kind="stable")[:30]
        m = len(keep)
        assert local.mask[row].sum() == m and local.mask[row, :m].all()
        np.testing.assert_array_equal(local.keypoints[row, :m], s.keypoints[keep])
        np.testing.assert_array_equal(local.scores[row, :m], s.scores[keep])
        np.testing.assert_array_equal(local.frames[row], s.frame)
        # Descriptors are kept in float16: unit vectors to fp16 precision.
        np.testing.assert_allclose(
            local.descriptors[row, :m], s.descriptors[keep].astype(np.float32), atol=1e-3
        )
        np.testing.assert_allclose(np.linalg.norm(local.descriptors[row, :m], axis=1), 1, 2e-3)


def test_features_stay_through_rename_and_merge_and_go_with_their_image(
    store_url: str, tmp_path: Path
) -> None:
    vectors = unit_vectors(5, DIM)
    with Gallery.open(store_url, fingerprint=OLD, dim=DIM, photos_dir=tmp_path / "p") as g:
        a = g.register(
            individual_id="A",
            species=None,
            images=[photo(i, features(i, 10), vectors) for i in range(2)],
        )
        b = g.register(
            individual_id="B",
            species=None,
            images=[photo(i, features(i, 10), vectors) for i in range(2, 5)],
        )
        ids = [r.image_id for r in a + b]
        g.rename("A", "C")
        g.merge("B", "C")
        _, found = g.local_features(ids, max_keypoints=10, dim=D)
        assert found.all()
        assert g.store.count_features(fingerprint=OLD) == 5

        g.delete_image(ids[0])
        _, found = g.local_features(ids, max_keypoints=10, dim=D)
        assert found.tolist() == [False, True, True, True, True]
        g.delete_individual("C")
        assert g.store.count_features(fingerprint=OLD) == 0

        # The schema's own cascade fires too (SQLite's foreign keys are on): a row deleted by
        # hand takes its features with it.
        (c,) = g.register(
            individual_id="D", species=None, images=[photo(0, features(0, 3), vectors)]
        )
        with g.store._transaction(write=True) as cur:
            g.store._exec(cur, "DELETE FROM images WHERE id = ?", (c.image_id,))
        assert g.store.count_features(fingerprint=OLD) == 0


def test_features_of_mismatched_shapes_are_refused(store_url: str, tmp_path: Path) -> None:
    vectors = unit_vectors(2, DIM)
    good = features(0, 5)
    bad = [
        StoredFeatures(good.keypoints[:4], good.scores, good.descriptors, good.frame),
        StoredFeatures(good.keypoints, good.scores, good.descriptors[:, 0], good.frame),
        StoredFeatures(good.keypoints, good.scores, good.descriptors, good.frame[:2]),
        StoredFeatures(good.keypoints * np.inf, good.scores, good.descriptors, good.frame),
    ]
    with Gallery.open(store_url, fingerprint=OLD, dim=DIM, photos_dir=tmp_path / "p") as g:
        for local in bad:
            with pytest.raises(GalleryInputError, match=r"p1\.jpg: local features"):
                g.register(
                    individual_id="A",
                    species=None,
                    images=[photo(0, good, vectors), photo(1, local, vectors)],
                )
        assert g.store.count_images() == 0 and g.store.count_features(fingerprint=OLD) == 0
        # A descriptor size other than the stored one is a caller's mistake, named.
        (r,) = g.register(individual_id="A", species=None, images=[photo(0, good, vectors)])
        with pytest.raises(ValueError, match="64-d descriptors"):
            g.local_features([r.image_id], max_keypoints=8, dim=64)


def matcher_model(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> Reembedded:
    """A stand-in for a bundle with a matcher: a vector (8-d) and keypoints derived from the
    photo's bytes."""
    seeds = [sum(c) for c in contents]
    return Reembedded(
        np.stack([unit_vectors(1, 8, seed=s)[0] for s in seeds]),
        [features(s, 12) for s in seeds],
    )


def test_reembed_fills_features_resumably_and_switches_them(store_url: str, tmp_path: Path) -> None:
    vectors = unit_vectors(10, DIM)
    with Gallery.open(store_url, fingerprint=OLD, dim=DIM, photos_dir=tmp_path / "p") as g:
        # The old bundle had a matcher too, for half of them: those rows go at the switch.
        for i in range(10):
            local = features(100 + i, 4) if i % 2 else None
            g.register(
                individual_id=f"ind-{i % 3}", species=None, images=[photo(i, local, vectors)]
            )
        ids = sorted(im.id for n in range(3) for im in g.individual(f"ind-{n}").images)
    calls = 0

    def interrupted(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> Reembedded:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the user stops it half-way
        return matcher_model(records, contents)

    with pytest.raises(KeyboardInterrupt):
        reembed(
            store_url,
            fingerprint=NEW,
            dim=8,
            embed=interrupted,
            local=True,
            batch_size=3,
            progress=False,
        )
    # Half-way: the two finished batches' features are stored beside the old model's.
    with Gallery.open(store_url, fingerprint=OLD, dim=DIM) as g:
        assert g.size == 10
        assert g.store.count_features(fingerprint=NEW) == 6
        assert g.store.count_features(fingerprint=OLD) == 5
        assert g.store.count_missing(fingerprint=NEW, features=True) == 4

    report = reembed(
        store_url, fingerprint=NEW, dim=8, embed=matcher_model, local=True, batch_size=3
    )
    assert (report.embedded, report.features, report.total, report.switched) == (4, 4, 10, True)
    with Gallery.open(store_url, fingerprint=NEW, dim=8, photos_dir=tmp_path / "p") as g:
        assert g.store.count_features(fingerprint=OLD) == 0
        local, found = g.local_features(ids, max_keypoints=12, dim=D)
        assert found.all()
        expected = matcher_model([], [photo_bytes(f"p{i}") for i in range(10)]).local
        assert expected is not None
        for row, s in enumerate(expected):
            assert set(map(tuple, local.keypoints[row])) == set(map(tuple, s.keypoints))

        # A photo registered under the new model without its features (a service that stores
        # none): the next reembed fills only that, without switching (no index rebuilds).
        (late,) = g.register(
            individual_id="ind-0",
            species=None,
            images=[NewImage(photo_bytes("late"), "late.jpg", unit_vectors(1, 8, seed=3)[0])],
        )
        head = g.store.head()
    fill = reembed(store_url, fingerprint=NEW, dim=8, embed=matcher_model, local=True)
    assert (fill.embedded, fill.features, fill.total, fill.switched) == (1, 1, 11, False)
    with Gallery.open(store_url, fingerprint=NEW, dim=8) as g:
        assert g.store.head() == head  # no reset: the index keeps its embeddings
        _, found = g.local_features([late.image_id], max_keypoints=12, dim=D)
        assert found.all()
        # The late photo's embedding was registered, not recomputed.
        assert g.store.embeddings(fingerprint=NEW, image_ids=[late.image_id], dim=8).vectors[
            0
        ] == pytest.approx(unit_vectors(1, 8, seed=3)[0])
    again = reembed(store_url, fingerprint=NEW, dim=8, embed=matcher_model, local=True)
    assert (again.embedded, again.features, again.switched) == (0, 0, False)


def test_a_model_without_features_for_a_matcher_bundle_is_named(
    store_url: str, tmp_path: Path
) -> None:
    with Gallery.open(store_url, fingerprint=OLD, dim=DIM, photos_dir=tmp_path / "p") as g:
        g.register(individual_id="A", species=None, images=[photo(0, None, unit_vectors(1, DIM))])

    def vectors_only(records: Sequence[ImageRecord], contents: Sequence[bytes]) -> Reembedded:
        return Reembedded(matcher_model(records, contents).vectors)

    with pytest.raises(Exception, match="no local features"):
        reembed(store_url, fingerprint=NEW, dim=8, embed=vectors_only, local=True, progress=False)


def test_a_version_1_gallery_gains_the_table_and_keeps_its_images(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A gallery as a whaleid before local features wrote it: migration 1 only.
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", {1: migrations.MIGRATIONS[1]})
        store = open_store(store_url)
        assert store.info().schema_version == 1
        # Rows as that whaleid wrote them (today's add_images writes later columns too).
        vector = unit_vectors(1, DIM)[0].astype("<f4").tobytes()
        now = datetime.now(UTC)
        with store._transaction(write=True) as cur:
            store._exec(
                cur,
                "INSERT INTO individuals (id, species, created) VALUES (?, ?, ?)",
                ("A", None, store._ts(now)),
            )
            image_id = store._scalar(
                cur,
                "INSERT INTO images (individual_id, content_hash, filename, created) "
                "VALUES (?, ?, ?, ?) RETURNING id",
                ("A", "hash-1", "p1.jpg", store._ts(now)),
            )
            store._exec(
                cur,
                "INSERT INTO embeddings (image_id, fingerprint, vector) VALUES (?, ?, ?)",
                (image_id, OLD, vector),
            )
        store.close()
    store = open_store(store_url)
    try:
        assert store.info().schema_version == migrations.latest_version() >= 2
        assert store.count_images() == 1 and store.count_features(fingerprint=OLD) == 0
        assert store.count_missing(fingerprint=OLD, features=True) == 1
    finally:
        store.close()
