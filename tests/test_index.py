"""The faiss index wrapper against a numpy brute-force reference."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fixtures.gallery import unit_vectors

from gallery.index import VectorIndex

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
