"""Association of new memories with old ones by a two-component Gaussian mixture (SPEC §2).

From the `start_session`-th session on, each new node is scored (dot product) against every node of
earlier sessions (or, in a large memory, its candidates come from an ANN index: `index`); the top
`mem_threshold` scores get a 1-D `GaussianMixture(n_components)`; nodes in
the component with the highest mean become the new node's neighbours (undirected, unweighted).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.mixture import GaussianMixture

from suite.config import opt


@dataclass
class AssociationConfig:
    mem_threshold: int = opt(30, "top scores per new node given to the GMM", lo=1)
    n_components: int = opt(2, "GMM components (the highest-mean one gives the neighbours)", lo=1)
    start_session: int = opt(5, "sessions stored before association starts (reference: from the 6th)")
    seed: int = opt(0, "GMM random_state")
    init_params: Literal["k-means++", "kmeans"] = opt(
        "k-means++", "GMM init: k-means++ (same split, ~3x faster) | kmeans (sklearn default)"
    )
    index: Literal["auto", "exact", "ann"] = opt(
        "auto",
        "where a new node's top-`mem_threshold` candidates come from: exact (a scan of every earlier "
        "pool node) | ann (usearch HNSW, memgas.ann) | auto (exact below `ann_min` pool nodes, ann above)",
    )
    ann_min: int = opt(4096, "pool nodes from which `index: auto` switches from the exact scan to ANN", lo=1)
    pool: list[str] = opt(
        help="granularities that are associated (new nodes and old candidates): the session-level "
        "units, as the reference; add `turn` to link individual turns too",
        factory=lambda: ["session", "turn_mean", "summary", "keywords"],
    )

    def __post_init__(self):
        bad = [g for g in self.pool if g not in ("session", "turn", "turn_mean", "summary", "keywords")]
        if bad:
            raise ValueError(f"association.pool: unknown granularity {bad[0]!r}")
        if self.index not in ("auto", "exact", "ann"):
            raise ValueError(f"association.index={self.index!r}: expected auto | exact | ann")

    def uses_ann(self, n_pool: int) -> bool:
        return self.index == "ann" or (self.index == "auto" and n_pool >= self.ann_min)


def gmm_neighbours(
    scores: np.ndarray, n_components: int = 2, seed: int = 0, init_params: str = "k-means++"
) -> np.ndarray:
    """Boolean mask over `scores`: members of the highest-mean mixture component."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    if len(s) < n_components or np.ptp(s) < 1e-9:
        return np.zeros(len(s), dtype=bool)  # no split to find
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on tiny, near-tied samples
        gmm = GaussianMixture(n_components=n_components, random_state=seed, init_params=init_params).fit(s)
    return gmm.predict(s) == int(np.argmax(gmm.means_.ravel()))


def exact_top(new_emb: np.ndarray, old_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(candidate indices, their scores): each new node's top `k` old nodes by a full scan, best first."""
    # float64 products rounded once to float32: a float32 GEMM's summation order follows how BLAS
    # blocks the matrices, so on some CPUs a pair's score moved by an ulp with the number of old
    # nodes, reordering near-ties; then a memory after an exact delete differed from one that never
    # saw the session. Rounded from float64, a score depends on its two vectors alone.
    sims = (np.asarray(new_emb, np.float64) @ np.asarray(old_emb, np.float64).T).astype(np.float32)
    n = sims.shape[1]
    k = min(k, n)
    # the top k, best first (as the reference's topk): the GMM's k-means init depends on the order
    if n <= 4 * k + 256:
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    else:  # the same answer without sorting every score: the k-th value, then everything at least as high
        top = np.empty((len(sims), k), dtype=np.int64)
        for i, row in enumerate(sims):
            kth = np.partition(row, n - k)[n - k]
            idx = np.flatnonzero(row >= kth)  # ties at the k-th value included, in index order
            top[i] = idx[np.argsort(-row[idx], kind="stable")[:k]]
    return top, np.take_along_axis(sims, top, axis=1)


def associate_candidates(cand: np.ndarray, sims: np.ndarray, cfg: AssociationConfig) -> list[tuple[int, int]]:
    """Edges (new_index, old_index) from each new node's candidates (best first; -1 = padding),
    whichever way they were found (exact scan or ANN index)."""
    edges = []
    for i in range(len(cand)):
        ok = cand[i] >= 0
        c, s = cand[i][ok], sims[i][ok]
        mask = gmm_neighbours(s, cfg.n_components, cfg.seed, cfg.init_params)
        edges += [(i, int(j)) for j in c[mask]]
    return edges


def associate(new_emb: np.ndarray, old_emb: np.ndarray, cfg: AssociationConfig) -> list[tuple[int, int]]:
    """Edges (new_index, old_index) for a batch of new nodes against all earlier nodes (exact scan)."""
    if len(old_emb) == 0 or len(new_emb) == 0:
        return []
    return associate_candidates(*exact_top(new_emb, old_emb, cfg.mem_threshold), cfg)


def paper_association() -> AssociationConfig:
    """The authors' association settings (reference code defaults): 2 components, scikit-learn's
    default k-means initialisation, top 30 scores, from the 6th session on."""
    return AssociationConfig(mem_threshold=30, n_components=2, start_session=5, seed=0, init_params="kmeans")
