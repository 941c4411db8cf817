"""The faiss index wrapper against a numpy brute-force reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fixtures.gallery import unit_vectors

from bench.vectors import RealisticSet, realistic_set
from gallery.index import AUTO_FLAT_BELOW, KINDS, VectorIndex, choose_kind, ivf_nlist

DIM = 32


def brute(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ vectors.T
    return ids[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Vectors around 50 centres: like embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    centres = unit_vectors(50, DIM, seed + 1)
    x = centres[rng.integers(0, 50, n)] + 0.3 * rng.standard_normal((n, DIM)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_is_exact_and_answers_store_ids() -> None:
    vectors = unit_vectors(500, DIM)
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = VectorIndex(DIM)
    assert index.add(ids, vectors) == 500 and index.size == 500
    queries = unit_vectors(10, DIM, seed=3)
    sims, got = index.search(queries, 20)
    np.testing.assert_array_equal(got, brute(queries, ids, vectors, 20))
    np.testing.assert_allclose(sims[:, 0], (queries @ vectors.T).max(axis=1), rtol=1e-5)


def test_add_skips_present_ids_and_remove_is_real() -> None:
    vectors = unit_vectors(100, DIM)
    ids = np.arange(100, dtype=np.int64)
    index = VectorIndex(DIM)
    index.add(ids, vectors)
    assert index.add(ids[:10], vectors[:10]) == 0  # replaying a change adds nothing
    assert index.remove(np.asarray([5, 7, 5, 12345])) == 2
    assert index.size == 98 and not index.contains(np.asarray([5, 7])).any()
    _, got = index.search(vectors[[5, 7]], 3)
    assert not np.isin(got, [5, 7]).any()
    assert index.add(np.asarray([5]), vectors[5:6]) == 1  # flat can take an id back


def test_fewer_vectors_than_k_pads_with_minus_one() -> None:
    index = VectorIndex(DIM)
    sims, ids = index.search(unit_vectors(2, DIM), 4)
    assert (ids == -1).all() and np.isneginf(sims).all()
    index.add(np.asarray([3, 4]), unit_vectors(2, DIM))
    sims, ids = index.search(unit_vectors(1, DIM), 4)
    assert sorted(ids[0, :2].tolist()) == [3, 4] and (ids[0, 2:] == -1).all()
    assert np.isneginf(sims[0, 2:]).all()


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_allowed_mask_filters(kind: str) -> None:
    vectors = clustered(400)
    ids = np.arange(400, dtype=np.int64)
    index = VectorIndex(DIM, kind)
    index.add(ids, vectors)
    allowed = np.zeros(400, dtype=bool)
    allowed[::3] = True
    _, got = index.search(vectors[:5], 10, allowed)
    assert (got % 3 == 0).all()
    np.testing.assert_array_equal(got, brute(vectors[:5], ids[::3], vectors[::3], 10))


def test_hnsw_recall_against_flat_and_tombstones() -> None:
    vectors = clustered(3000)
    ids = np.arange(3000, dtype=np.int64)
    flat, hnsw = VectorIndex(DIM), VectorIndex(DIM, "hnsw", hnsw_m=16, ef_search=64)
    flat.add(ids, vectors)
    hnsw.add(ids, vectors)
    queries = clustered(50, seed=9)
    _, exact = flat.search(queries, 10)
    _, approx = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall > 0.9
    gone = exact[:, 0]
    assert hnsw.remove(gone) == len(set(gone.tolist()))
    assert hnsw.size == 3000 - len(set(gone.tolist()))
    _, after = hnsw.search(queries, 10)
    assert not np.isin(after, gone).any()
    with pytest.raises(ValueError, match="re-add"):
        hnsw.add(gone[:1], vectors[gone[:1]])


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_write_read_round_trip(kind: str) -> None:
    vectors = clustered(300)
    index = VectorIndex(DIM, kind)
    index.add(np.arange(300, dtype=np.int64), vectors)
    index.remove(np.asarray([0, 1, 2]))
    buf = io.BytesIO()
    index.write(buf)
    buf.seek(0)
    loaded = VectorIndex.read(buf, dim=DIM, kind=kind)
    assert loaded.size == index.size == 297
    queries = clustered(5, seed=4)
    np.testing.assert_array_equal(loaded.search(queries, 8)[1], index.search(queries, 8)[1])


# -- IVF kinds and the automatic choice (issue 17) ---------------------------------------------


def realistic(n: int, seed: int = 0) -> RealisticSet:
    """A catalogue-like gallery (bench/vectors.py), 512-d like the models' embeddings."""
    return realistic_set(n, 512, queries=200, seed=seed)


def test_auto_is_flat_below_the_switch_and_ivf_from_it() -> None:
    assert choose_kind("auto", 0) == "flat"
    assert choose_kind("auto", AUTO_FLAT_BELOW - 1) == "flat"
    assert choose_kind("auto", AUTO_FLAT_BELOW) == choose_kind("auto", 10**8) == "ivf-sq8"
    assert [choose_kind(k, 10**8) for k in KINDS] == list(KINDS)  # a kind is taken as given
    with pytest.raises(ValueError, match="expected one of auto"):
        choose_kind("annoy", 10)


def test_nlist_grows_as_the_square_root_and_never_starves_kmeans() -> None:
    assert ivf_nlist(1_000_000) == 1024 and ivf_nlist(100_000) == 256
    for n in (1, 50, 1000, 12_345, 10**7):
        assert n >= 39 * ivf_nlist(n) or ivf_nlist(n) == 1


def test_the_automatic_ann_keeps_recall_on_a_realistic_gallery() -> None:
    data = realistic(12_000)
    ids = np.arange(1, 12_001, dtype=np.int64)
    flat = VectorIndex.build(512, "flat", ids, data.vectors)
    ann = VectorIndex.build(512, choose_kind("auto", AUTO_FLAT_BELOW), ids, data.vectors)
    assert ann.trained and ann.nlist == ivf_nlist(12_000) and ann.size == 12_000
    _, exact = flat.search(data.queries, 50)
    _, got = ann.search(data.queries, 50)
    assert recall(got, exact) >= 0.95


def test_ivf_deletions_are_real_and_keep_recall() -> None:
    data = realistic(12_000, seed=1)
    ids = np.arange(1, 12_001, dtype=np.int64)
    ann = VectorIndex.build(512, choose_kind("auto", AUTO_FLAT_BELOW), ids, data.vectors)
    flat = VectorIndex.build(512, "flat", ids, data.vectors)
    gone = np.random.default_rng(0).choice(ids, 4000, replace=False)
    assert ann.remove(gone) == flat.remove(gone) == 4000
    assert ann.size == 8000 and int(ann._index.ntotal) == 8000  # removed, not tombstoned
    # The queries' own best matches are among the deleted: searches must look past them.
    _, exact = flat.search(data.queries, 50)
    _, got = ann.search(data.queries, 50)
    assert not np.isin(got, gone).any()
    assert recall(got, exact) >= 0.95
    ann.add(gone[:100], data.vectors[gone[:100] - 1])  # an IVF takes an id back, like flat
    assert ann.size == 8100


@pytest.mark.parametrize("kind", ["ivf-flat", "ivf-sq8", "ivf-pq"])
def test_ivf_is_exact_until_it_can_train_then_trains_itself(kind: str) -> None:
    vectors = clustered(2000)
    ids = np.arange(2000, dtype=np.int64)
    index = VectorIndex(DIM, kind, min_train=1500, nprobe=64)
    index.add(ids[:1000], vectors[:1000])
    assert not index.trained
    queries = clustered(5, seed=4)
    np.testing.assert_array_equal(
        index.search(queries, 10)[1], brute(queries, ids[:1000], vectors[:1000], 10)
    )
    index.add(ids[1000:], vectors[1000:])
    assert index.trained and index.size == 2000 and index.nlist == ivf_nlist(2000)
    _, got = index.search(queries, 10)
    if kind != "ivf-pq":  # 4-byte product codes at this dimension only find near copies
        assert recall(got, brute(queries, ids, vectors, 10)) >= 0.8
    _, own = index.search(vectors[:50], 10)
    assert np.mean([i in row for i, row in enumerate(own)]) >= 0.9
    allowed = np.zeros(2000, dtype=bool)
    allowed[::2] = True
    assert (index.search(queries, 10, allowed)[1] % 2 == 0).all()


def test_trained_ivf_round_trips_through_a_snapshot() -> None:
    vectors = clustered(3000)
    index = VectorIndex.build(
        DIM, "ivf-sq8", np.arange(3000, dtype=np.int64), vectors, min_train=1000
    )
    index.remove(np.asarray([0, 1, 2]))
    buf = io.BytesIO()
    index.write(buf)
    buf.seek(0)
    loaded = VectorIndex.read(buf, dim=DIM, kind="ivf-sq8")
    assert loaded.trained and loaded.size == 2997 and loaded.nlist == index.nlist
    queries = clustered(5, seed=4)
    np.testing.assert_array_equal(loaded.search(queries, 8)[1], index.search(queries, 8)[1])
    assert loaded.remove(np.asarray([3, 4])) == 2 and loaded.size == 2995


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    return float(np.mean([len(set(a) & set(e)) / k for a, e in zip(approx, exact, strict=True)]))
