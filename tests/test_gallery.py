"""The Gallery facade against SQLite and the real PostgreSQL: register, search, rank, evidence,
idempotency, edits, model changes and snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.gallery import photo_bytes, unit_vectors

from gallery.errors import ConflictError, NotFoundError, WhaleidError
from gallery.gallery import (
    FingerprintMismatchError,
    Gallery,
    GalleryInputError,
    ImportItem,
    NewImage,
)
from gallery.rank import EMPTY, NEW, NEW_INDIVIDUAL, rank

DIM = 16
FP = "f" * 64


def image(tag: str, vector: np.ndarray, box: tuple[float, ...] | None = None) -> NewImage:
    return NewImage(content=photo_bytes(tag), filename=f"{tag}.jpg", vector=vector, box=box)  # type: ignore[arg-type]


def near(vector: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A vector close to `vector` (another photo of the same animal)."""
    v = vector + noise * unit_vectors(1, len(vector), seed)[0]
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def gallery(store_url: str, tmp_path: Path) -> Gallery:
    g = Gallery.open(store_url, fingerprint=FP, dim=DIM, photos_dir=tmp_path / "photos")
    yield g
    g.close()


def populate(g: Gallery, individuals: int = 6, photos: int = 3) -> dict[str, np.ndarray]:
    """Individuals with a few photos each around a centre; returns the centres."""
    centres = unit_vectors(individuals, DIM, seed=1)
    for i, centre in enumerate(centres):
        g.register(
            individual_id=f"ind-{i}",
            species="orca" if i % 2 == 0 else "beluga",
            images=[image(f"{i}-{j}", near(centre, 0.2, 100 * i + j)) for j in range(photos)],
        )
    return {f"ind-{i}": c for i, c in enumerate(centres)}


def test_registered_individual_is_found_with_evidence(gallery: Gallery) -> None:
    centres = populate(gallery)
    assert gallery.size == 18
    query = near(centres["ind-3"], 0.1, 999)
    (row,) = gallery.search(query[None], top_k=5, threshold=0.5)
    assert row[0].individual_id == "ind-3" and row[0].species == "beluga"
    detail = gallery.individual("ind-3")
    assert row[0].evidence_image_id in {im.id for im in detail.images}
    assert row[0].evidence_similarity == pytest.approx(row[0].score)
    # The evidence is the best-matching gallery image of that individual.
    best = max(
        detail.images,
        key=lambda im: float(
            near(centres["ind-3"], 0.2, 300 + int(im.filename.split("-")[1][0])) @ query
        ),
    )
    assert row[0].evidence_image_id == best.id
    assert len(row) == 5 and [c.individual_id for c in row].count(NEW_INDIVIDUAL) == 1


def test_search_equals_rank_over_brute_force(gallery: Gallery) -> None:
    """The gallery answers exactly what gallery.rank gives on exact kNN hits."""
    populate(gallery, individuals=8, photos=4)
    queries = unit_vectors(20, DIM, seed=7)
    thresholds = np.linspace(-0.2, 0.6, 20).astype(np.float32)
    got = gallery.search(queries, top_k=5, threshold=thresholds, hits=10)
    # Reference: every stored vector, numpy inner products, top 10.
    ids, vecs, owners = [], [], []
    for ind in gallery.individuals(limit=100):
        for im in gallery.individual(ind.id).images:
            ids.append(im.id)
            owners.append(ind.id)
    batch = gallery.store.embeddings(fingerprint=FP, image_ids=ids, dim=DIM)
    vecs = batch.vectors
    names = sorted(set(owners))
    codes = np.asarray([names.index(o) for o in batch.individual_ids])
    sims = queries @ vecs.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    ref = rank(np.take_along_axis(sims, top, 1), codes[top], thresholds, 5)
    for q, row in enumerate(got):
        kept = ref.codes[q] != EMPTY
        expected = [NEW_INDIVIDUAL if c == NEW else names[c] for c in ref.codes[q][kept]]
        assert [c.individual_id for c in row] == expected
        np.testing.assert_allclose(
            [c.score for c in row], ref.scores[q][kept], rtol=1e-5, atol=1e-6
        )


def test_new_individual_ranks_at_the_threshold(gallery: Gallery) -> None:
    centres = populate(gallery)
    stranger = unit_vectors(1, DIM, seed=4242)
    (row,) = gallery.search(stranger, threshold=0.99)
    assert row[0].individual_id == NEW_INDIVIDUAL and row[0].score == pytest.approx(0.99)
    assert row[0].evidence_image_id is None
    (row,) = gallery.search(centres["ind-0"][None], threshold=-1.0)
    assert row[0].individual_id == "ind-0"
    assert NEW_INDIVIDUAL not in [c.individual_id for c in row]  # everything ranks above it


def test_species_filter(gallery: Gallery) -> None:
    centres = populate(gallery)
    (row,) = gallery.search(centres["ind-1"][None], threshold=0.0, species="orca")
    assert "ind-1" not in [c.individual_id for c in row]
    assert {c.species for c in row if c.individual_id != NEW_INDIVIDUAL} == {"orca"}
    (row,) = gallery.search(centres["ind-1"][None], threshold=0.0, species="narwhal")
    assert [c.individual_id for c in row] == [NEW_INDIVIDUAL]


def test_empty_gallery_answers_new_individual(gallery: Gallery) -> None:
    rows = gallery.search(unit_vectors(2, DIM), threshold=0.3)
    assert [[c.individual_id for c in r] for r in rows] == [[NEW_INDIVIDUAL]] * 2


def test_register_is_idempotent_and_conflicts(gallery: Gallery, tmp_path: Path) -> None:
    v = unit_vectors(2, DIM, seed=5)
    first = gallery.register(individual_id="A", species=None, images=[image("x", v[0])])
    again = gallery.register(individual_id="A", species=None, images=[image("x", v[0])])
    assert first[0].created and not again[0].created
    assert again[0].image_id == first[0].image_id and gallery.size == 1
    with pytest.raises(ConflictError, match="individual A"):
        gallery.register(individual_id="B", species=None, images=[image("x", v[1])])
    assert gallery.size == 1
    # The original photo is kept, content addressed.
    assert gallery.photo(first[0].image_id) == photo_bytes("x")


def test_bad_input_is_refused(gallery: Gallery) -> None:
    v = unit_vectors(1, DIM)[0]
    with pytest.raises(GalleryInputError, match="reserved"):
        gallery.register(individual_id=NEW_INDIVIDUAL, species=None, images=[image("a", v)])
    with pytest.raises(GalleryInputError, match="values"):
        gallery.register(individual_id="A", species=None, images=[image("a", v[:4])])
    with pytest.raises(GalleryInputError, match="normalised"):
        gallery.register(individual_id="A", species=None, images=[image("a", 2 * v)])
    with pytest.raises(GalleryInputError, match="shape"):
        gallery.search(np.zeros((1, 3), np.float32), threshold=0.5)


def test_edits_reach_the_index(gallery: Gallery) -> None:
    centres = populate(gallery)
    gallery.rename("ind-2", "Moby")
    (row,) = gallery.search(centres["ind-2"][None], threshold=0.5)
    assert row[0].individual_id == "Moby" and row[0].species == "orca"
    gallery.merge("ind-4", "Moby")
    assert gallery.individual("Moby").image_count == 6
    (row,) = gallery.search(centres["ind-4"][None], threshold=0.5)
    assert row[0].individual_id == "Moby"
    with pytest.raises(NotFoundError):
        gallery.individual("ind-4")
    evidence = row[0].evidence_image_id
    assert evidence is not None
    gallery.delete_image(evidence)
    assert gallery.size == 17
    with pytest.raises(NotFoundError):
        gallery.photo(evidence)
    gallery.delete_individual("Moby")
    assert gallery.size == 12
    (row,) = gallery.search(centres["ind-2"][None], threshold=0.0)
    assert "Moby" not in [c.individual_id for c in row]
    with pytest.raises(NotFoundError):
        gallery.delete_individual("Moby")


def test_another_model_is_refused_with_how_to_reembed(store_url: str, tmp_path: Path) -> None:
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, photos_dir=tmp_path) as g:
        populate(g, individuals=1, photos=1)
    with pytest.raises(FingerprintMismatchError, match="whaleid gallery reembed --bundle"):
        Gallery.open(store_url, fingerprint="e" * 64, dim=DIM)
    with pytest.raises(WhaleidError, match="16-d"):
        Gallery.open(store_url, fingerprint=FP, dim=32)


def test_import_is_batched_resumable_and_idempotent(gallery: Gallery) -> None:
    vectors = unit_vectors(30, DIM, seed=9)
    items = [ImportItem(f"ind-{i % 5}", "orca", image(f"bulk-{i}", vectors[i])) for i in range(30)]
    seen: list[int] = []
    report = gallery.import_images(items[:12], batch_size=5, progress=seen.append)
    assert seen == [5, 5, 2] and report.added == 12
    report = gallery.import_images(items, batch_size=8)  # a rerun resumes
    assert (report.added, report.existing) == (18, 12)
    conflicting = ImportItem("ind-9", "orca", image("bulk-0", vectors[0]))
    report = gallery.import_images([conflicting], on_conflict="skip")
    assert report.conflicts == ["bulk-0.jpg"]
    assert gallery.size == 30 == gallery.store.count_embeddings(fingerprint=FP)
    assert [i.image_count for i in gallery.individuals(limit=10)] == [6] * 5


def test_snapshot_loads_then_catches_up(store_url: str, tmp_path: Path) -> None:
    snap = tmp_path / "index.snap"
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, snapshot=snap) as g:
        centres = populate(g, individuals=4)
    assert snap.is_file()  # written on close
    with Gallery.open(store_url, fingerprint=FP, dim=DIM) as writer:
        writer.register(
            individual_id="late", species="orca", images=[image("late", centres["ind-0"] * -1)]
        )
        writer.rename("ind-1", "renamed")
    g = Gallery.open(store_url, fingerprint=FP, dim=DIM, snapshot=snap)
    assert g.loaded_from == "snapshot" and g.size == 13
    (row,) = g.search(-centres["ind-0"][None], threshold=0.5)
    assert row[0].individual_id == "late"
    (row,) = g.search(centres["ind-1"][None], threshold=0.5)
    assert row[0].individual_id == "renamed"
    g.close()
    # A snapshot of another store (or another index kind) is not trusted.
    other = f"sqlite:///{tmp_path / 'other.db'}"
    with Gallery.open(other, fingerprint=FP, dim=DIM, snapshot=snap) as fresh:
        assert fresh.loaded_from == "store" and fresh.size == 0
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, snapshot=snap, index="hnsw") as h:
        assert h.loaded_from == "store" and h.size == 13


def test_corrupt_snapshot_is_rebuilt(store_url: str, tmp_path: Path) -> None:
    snap = tmp_path / "index.snap"
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, snapshot=snap) as g:
        populate(g, individuals=2)
    snap.write_bytes(snap.read_bytes()[:-100])
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, snapshot=snap) as g:
        assert g.loaded_from == "store" and g.size == 6


def test_hnsw_gallery_agrees_with_flat_on_small_data(store_url: str, tmp_path: Path) -> None:
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, index="hnsw") as g:
        centres = populate(g)
        (row,) = g.search(centres["ind-5"][None], threshold=0.5)
        assert row[0].individual_id == "ind-5"
        g.delete_individual("ind-5")
        assert g.size == 15
        (row,) = g.search(centres["ind-5"][None], threshold=-1.0)
        assert "ind-5" not in [c.individual_id for c in row]


def test_update_renames_and_sets_species_and_metadata_at_once(gallery: Gallery) -> None:
    centres = populate(gallery)
    gallery.update("ind-1", new_id="Nemo", species="orca", metadata={"sex": "F"})
    detail = gallery.individual("Nemo")
    assert (detail.species, detail.metadata, detail.image_count) == ("orca", {"sex": "F"}, 3)
    # The index follows the new id and the new species (the filter sees it).
    (row,) = gallery.search(centres["ind-1"][None], threshold=0.5, species="orca")
    assert row[0].individual_id == "Nemo" and row[0].species == "orca"
    gallery.update("Nemo", species=None)
    assert gallery.individual("Nemo").species is None
    assert gallery.individual("Nemo").metadata == {"sex": "F"}
    (row,) = gallery.search(centres["ind-1"][None], threshold=0.5, species="orca")
    assert "Nemo" not in [c.individual_id for c in row]
    # One transaction: a refused rename changes nothing else either.
    with pytest.raises(ConflictError):
        gallery.update("Nemo", new_id="ind-0", species="beluga", metadata={})
    assert gallery.individual("Nemo").species is None
    assert gallery.individual("Nemo").metadata == {"sex": "F"}


def test_edits_refuse_the_reserved_id_for_the_service_and_the_cli(
    gallery: Gallery, store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli import main

    populate(gallery, individuals=2)
    with pytest.raises(GalleryInputError, match="reserved"):
        gallery.rename("ind-0", NEW_INDIVIDUAL)
    with pytest.raises(GalleryInputError, match="reserved"):
        gallery.merge("ind-0", NEW_INDIVIDUAL)
    with pytest.raises(ConflictError, match="itself"):
        gallery.merge("ind-0", "ind-0")
    # `whaleid gallery` runs the same checks on the store alone.
    for action in ("rename", "merge"):
        status = main(["gallery", "--gallery", store_url, action, "ind-0", NEW_INDIVIDUAL])
        err = capsys.readouterr().err.strip()
        assert status != 0 and "reserved" in err and "\n" not in err, err
    assert [i.id for i in gallery.individuals()] == ["ind-0", "ind-1"]


def test_ivf_gallery_trains_on_the_store_and_matches_flat(store_url: str, tmp_path: Path) -> None:
    snap = tmp_path / "ivf.snap"
    with Gallery.open(store_url, fingerprint=FP, dim=DIM) as g:
        centres = populate(g, individuals=40, photos=4)
    queries = np.stack([near(c, 0.2, 7) for c in centres.values()])
    with Gallery.open(store_url, fingerprint=FP, dim=DIM) as flat:
        expected = flat.search(queries, threshold=0.5)

    def open_ivf() -> Gallery:
        # nprobe beyond nlist probes every cell: exact search, comparable with flat.
        return Gallery.open(
            store_url, fingerprint=FP, dim=DIM, index="ivf-flat", snapshot=snap,
            min_train=100, nprobe=1 << 20,
        )  # fmt: skip

    with open_ivf() as g:
        assert g.kind == "ivf-flat" and g.replica._index.trained and g.size == 160
        assert g.search(queries, threshold=0.5) == expected
        g.delete_individual("ind-0")
        (row,) = g.search(centres["ind-0"][None], threshold=-1.0)
        assert "ind-0" not in [c.individual_id for c in row] and g.size == 156
    with open_ivf() as g:
        assert g.loaded_from == "snapshot" and g.replica._index.trained and g.size == 156


def test_auto_gallery_is_flat_while_small(store_url: str, tmp_path: Path) -> None:
    snap = tmp_path / "auto.snap"
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, index="auto", snapshot=snap) as g:
        assert g.kind == "flat"
        populate(g, individuals=2)
    with Gallery.open(store_url, fingerprint=FP, dim=DIM, index="auto", snapshot=snap) as g:
        assert g.loaded_from == "snapshot" and g.kind == "flat" and g.size == 6
    with pytest.raises(GalleryInputError, match="expected one of auto"):
        Gallery.open(store_url, fingerprint=FP, dim=DIM, index="annoy")
