"""The store suite: the same assertions against SQLite and the real PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from fixtures.gallery import unit_vectors

from gallery.errors import ConflictError, NotFoundError
from gallery.records import NewEntry
from gallery.store import SqlStore, open_store
from gallery.store.base import ModelChangedError
from gallery.store.migrations import latest_version

DIM = 8
FP = "a" * 64


def entry(individual: str, tag: str, seed: int = 0, species: str | None = "orca") -> NewEntry:
    return NewEntry(
        individual_id=individual,
        species=species,
        content_hash=f"hash-{tag}",
        filename=f"{tag}.jpg",
        encounter="enc-1",
        box=(1.0, 2.0, 30.0, 40.0),
        vector=unit_vectors(1, DIM, seed)[0],
    )


@pytest.fixture
def store(store_url: str) -> SqlStore:
    s = open_store(store_url)
    yield s
    s.close()


def test_migrations_are_versioned_and_idempotent(store_url: str) -> None:
    first = open_store(store_url)
    info = first.info()
    assert info.schema_version == latest_version()
    assert len(info.uuid) == 32
    first.close()
    second = open_store(store_url)  # reopening applies nothing and keeps the identity
    assert second.info().uuid == info.uuid
    assert second.migrate() == latest_version()
    second.close()


def test_add_is_idempotent_by_content_hash(store: SqlStore) -> None:
    first = store.add_images(entries=[entry("A", "1"), entry("A", "2", 1)], fingerprint=FP)
    assert [r.created for r in first] == [True, True]
    again = store.add_images(entries=[entry("A", "1"), entry("A", "3", 2)], fingerprint=FP)
    assert again[0].image_id == first[0].image_id and not again[0].created
    assert again[1].created
    assert store.count_images() == 3
    assert store.count_embeddings(fingerprint=FP) == 3
    # A duplicate inside one call is stored once.
    dup = store.add_images(entries=[entry("B", "4"), entry("B", "4")], fingerprint=FP)
    assert dup[0].image_id == dup[1].image_id and [r.created for r in dup] == [True, False]


def test_same_photo_for_another_individual_conflicts(store: SqlStore) -> None:
    (stored,) = store.add_images(entries=[entry("A", "1")], fingerprint=FP)
    with pytest.raises(ConflictError, match=r"1\.jpg.*individual A"):
        store.add_images(entries=[entry("B", "new"), entry("B", "1")], fingerprint=FP)
    # All or nothing: the new photo of that batch was not stored either.
    assert store.count_images() == 1
    with pytest.raises(NotFoundError):
        store.get_individual(individual_id="B")
    skipped = store.add_images(
        entries=[entry("B", "new"), entry("B", "1")], fingerprint=FP, on_conflict="skip"
    )
    assert skipped[0] is not None and skipped[0].created and skipped[1] is None
    assert stored.individual_id == "A"


def test_species_is_checked_and_completed(store: SqlStore) -> None:
    store.add_images(entries=[entry("A", "1", species=None)], fingerprint=FP)
    store.add_images(entries=[entry("A", "2", species="orca")], fingerprint=FP)
    assert store.get_individual(individual_id="A").species == "orca"
    with pytest.raises(ConflictError, match="species orca"):
        store.add_images(entries=[entry("A", "3", species="beluga")], fingerprint=FP)


def test_records_round_trip(store: SqlStore) -> None:
    e = entry("A", "1", seed=3)
    (r,) = store.add_images(
        entries=[NewEntry(**{**e.__dict__, "metadata": {"sex": "F"}})], fingerprint=FP
    )
    detail = store.get_individual(individual_id="A")
    assert detail.metadata == {"sex": "F"} and detail.image_count == 1
    (image,) = detail.images
    assert image == store.get_image(image_id=r.image_id)
    assert (image.filename, image.encounter, image.box) == ("1.jpg", "enc-1", (1, 2, 30, 40))
    assert image.created.tzinfo is not None
    batch = store.embeddings(fingerprint=FP, image_ids=[r.image_id, 999], dim=DIM)
    assert batch.ids.tolist() == [r.image_id] and batch.individual_ids == ["A"]
    np.testing.assert_array_equal(batch.vectors[0], e.vector)


def test_listing_paginates_and_filters(store: SqlStore) -> None:
    for i in range(5):
        species = "orca" if i % 2 else "beluga"
        store.add_images(entries=[entry(f"ind-{i}", str(i), species=species)], fingerprint=FP)
    page = store.list_individuals(limit=2, offset=1)
    assert [i.id for i in page] == ["ind-1", "ind-2"]
    assert [i.id for i in store.list_individuals(species="orca")] == ["ind-1", "ind-3"]
    assert store.count_individuals() == 5 and store.count_individuals(species="beluga") == 3


def test_change_log_replays_every_write_in_order(store: SqlStore) -> None:
    a = store.add_images(entries=[entry("A", "1"), entry("A", "2", 1)], fingerprint=FP)
    store.add_images(entries=[entry("B", "3", 2)], fingerprint=FP)
    store.rename(old="A", new="A2")
    store.merge(source="B", target="A2")
    store.delete_image(image_id=a[0].image_id)
    log = store.changes(after=0)
    assert [c.seq for c in log] == sorted(c.seq for c in log)
    ops = [(c.op, c.image_id, c.individual_id) for c in log if c.op != "species"]
    assert ops[:3] == [("add", a[0].image_id, "A"), ("add", a[1].image_id, "A"), ("add", 3, "B")]
    assert ("move", a[0].image_id, "A2") in ops and ("move", 3, "A2") in ops
    assert ops[-1] == ("remove", a[0].image_id, None)
    assert store.head() == log[-1].seq
    assert store.changes(after=store.head()) == []


def test_rename_merge_delete(store: SqlStore) -> None:
    store.add_images(entries=[entry("A", "1"), entry("A", "2", 1)], fingerprint=FP)
    store.add_images(entries=[entry("B", "3", 2, species=None)], fingerprint=FP)
    with pytest.raises(ConflictError, match="merge"):
        store.rename(old="A", new="B")
    with pytest.raises(NotFoundError, match="'nope'"):
        store.rename(old="nope", new="C")
    store.rename(old="A", new="C")
    assert store.get_individual(individual_id="C").image_count == 2
    with pytest.raises(NotFoundError):
        store.get_individual(individual_id="A")
    store.merge(source="B", target="C")
    merged = store.get_individual(individual_id="C")
    assert merged.image_count == 3 and merged.species == "orca"
    store.add_images(entries=[entry("D", "4", 3, species="beluga")], fingerprint=FP)
    with pytest.raises(ConflictError, match="species differ"):
        store.merge(source="D", target="C")
    hashes = store.delete_individual(individual_id="C")
    assert sorted(hashes) == ["hash-1", "hash-2", "hash-3"]
    assert store.count_images() == 1 and store.count_embeddings(fingerprint=FP) == 1
    with pytest.raises(NotFoundError):
        store.delete_image(image_id=12345)
    with pytest.raises(NotFoundError):
        store.delete_individual(individual_id="C")


def test_scan_is_one_snapshot_in_batches(store: SqlStore) -> None:
    entries = [entry(f"I{i % 4}", str(i), i) for i in range(25)]
    store.add_images(entries=entries, fingerprint=FP)
    batches = list(store.scan_embeddings(fingerprint=FP, dim=DIM, batch=10))
    assert [len(b.ids) for b in batches] == [10, 10, 5]
    assert {b.head for b in batches} == {store.head()}
    ids = np.concatenate([b.ids for b in batches])
    assert ids.tolist() == sorted(ids.tolist())
    np.testing.assert_array_equal(
        np.concatenate([b.vectors for b in batches]), np.stack([e.vector for e in entries])
    )
    empty = list(store.scan_embeddings(fingerprint="other", dim=DIM))
    assert len(empty) == 1 and len(empty[0].ids) == 0


def test_read_embeddings_is_the_whole_scan_in_one_array(store: SqlStore) -> None:
    entries = [entry(f"I{i % 4}", str(i), i) for i in range(25)]
    store.add_images(entries=entries, fingerprint=FP)
    store.delete_image(image_id=3)
    scanned = list(store.scan_embeddings(fingerprint=FP, dim=DIM, batch=10))
    read = store.read_embeddings(fingerprint=FP, dim=DIM, chunk=7)  # pages of 7: 24 rows
    assert read.head == store.head() == scanned[0].head
    np.testing.assert_array_equal(read.ids, np.concatenate([b.ids for b in scanned]))
    np.testing.assert_array_equal(read.vectors, np.concatenate([b.vectors for b in scanned]))
    assert read.individual_ids == [o for b in scanned for o in b.individual_ids]
    assert read.vectors.dtype == np.float32 and read.vectors.flags.c_contiguous
    empty = store.read_embeddings(fingerprint="other", dim=DIM)
    assert empty.ids.shape == (0,) and empty.vectors.shape == (0, DIM)


def test_reembed_writes_beside_and_switches_atomically(store: SqlStore) -> None:
    store.add_images(entries=[entry("A", str(i), i) for i in range(5)], fingerprint=FP)
    new_fp = "b" * 64
    missing = store.images_missing(fingerprint=new_fp, limit=3)
    assert len(missing) == 3 and store.count_missing(fingerprint=new_fp) == 5
    store.put_embeddings(
        fingerprint=new_fp, image_ids=[m.id for m in missing], vectors=unit_vectors(3, 4)
    )
    with pytest.raises(ConflictError, match="2 images"):
        store.switch_fingerprint(fingerprint=new_fp, dim=4)
    rest = store.images_missing(fingerprint=new_fp, after=missing[-1].id)
    store.put_embeddings(
        fingerprint=new_fp, image_ids=[m.id for m in rest], vectors=unit_vectors(2, 4)
    )
    store.switch_fingerprint(fingerprint=new_fp, dim=4)
    info = store.info()
    assert (info.fingerprint, info.dim) == (new_fp, 4)
    assert store.count_embeddings(fingerprint=FP) == 0
    assert store.count_embeddings(fingerprint=new_fp) == 5
    assert store.changes(after=store.head() - 1)[0].op == "reset"


def test_known_hashes(store: SqlStore) -> None:
    (r,) = store.add_images(entries=[entry("A", "1")], fingerprint=FP)
    assert store.known_hashes(hashes=["hash-1", "hash-x"]) == {"hash-1": (r.image_id, "A")}


def test_writes_of_a_replaced_model_are_refused(store: SqlStore) -> None:
    store.add_images(entries=[entry("A", "1")], fingerprint=FP)
    store.set_meta(values={"fingerprint": FP, "dim": str(DIM)})
    store.put_embeddings(fingerprint="b" * 64, image_ids=[1], vectors=unit_vectors(1, DIM))
    store.switch_fingerprint(fingerprint="b" * 64, dim=DIM)
    # A process still on the old model (its follower not yet woken) tries to register.
    with pytest.raises(ModelChangedError, match="re-embedded"):
        store.add_images(entries=[entry("A", "2", 1)], fingerprint=FP)
    assert store.count_images() == 1


def _terminate(store: SqlStore, pg_url: str) -> None:
    """Drop the store's connection from the server side, as a restart or an operator would."""
    import psycopg

    pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


@pytest.mark.postgres
def test_postgres_retries_a_dropped_connection_once_for_reads_and_writes(pg_url: str) -> None:
    from gallery.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    store.add_images(entries=[entry("A", "1")], fingerprint=FP)
    _terminate(store, pg_url)
    assert store.count_images() == 1  # the read finds the connection dead, reconnects, answers
    head = store.head()
    _terminate(store, pg_url)
    # A write whose connection dropped before it committed runs once more, and once only.
    (result,) = store.add_images(entries=[entry("A", "2", 1)], fingerprint=FP)
    assert result is not None and result.created
    assert store.count_images() == 2
    assert [c.op for c in store.changes(after=head)] == ["add"]
    _terminate(store, pg_url)
    store.rename(old="A", new="B")
    assert [i.id for i in store.list_individuals()] == ["B"]
    store.close()
