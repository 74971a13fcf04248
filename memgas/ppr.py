"""Local personalised PageRank by push (Andersen, Chung & Lang, "Local Graph Partitioning using
PageRank Vectors", FOCS 2006): only the seeds' neighbourhood is touched, so the cost follows the
seeds and the restart probability, not the size of the memory.

The fixed point is the one igraph computes for `personalized_pagerank(damping=d, reset=r)` on an
undirected graph: p = (1 - d) r/|r| + d (P^T p), with a node that has no neighbours sending its
followed mass back along the reset distribution (as prpack does). Push keeps a residual r and an
estimate p with p + PPR(r) = PPR(reset); each push settles (1 - d) of a node's residual and spreads
the rest over its neighbours. It stops when every residual is below `tol` x degree (at most
`tol` x edges of mass is left unsettled), then hands the leftover residual to the nodes holding it,
so the result still sums to 1.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def push_ppr(
    neighbours,
    reset: dict[int, float],
    damping: float,
    tol: float = 1e-7,
    max_pushes: int = 1_000_000,
) -> dict[int, float]:
    """Approximate PPR as {node: mass} over the nodes reached. `neighbours(u)` gives u's neighbour
    list; `reset` the (unnormalised) restart distribution; `damping` the probability of following
    an edge (igraph's convention)."""
    total = float(sum(v for v in reset.values() if v > 0))
    if total <= 0:
        return {}
    seed = {u: v / total for u, v in reset.items() if v > 0}
    p: dict[int, float] = {}
    r: dict[int, float] = dict(seed)
    deg: dict[int, int] = {}
    queue = deque(seed)
    queued = set(seed)
    pushes = 0
    while queue and pushes < max_pushes:
        u = queue.popleft()
        queued.discard(u)
        ru = r.get(u, 0.0)
        nb = neighbours(u)
        d_u = deg.setdefault(u, len(nb))
        if ru <= tol * max(d_u, 1):
            continue
        pushes += 1
        r[u] = 0.0
        p[u] = p.get(u, 0.0) + (1 - damping) * ru
        follow = damping * ru
        # a node without neighbours sends what would follow an edge back to the reset distribution
        targets = [(v, follow / d_u) for v in nb] if d_u else [(v, follow * w) for v, w in seed.items()]
        for v, m in targets:
            r[v] = r.get(v, 0.0) + m
            if v not in queued and r[v] > tol * max(deg.get(v, 1), 1):
                queue.append(v)
                queued.add(v)
    for u, ru in r.items():  # leftover (< tol per edge): settled where it lies
        if ru > 0:
            p[u] = p.get(u, 0.0) + ru
    return p


def topk_agreement(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / k: how many of the k highest-scored items two rankings share."""
    k = min(k, len(a))
    if k == 0:
        return 1.0
    ta = set(np.argsort(-a, kind="stable")[:k].tolist())
    tb = set(np.argsort(-b, kind="stable")[:k].tolist())
    return len(ta & tb) / k
