"""Retrieval over a user's memory graph (SPEC §2) and its single-granularity baselines.

1. raw node scores per granularity: dense q·e, or BM25 for the lexical granularities
   (`bm25_session`, `bm25_turn`; scores divided by their max so the router sees a comparable scale);
2. router weights w_g from the entropy of softmax(scores_g / T) (`memgas.router`), lexical and
   dense granularities alike;
3. node score = w_g · norm(score): `raw` (paper), `softmax` (p_g) or `rrf` (1 / (rrf_k + rank in g));
4. the top `num_seeds` graph nodes seed a personalised PageRank over the association graph (reset =
   seed scores, damping 0.1 in igraph's convention = 90% restart), restricted to the nodes in use
   (igraph over the whole graph, or in a large memory push PageRank from the seeds: `ppr`);
   its output is rescaled to the seeds' total mass so graph on/off stay comparable. With
   `lexical_mode: seed` (default) BM25 scores are added onto the graph nodes they score (the
   session node for `bm25_session`, the turn nodes for `bm25_turn`) before seeding, so lexical
   evidence flows through the graph; `bypass` adds them to session scores after it (ablation);
5. session score = sum (paper) or max of its nodes' scores; sessions no seed reached are ordered
   by their best node score (a 1e-6 tie-break), so deep cut-offs (@30, @50) stay meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import igraph as ig
import numpy as np

from memgas.ppr import push_ppr
from memgas.router import router_weights, softmax
from suite.config import opt

LEXICAL = ("bm25_session", "bm25_turn")


@dataclass
class RetrievalConfig:
    granularities: list[str] = opt(
        help="dense granularities: session, turn, turn_mean, summary, keywords",
        factory=lambda: ["session", "turn_mean", "summary", "keywords"],
    )
    lexical: list[str] = opt(
        help="lexical granularities routed like the dense ones: bm25_session, bm25_turn", factory=list
    )
    router: Literal["corrected", "reference", "uniform"] = opt("corrected", "corrected | reference | uniform")
    temperature: float = opt(0.1, "router softmax temperature T (reference --temp 0.1)", lo=0, lo_open=True)
    score_norm: Literal["raw", "softmax", "rrf"] = opt("raw", "raw (paper) | softmax | rrf")
    rrf_k: float = opt(60.0, "rank offset of the rrf normalisation")
    session_agg: Literal["sum", "max"] = opt("sum", "sum (paper) | max")
    use_graph: bool = opt(True, "personalised PageRank over the association graph")
    damping: float = opt(0.1, "igraph damping (probability to follow an edge; 0.1 = 90% restart)", hi=1)
    num_seeds: int = opt(15, "seed nodes for PageRank (0 = every node)")
    ppr: Literal["auto", "full", "local"] = opt(
        "auto",
        "PageRank: full (igraph prpack over every graph node) | local (push from the seeds, memgas.ppr: "
        "cost follows the seeds' neighbourhood, not the memory) | auto (full below `ppr_local_min` graph nodes)",
    )
    ppr_local_min: int = opt(20000, "graph nodes from which `ppr: auto` uses local push PageRank", lo=1)
    ppr_tol: float = opt(
        1e-4,
        "local push stops when every residual is below ppr_tol x degree (the leftover stays where it lies; "
        "benchmarks/memgas_scaling.py --recall reports the ranking agreement with full PageRank)",
        lo=0,
        lo_open=True,
    )
    lexical_mode: Literal["seed", "bypass"] = opt(
        "seed", "seed (BM25 scores join the graph's seed scores) | bypass (added after the graph)"
    )

    def __post_init__(self):  # a typo fails when the config is read, before any memory is built
        choices = {
            "router": ("corrected", "reference", "uniform"),
            "score_norm": ("raw", "softmax", "rrf"),
            "session_agg": ("sum", "max"),
            "lexical_mode": ("seed", "bypass"),
            "ppr": ("auto", "full", "local"),
        }
        for k, allowed in choices.items():
            if getattr(self, k) not in allowed:
                raise ValueError(f"{k}={getattr(self, k)!r}: expected one of {allowed}")
        bad = [g for g in self.granularities if g not in ("session", "turn", "turn_mean", "summary", "keywords")]
        if bad:
            raise ValueError(f"unknown granularity {bad[0]!r}")
        bad = [g for g in self.lexical if g not in LEXICAL]
        if bad:
            raise ValueError(f"unknown lexical granularity {bad[0]!r}: {LEXICAL}")


def _norm(s: np.ndarray, how: str, T: float, rrf_k: float) -> np.ndarray:
    if how == "raw":
        return s
    if how == "softmax":
        return softmax(s, T)
    if how == "rrf":
        ranks = np.empty(len(s))
        ranks[np.argsort(-s, kind="stable")] = np.arange(1, len(s) + 1)
        return 1.0 / (rrf_k + ranks)
    raise ValueError(f"unknown score_norm {how!r}: raw | softmax | rrf")


def personalized_pagerank(n: int, edges, reset: np.ndarray, damping: float, graph=None) -> np.ndarray:
    """igraph's prpack PPR on an undirected graph of n nodes; returns a distribution (sums to 1)."""

    g = graph if graph is not None else ig.Graph(n=n, edges=[tuple(map(int, e)) for e in edges], directed=False)
    return np.asarray(
        g.personalized_pagerank(damping=damping, reset=reset.tolist(), directed=False, implementation="prpack")
    )


def subgraph(mem, gidx: np.ndarray, key: tuple):
    """The association graph restricted to nodes `gidx` (renumbered 0..len-1), as an igraph Graph,
    or None without edges. Vectorised, and cached on the memory until its next `add`."""

    cache = getattr(mem, "_graphs", None)
    if cache is not None and key in cache:
        return cache[key]
    g = None
    if len(mem.edges):
        e = np.asarray(mem.edges, dtype=np.int64)
        pos = np.full(len(mem.rows), -1, dtype=np.int64)
        pos[gidx] = np.arange(len(gidx))
        sub = pos[e]
        sub = sub[(sub >= 0).all(1)]
        if len(sub):
            g = ig.Graph(n=len(gidx), edges=sub.tolist(), directed=False)
    if cache is not None:
        cache[key] = g
    return g


def local_ppr(mem, gidx: np.ndarray, reset: np.ndarray, cfg: RetrievalConfig) -> np.ndarray:
    """Push PageRank (memgas.ppr) on the association graph restricted to `gidx`, from the nonzero
    entries of `reset` (indexed like `gidx`); returns a vector indexed like `gidx`. The restricted
    neighbour lists are cached on the memory until its next add, so a query pays only for the
    nodes it reaches."""
    cache = getattr(mem, "_graphs", None)
    key = ("local", len(gidx), int(gidx[-1]) if len(gidx) else -1)
    if cache is not None and key in cache:
        pos, nb_cache = cache[key]
    else:
        pos = np.full(len(mem.rows), -1, dtype=np.int64)
        pos[gidx] = np.arange(len(gidx))
        nb_cache = {}
        if cache is not None:
            cache[key] = (pos, nb_cache)
    adj = mem.adjacency()

    def neighbours(u: int) -> list[int]:  # u, v: positions in gidx
        if u not in nb_cache:
            nb = adj[int(gidx[u])]
            nb_cache[u] = [int(x) for x in pos[nb] if x >= 0] if nb else []
        return nb_cache[u]

    p = push_ppr(neighbours, {int(i): float(reset[i]) for i in np.flatnonzero(reset > 0)}, cfg.damping, cfg.ppr_tol)
    out = np.zeros(len(gidx))
    if p:
        out[np.fromiter(p.keys(), np.int64)] = np.fromiter(p.values(), np.float64)
    return out


def _graph_layout(mem, in_graph: list[str], node_idx: dict) -> tuple:
    """(gidx, each granularity's positions in gidx, owner of each gidx node, and the owners' segments
    (order, starts, owners) for a per-session max): derived from the node set alone, so cached on the
    memory until its next add (a query pays for its scores, not for this bookkeeping)."""
    cache = getattr(mem, "_graphs", None)
    key = ("layout", tuple(sorted(in_graph)))
    if cache is not None and key in cache:
        return cache[key]
    gidx = np.unique(np.concatenate([node_idx[g] for g in in_graph])).astype(np.int64)
    pos = {g: np.searchsorted(gidx, node_idx[g]) for g in in_graph}
    owner = mem.node_sess[gidx]
    order = np.argsort(owner, kind="stable")
    so = owner[order]
    starts = np.flatnonzero(np.r_[True, so[1:] != so[:-1]]) if len(so) else np.zeros(0, np.int64)
    out = (gidx, pos, owner, (order, starts, so[starts]))
    if cache is not None:
        cache[key] = out
    return out


def _segment_max(out: np.ndarray, seg: tuple, values: np.ndarray) -> None:
    """out[s] = max(out[s], values of the nodes owned by s), in place: what np.maximum.at(out, owner,
    values) computes, in one reduceat over the nodes sorted by owner instead of a scalar loop."""
    order, starts, owners = seg
    if len(starts):
        out[owners] = np.maximum(out[owners], np.maximum.reduceat(values[order], starts))


def top_order(total: np.ndarray, top: int | None) -> np.ndarray:
    """The first `top` entries of np.argsort(-total, kind="stable") (ties by position), without
    sorting the rest: every entry at or above the top-th value, sorted stably."""
    if top is None or top >= len(total):
        return np.argsort(-total, kind="stable")
    neg = -total
    kth = np.partition(neg, top - 1)[top - 1]
    cand = np.flatnonzero(neg <= kth)  # ascending positions, so a stable sort keeps ties by position
    return cand[np.argsort(neg[cand], kind="stable")][:top]


def rank_sessions(
    mem, q: np.ndarray, query: str, cfg: RetrievalConfig, trace: dict | None = None, top: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(session indices best first, their scores, router weights) for one query on a `Memory`.
    `trace`, when given, receives every intermediate step (raw scores per granularity, router
    weights, graph node ids, node scores, PageRank reset and output, session scores) so a test can
    compare each one with the reference implementation's. `top`: only the best `top` sessions are
    ordered and returned (the same as the full order's first `top`), for a search that shows a few."""
    n_sess = len(mem.sessions)
    raw: dict[str, np.ndarray] = {}
    nodes: dict[str, np.ndarray] = {}
    for g in cfg.granularities:
        idx = mem.nodes_of(g)
        nodes[g] = idx
        mat = mem.gran_matrix(g) if hasattr(mem, "gran_matrix") else mem.matrix()[idx]
        raw[g] = mat @ q if len(idx) else np.zeros(0)
    for g in cfg.lexical:
        if g not in LEXICAL:
            raise ValueError(f"unknown lexical granularity {g!r}: {LEXICAL}")
        s = mem.bm25(g).scores(query)
        raw[g] = s / s.max() if len(s) and s.max() > 0 else s
    w = router_weights(raw, cfg.temperature, cfg.router)
    if trace is not None:
        trace.update(raw=raw, nodes=nodes, weights=w)
    node_score = {g: w.get(g, 0.0) * _norm(raw[g], cfg.score_norm, cfg.temperature, cfg.rrf_k) for g in raw}

    sess = np.zeros(n_sess)
    best = np.full(n_sess, -np.inf)
    agg = np.add.at if cfg.session_agg == "sum" else np.maximum.at
    if cfg.session_agg not in ("sum", "max"):
        raise ValueError(f"unknown session_agg {cfg.session_agg!r}: sum | max")
    if cfg.lexical_mode not in ("seed", "bypass"):
        raise ValueError(f"unknown lexical_mode {cfg.lexical_mode!r}: seed | bypass")
    lex_nodes = {"bm25_session": "session", "bm25_turn": "turn"}
    in_graph = list(cfg.granularities) + (list(cfg.lexical) if cfg.lexical_mode == "seed" else [])
    if in_graph:
        # one score per graph node: granularities that land on the same node (session + bm25_session) add up
        node_idx = {g: nodes[g] if g in nodes else mem.nodes_of(lex_nodes[g]) for g in in_graph}
        gidx, gpos, owner, seg = _graph_layout(mem, in_graph, node_idx)
        # bincount adds in input order, as np.add.at did into a zero vector: the same sums, bit for bit
        gscore = np.zeros(len(gidx))
        for g in in_graph:
            gscore += np.bincount(gpos[g], weights=node_score[g], minlength=len(gidx))
        if len(gidx):
            k = len(gidx) if cfg.num_seeds <= 0 else min(cfg.num_seeds, len(gidx))
            seeds = np.argpartition(-gscore, k - 1)[:k]
            reset = np.zeros(len(gidx))
            reset[seeds] = gscore[seeds]
            final = reset
            if cfg.use_graph and len(mem.edges):
                r = np.clip(reset, 0, None)
                local = cfg.ppr == "local" or (cfg.ppr == "auto" and len(gidx) >= cfg.ppr_local_min)
                if local and r.sum() > 0:
                    final = local_ppr(mem, gidx, r, cfg) * r.sum()
                else:
                    g = subgraph(mem, gidx, tuple(sorted({lex_nodes.get(x, x) for x in in_graph})))
                    if g is not None and r.sum() > 0:
                        final = personalized_pagerank(len(gidx), None, r, cfg.damping, graph=g) * r.sum()
            if trace is not None:
                trace.update(gidx=gidx, node_scores=gscore, reset=reset, ppr=final / max(reset.sum(), 1e-300))
                trace.update(final=final, owner=owner, node_idx=node_idx)
            if cfg.session_agg == "sum":  # sess is still zero: bincount's sums are np.add.at's
                sess = np.bincount(owner, weights=final, minlength=n_sess).astype(np.float64)
            else:
                _segment_max(sess, seg, final)
            _segment_max(best, seg, gscore)
    lex_owner = {"bm25_session": lambda: np.arange(n_sess), "bm25_turn": lambda: mem.node_sess[mem.nodes_of("turn")]}
    if trace is not None:  # what memgas.attribution needs to split the ranking by path
        trace.setdefault("gidx", np.zeros(0, dtype=np.int64))
        trace.update(
            node_score=node_score,
            in_graph=in_graph,
            agg=cfg.session_agg,
            lexical=list(cfg.lexical),
            lex_owner={g: lex_owner[g]() for g in cfg.lexical},
            bypass={},
        )
    if cfg.lexical_mode == "bypass":
        for g in cfg.lexical:
            owner = lex_owner[g]()
            if g == "bm25_session":  # one score per session, in session order: elementwise
                sess = sess + node_score[g] if cfg.session_agg == "sum" else np.maximum(sess, node_score[g])
                best = np.maximum(best, node_score[g])
            else:
                agg(sess, owner, node_score[g])
                np.maximum.at(best, owner, node_score[g])
            if trace is not None:
                trace["bypass"][g] = (owner, node_score[g])
    best[~np.isfinite(best)] = 0.0
    if trace is not None:
        trace["session_scores"] = sess.copy()
    total = sess + 1e-6 * best
    order = top_order(total, top)
    return order, total[order], w


# Baselines and ablations, each a named point of the same config space.
def baseline_configs() -> dict[str, RetrievalConfig]:
    flat = dict(router="uniform", use_graph=False, num_seeds=0, session_agg="max")
    return {
        "bm25_session": RetrievalConfig(granularities=[], lexical=["bm25_session"], **flat),
        "bm25_turn": RetrievalConfig(granularities=[], lexical=["bm25_turn"], **flat),
        "dense_session": RetrievalConfig(granularities=["session"], **flat),
        "dense_turn": RetrievalConfig(granularities=["turn"], **flat),
        "dense_turn_mean": RetrievalConfig(granularities=["turn_mean"], **flat),
        "dense_summary": RetrievalConfig(granularities=["summary"], **flat),
        "dense_keywords": RetrievalConfig(granularities=["keywords"], **flat),
        "no_graph": RetrievalConfig(
            granularities=["session", "turn", "summary", "keywords"],
            router="corrected",
            use_graph=False,
            num_seeds=0,
            session_agg="max",
        ),
    }


def paper_config() -> RetrievalConfig:
    """MemGAS with the reference defaults: session-level nodes (session, turn mean, summary,
    keywords), reference router at T = 0.1, raw scores summed, 15 seeds, PageRank damping 0.1. Its
    memory is `memgas.store.paper_memory` (2 GMM components, k-means init, unnormalised turn mean)."""
    return RetrievalConfig(
        granularities=["session", "turn_mean", "summary", "keywords"],
        router="reference",
        temperature=0.1,
        score_norm="raw",
        session_agg="sum",
        use_graph=True,
        damping=0.1,
        num_seeds=15,
    )


def ablation_configs(cfg: RetrievalConfig, prefix: str = "memgas_paper") -> dict[str, RetrievalConfig]:
    """Each mechanism of `cfg` switched off or swapped, one at a time: the graph (on if `cfg` has it
    off), the router
    (uniform weights), the router formula (the other of reference / corrected), the lexical
    granularities, and how lexical scores enter (seed vs bypass)."""

    out = (
        {f"{prefix}_graph_off": replace(cfg, use_graph=False)}
        if cfg.use_graph
        else {f"{prefix}_graph_on": replace(cfg, use_graph=True)}
    )
    if cfg.router != "uniform":
        out[f"{prefix}_uniform_router"] = replace(cfg, router="uniform")
    other = {"reference": "corrected", "corrected": "reference", "uniform": "corrected"}[cfg.router]
    out[f"{prefix}_{other}_router"] = replace(cfg, router=other)
    if cfg.lexical and cfg.granularities:
        out[f"{prefix}_no_lexical"] = replace(cfg, lexical=[])
        out[f"{prefix}_lexical_{'bypass' if cfg.lexical_mode == 'seed' else 'seed'}"] = replace(
            cfg, lexical_mode="bypass" if cfg.lexical_mode == "seed" else "seed"
        )
    return out
