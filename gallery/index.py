"""The faiss index over the gallery's embeddings: image ids in, similarities and image ids out.

Inner product on L2-normalised vectors (cosine similarity). Kinds:
- "flat": `IndexFlatIP`, exact; the reference the others are measured against. Every query
  reads every vector: fine to ~100k photos, 2 GB a query at 1M.
- "ivf-flat", "ivf-sq8", "ivf-pq": an inverted file (`IndexIVF*`): k-means cells trained on
  the gallery's own vectors when the index is built, a query scanning the `nprobe` nearest of
  `nlist` cells; vectors kept whole (flat), at one byte a dimension (sq8) or as product codes
  (pq). Removals are real (a direct map finds the id's cell), so deleting never leaves debris
  that later searches wade through. Until it holds `min_train` vectors there is nothing to
  train on: the index stays exact and trains itself once it reaches that size.
- "hnsw": `IndexHNSWFlat`, a graph. faiss cannot remove from an HNSW graph, so removals there
  are tombstones that searches skip through an id selector, and a rebuild (reopening without
  a snapshot) drops them; `auto` never picks it (bench/RESULTS.md).
- "auto" (a setting, not a kind): `choose_kind` picks flat or IVF-SQ8 by the gallery's size
  when the index is built.
Flat and HNSW sit in an `IndexIDMap`; IVF keeps ids itself: faiss answers with image ids.
"""

from __future__ import annotations

import math
from typing import IO, Any

import faiss
import numpy as np

__all__ = ["AUTO_FLAT_BELOW", "CHOICES", "KINDS", "VectorIndex", "choose_kind", "ivf_nlist"]

# faiss's bundled type stubs lack some SWIG classes (search parameters, callback IO).
_faiss: Any = faiss

KINDS: tuple[str, ...] = ("flat", "ivf-flat", "ivf-sq8", "ivf-pq", "hnsw")
CHOICES: tuple[str, ...] = ("auto", *KINDS)
IVF_KINDS = ("ivf-flat", "ivf-sq8", "ivf-pq")

# Below this many photos exact search costs nothing in recall and little in time; above it an
# IVF with one-byte codes answers a million photos ~75x faster than flat with recall@50 0.98,
# in a quarter of the memory (bench/RESULTS.md, "Gallery at scale (issue 17)").
AUTO_FLAT_BELOW = 100_000
AUTO_ANN = "ivf-sq8"


def choose_kind(setting: str, size: int) -> str:
    """The index kind a setting means for a gallery of `size` photos."""
    if setting not in CHOICES:
        raise ValueError(f"index kind {setting!r}: expected one of {', '.join(CHOICES)}")
    if setting != "auto":
        return setting
    return "flat" if size < AUTO_FLAT_BELOW else AUTO_ANN


def ivf_nlist(size: int) -> int:
    """Cells for an IVF over `size` vectors: about √size, a power of two (1,024 at a million:
    assigning a vector costs nlist dot products, scanning a cell size/nlist), with at least 39
    training vectors per cell (below that faiss's k-means is starved)."""
    target = math.sqrt(max(size, 1))
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and size < 39 * nlist:
        nlist //= 2
    return max(1, nlist)


def _pq_subquantizers(dim: int) -> int:
    """Product-quantiser blocks: 8 dimensions each where the dimension allows (64 bytes for
    512-d), else the largest divisor of dim that keeps blocks at least 4 wide."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0 and dim // m >= 4:
            return m
    return 1


class VectorIndex:
    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
        nlist: int = 0,
        nprobe: int = 64,
        min_train: int = 10_000,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.dim = dim
        self.kind = kind
        self.ef_search = ef_search
        self.nlist = nlist  # 0: ivf_nlist(size) when trained
        self.nprobe = nprobe
        self.min_train = min_train
        if kind == "hnsw":
            hnsw: Any = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = ef_construction
            inner: faiss.Index = hnsw
        else:
            # Flat, and an IVF kind until it is trained: exact search.
            inner = faiss.IndexFlatIP(dim)
        self._index: Any = faiss.IndexIDMap(inner)
        # live[i]: image id i is in the index and not removed. Searches use it as a selector
        # only when they must (tombstones or a filter): unfiltered flat search stays BLAS.
        self._live = np.zeros(0, dtype=bool)
        self._dead = np.zeros(0, dtype=bool)  # HNSW tombstones
        self._tombstones = 0

    @classmethod
    def build(
        cls, dim: int, kind: str, ids: np.ndarray, vectors: np.ndarray, **params: int
    ) -> VectorIndex:
        """An index over these vectors; an IVF is trained on them first (when there are
        `min_train` or more)."""
        index = cls(dim, kind, **params)
        if kind in IVF_KINDS and len(ids) >= index.min_train:
            index._train(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim))
        index.add(ids, vectors)
        return index

    @property
    def trained(self) -> bool:
        """An IVF kind has cells (until then it searches exactly); other kinds always."""
        return self.kind not in IVF_KINDS or isinstance(self._index, faiss.IndexIVF)

    @property
    def size(self) -> int:
        """Number of searchable vectors."""
        return int(self._index.ntotal) - self._tombstones

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < len(self._live))
        out = np.zeros(ids.shape, dtype=bool)
        out[inside] = self._live[ids[inside]]
        return out

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        """Add vectors under their image ids; ids already present are skipped (replaying a
        change twice must not duplicate hits). Returns how many were added."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        fresh = ~self.contains(ids)
        # Duplicates inside one call: keep the first.
        _, first = np.unique(ids, return_index=True)
        once = np.zeros(len(ids), dtype=bool)
        once[first] = True
        keep = fresh & once
        if not keep.all():  # a mask copies: a gallery opened from its store is all fresh
            ids, vectors = ids[keep], vectors[keep]
        if len(ids) == 0:
            return 0
        self._grow(int(ids.max()) + 1)
        if self.kind == "hnsw" and self._dead[ids].any():
            # A tombstoned id cannot come back into an HNSW graph; the store never reuses ids,
            # so this only happens when a caller mixes galleries.
            raise ValueError("HNSW index: cannot re-add a removed image id")
        self._index.add_with_ids(vectors, ids)
        self._live[ids] = True
        if not self.trained and self._index.ntotal >= self.min_train:
            self._retrain_from_staging()
        return len(ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove image ids (absent ones are ignored); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = np.unique(ids[self.contains(ids)])
        if len(ids) == 0:
            return 0
        self._live[ids] = False
        if self.kind == "hnsw":
            self._dead[ids] = True
            self._tombstones += len(ids)
        elif self.trained and self.kind in IVF_KINDS:
            # The direct map's hash table removes from the id's own cell (no scan of every
            # list); it takes an id array, not a batch selector.
            self._index.remove_ids(faiss.IDSelectorArray(ids))
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
        return len(ids)

    def _grow(self, n: int) -> None:
        if n > len(self._live):
            size = max(n, 2 * len(self._live))
            self._live = np.concatenate([self._live, np.zeros(size - len(self._live), bool)])
            self._dead = np.concatenate([self._dead, np.zeros(size - len(self._dead), bool)])

    # -- IVF training --------------------------------------------------------------------------

    def _train(self, vectors: np.ndarray) -> None:
        """Replace the (empty) index by an IVF trained on these vectors."""
        nlist = self.nlist or ivf_nlist(len(vectors))
        quantizer = faiss.IndexFlatIP(self.dim)
        ip = faiss.METRIC_INNER_PRODUCT
        ivf: Any
        if self.kind == "ivf-flat":
            ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, ip)
        elif self.kind == "ivf-sq8":
            qt = faiss.ScalarQuantizer.QT_8bit
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, qt, ip)
        else:
            ivf = faiss.IndexIVFPQ(quantizer, self.dim, nlist, _pq_subquantizers(self.dim), 8, ip)
            ivf.pq.cp.niter = 10  # its codebooks: 10 rounds, as for the cells
            ivf.pq.cp.max_points_per_centroid = 64
        # k-means on a sample of 64 vectors a cell, 10 rounds: cells good enough to route
        # queries, trained in seconds at a million (faiss's 256 × 25 takes minutes on 2 cores);
        # seeded, so a rebuild of the same gallery gives the same cells.
        ivf.cp.max_points_per_centroid = 64
        ivf.cp.niter = 10
        ivf.cp.seed = 1234
        ivf.train(vectors)
        ivf.set_direct_map_type(_faiss.DirectMap.Hashtable)
        ivf.nprobe = self.nprobe
        self._index = ivf  # faiss's Python wrapper keeps the quantizer alive with it
        self.nlist = nlist

    def _retrain_from_staging(self) -> None:
        """The exact staging index reached min_train: train the IVF on what it holds."""
        staged = self._index
        ids = faiss.vector_to_array(staged.id_map).astype(np.int64)
        vectors = staged.index.reconstruct_n(0, staged.ntotal)
        self._train(vectors)
        self._index.add_with_ids(vectors, ids)

    # -- search --------------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. allowed: optional bool mask over image ids (a filter such as
        one species). Returns (sims (Q, k) float32, ids (Q, k) int64, -1 where no hit)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        mask = None
        if allowed is not None:
            mask = self._live.copy()
            n = min(len(mask), len(allowed))
            mask[:n] &= allowed[:n]
            mask[n:] = False
        elif self._tombstones:
            mask = self._live
        params: Any = None
        bitmap = None
        if mask is not None:
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
        if self.kind == "hnsw":
            params = _faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
        elif self.kind in IVF_KINDS and self.trained:
            params = _faiss.SearchParametersIVF()
            params.nprobe = self.nprobe
        elif bitmap is not None:
            params = faiss.SearchParameters()
        if bitmap is not None:
            params.sel = selector
        if self._index.ntotal == 0:
            return (
                np.full((len(queries), k), -np.inf, dtype=np.float32),
                np.full((len(queries), k), -1, dtype=np.int64),
            )
        sims, ids = self._index.search(queries, k, params=params)
        del bitmap  # kept alive until here: the selector points into it
        sims[ids < 0] = -np.inf
        return sims, ids

    # -- persistence (used by gallery.snapshot) ------------------------------------------------

    def write(self, fh: IO[bytes]) -> None:
        """Write the faiss index (its own format) and the live mask to an open file."""
        header = np.asarray([len(self._live), self._tombstones], dtype=np.int64)
        fh.write(header.tobytes())
        fh.write(np.packbits(self._live, bitorder="little").tobytes())
        fh.write(np.packbits(self._dead, bitorder="little").tobytes())
        faiss.write_index(self._index, _faiss.PyCallbackIOWriter(fh.write, 1 << 24))

    @classmethod
    def read(
        cls, fh: IO[bytes], *, dim: int, kind: str, ef_search: int = 128, nprobe: int = 64
    ) -> VectorIndex:
        n, tombstones = np.frombuffer(fh.read(16), dtype=np.int64)
        packed = np.frombuffer(fh.read((int(n) + 7) // 8), dtype=np.uint8)
        index = cls(dim, kind, ef_search=ef_search, nprobe=nprobe)
        index._live = np.unpackbits(packed, count=int(n), bitorder="little").astype(bool)
        packed = np.frombuffer(fh.read((int(n) + 7) // 8), dtype=np.uint8)
        index._dead = np.unpackbits(packed, count=int(n), bitorder="little").astype(bool)
        index._tombstones = int(tombstones)
        index._index = faiss.read_index(_faiss.PyCallbackIOReader(fh.read, 1 << 24))
        if index._index.d != dim:
            raise ValueError(f"snapshot index has dimension {index._index.d}, not {dim}")
        if isinstance(index._index, faiss.IndexIVF):
            if kind not in IVF_KINDS:
                raise ValueError(f"snapshot holds an IVF index, not {kind}")
            index.nlist = int(index._index.nlist)
        return index
