"""Association of new memories with old ones by a two-component Gaussian mixture (SPEC §2).

From the `start_session`-th session on, each new node is scored (dot product) against every node of
earlier sessions; the top `mem_threshold` scores get a 1-D `GaussianMixture(n_components)`; nodes in
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
    pool: list[str] = opt(
        help="granularities that are associated (new nodes and old candidates): the session-level "
        "units, as the reference; add `turn` to link individual turns too",
        factory=lambda: ["session", "turn_mean", "summary", "keywords"],
    )

    def __post_init__(self):
        bad = [g for g in self.pool if g not in ("session", "turn", "turn_mean", "summary", "keywords")]
        if bad:
            raise ValueError(f"association.pool: unknown granularity {bad[0]!r}")


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


def associate(new_emb: np.ndarray, old_emb: np.ndarray, cfg: AssociationConfig) -> list[tuple[int, int]]:
    """Edges (new_index, old_index) for a batch of new nodes against all earlier nodes."""
    if len(old_emb) == 0 or len(new_emb) == 0:
        return []
    sims = new_emb @ old_emb.T
    k = min(cfg.mem_threshold, sims.shape[1])
    # the top k, best first (as the reference's topk): the GMM's k-means init depends on the order
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    edges = []
    for i in range(len(new_emb)):
        cand = top[i]
        mask = gmm_neighbours(sims[i, cand], cfg.n_components, cfg.seed, cfg.init_params)
        edges += [(i, int(j)) for j in cand[mask]]
    return edges


def paper_association() -> AssociationConfig:
    """The authors' association settings (reference code defaults): 2 components, scikit-learn's
    default k-means initialisation, top 30 scores, from the 6th session on."""
    return AssociationConfig(mem_threshold=30, n_components=2, start_session=5, seed=0, init_params="kmeans")
