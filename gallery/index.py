"""The faiss index over the gallery's embeddings: image ids in, similarities and image ids out.

Inner product on L2-normalised vectors (cosine similarity). Two kinds:
- "flat": `IndexFlatIP`, exact; the default, and the reference the others are measured against.
- "hnsw": `IndexHNSWFlat`, approximate, for galleries of millions. faiss cannot remove from an
  HNSW graph, so removals there are tombstones that searches skip through an id selector; a
  rebuild (reopening without a snapshot) drops them.
Both sit in an `IndexIDMap`, so faiss answers with the store's image ids directly.
"""

from __future__ import annotations

from typing import IO, Any

import faiss
import numpy as np

__all__ = ["KINDS", "VectorIndex"]

# faiss's bundled type stubs lack some SWIG classes (HNSW search parameters, callback IO).
_faiss: Any = faiss

KINDS: tuple[str, ...] = ("flat", "hnsw")


class VectorIndex:
    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 128,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"index kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.dim = dim
        self.kind = kind
        self.ef_search = ef_search
        if kind == "flat":
            inner: faiss.Index = faiss.IndexFlatIP(dim)
        else:
            inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = ef_construction
        self._index: Any = faiss.IndexIDMap(inner)
        # live[i]: image id i is in the index and not removed. Searches use it as a selector
        # only when they must (tombstones or a filter): unfiltered flat search stays BLAS.
        self._live = np.zeros(0, dtype=bool)
        self._dead = np.zeros(0, dtype=bool)  # HNSW tombstones
        self._tombstones = 0

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
        return len(ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove image ids (absent ones are ignored); returns how many were removed."""
        ids = np.asarray(ids, dtype=np.int64)
        ids = np.unique(ids[self.contains(ids)])
        if len(ids) == 0:
            return 0
        self._live[ids] = False
        if self.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
        else:
            self._dead[ids] = True
            self._tombstones += len(ids)
        return len(ids)

    def _grow(self, n: int) -> None:
        if n > len(self._live):
            size = max(n, 2 * len(self._live))
            self._live = np.concatenate([self._live, np.zeros(size - len(self._live), bool)])
            self._dead = np.concatenate([self._dead, np.zeros(size - len(self._dead), bool)])

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
            if bitmap is not None:
                params.sel = selector
        elif bitmap is not None:
            params = faiss.SearchParameters()
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
    def read(cls, fh: IO[bytes], *, dim: int, kind: str, ef_search: int = 128) -> VectorIndex:
        n, tombstones = np.frombuffer(fh.read(16), dtype=np.int64)
        packed = np.frombuffer(fh.read((int(n) + 7) // 8), dtype=np.uint8)
        index = cls.__new__(cls)
        index.dim, index.kind, index.ef_search = dim, kind, ef_search
        index._live = np.unpackbits(packed, count=int(n), bitorder="little").astype(bool)
        packed = np.frombuffer(fh.read((int(n) + 7) // 8), dtype=np.uint8)
        index._dead = np.unpackbits(packed, count=int(n), bitorder="little").astype(bool)
        index._tombstones = int(tombstones)
        index._index = faiss.read_index(_faiss.PyCallbackIOReader(fh.read, 1 << 24))
        if index._index.d != dim:
            raise ValueError(f"snapshot index has dimension {index._index.d}, not {dim}")
        return index
