"""Approximate nearest neighbours for association: a usearch HNSW index over one user's pool nodes.

Why usearch: a maintained HNSW with real removal (`remove` takes a key out of the graph, it is never
returned again, its slot is reused) and wheels for every platform, where hnswlib ships only an sdist
and only soft-deletes (`mark_deleted` keeps the vector), and FAISS's HNSW cannot remove at all. The
index is derived state: it is rebuilt from the stored vectors when a memory is opened, never a file
that can disagree with the database.
"""

from __future__ import annotations

import numpy as np


class NodeIndex:
    """Inner-product HNSW over node vectors, keyed by stable node keys (not positions, which a
    delete renumbers). `search` returns (keys, similarities), best first, padded with -1 / -inf."""

    def __init__(self, dim: int, connectivity: int = 16, expansion_add: int = 128, expansion_search: int = 96):
        from usearch.index import Index

        self.dim = dim
        self._ix = Index(
            ndim=dim,
            metric="ip",
            dtype="f32",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion_search,
        )

    def __len__(self) -> int:
        return len(self._ix)

    def __contains__(self, key: int) -> bool:
        return int(key) in self._ix

    def add(self, keys, vecs: np.ndarray) -> None:
        keys = np.asarray(keys, dtype=np.uint64)
        if len(keys):
            # one thread: the graph then depends only on the insertion order, so a store rebuilt from
            # its file gets the same index; a multi-threaded build under CPU contention was measured
            # to reach only 0.75 of the exact scan's associations (66 of 88) where it reaches >= 0.9 alone
            self._ix.add(keys, np.ascontiguousarray(vecs, dtype=np.float32), threads=1)

    def remove(self, keys) -> None:
        for k in keys:
            self._ix.remove(int(k))

    def search(self, vecs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vecs = np.ascontiguousarray(np.atleast_2d(vecs), dtype=np.float32)
        keys = np.full((len(vecs), k), -1, dtype=np.int64)
        sims = np.full((len(vecs), k), -np.inf, dtype=np.float32)
        if len(self._ix) == 0 or k == 0:
            return keys, sims
        m = self._ix.search(vecs, min(k, len(self._ix)))
        got_k = np.atleast_2d(np.asarray(m.keys))
        got_d = np.atleast_2d(np.asarray(m.distances))
        counts = np.atleast_1d(np.asarray(m.counts))
        for i in range(len(vecs)):
            c = int(counts[i])
            keys[i, :c] = got_k[i, :c].astype(np.int64)
            sims[i, :c] = 1.0 - got_d[i, :c]  # usearch "ip" distance is 1 - <a, b>
        return keys, sims
