import numpy as np
import pytest

from memgas.retrieval import RetrievalConfig, personalized_pagerank, rank_sessions


def test_ppr_matches_a_hand_solved_small_graph():
    # path 0-1-2 plus 1-3; reset on node 0. igraph damping d: p = (1-d) r + d Mᵀ p
    edges, n, d = [(0, 1), (1, 2), (1, 3)], 4, 0.1
    r = np.array([1.0, 0, 0, 0])
    deg = np.array([1, 3, 1, 1], dtype=float)
    M = np.zeros((n, n))
    for a, b in edges:
        M[b, a] += 1 / deg[a]
        M[a, b] += 1 / deg[b]
    want = np.linalg.solve(np.eye(n) - d * M, (1 - d) * r)
    got = personalized_pagerank(n, edges, r, d)
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-6)
    assert got[0] > got[1] > got[2] == pytest.approx(got[3])


class FakeMemory:
    """Three sessions, one session node + two turn nodes each, unit vectors in 3-D."""

    def __init__(self, edges=()):
        e = np.eye(3, dtype=np.float32)
        self.rows = [e[0], e[0], e[0] * 0.5, e[1], e[1], e[1] * 0.5, e[2], e[2], e[2] * 0.5]
        self.node_gran = ["session", "turn", "turn"] * 3
        self.node_sess = np.repeat(np.arange(3), 3)
        self.sessions = [
            {"session_id": f"s{i}", "units": {"session": [f"text {i}"], "turn": ["a", "b"]}} for i in range(3)
        ]
        self.edges = list(edges)

    def matrix(self):
        return np.stack(self.rows)

    def nodes_of(self, g):
        return np.asarray([i for i, x in enumerate(self.node_gran) if x == g])


def test_rank_sessions_dense_and_graph_propagation():
    mem = FakeMemory()
    q = np.array([1.0, 0.2, 0.0], dtype=np.float32)
    cfg = RetrievalConfig(granularities=["session", "turn"], use_graph=False, num_seeds=0, router="uniform")
    order, scores, w = rank_sessions(mem, q, "q", cfg)
    assert list(order) == [0, 1, 2] and w == {"session": 0.5, "turn": 0.5}
    # an edge from a session-0 node to a session-2 node lets PageRank lift session 2 above session 1
    mem2 = FakeMemory(edges=[(0, 6), (1, 7), (2, 8)])
    g = RetrievalConfig(granularities=["session", "turn"], use_graph=True, num_seeds=3, router="uniform", damping=0.85)
    order2, _, _ = rank_sessions(mem2, q, "q", g)
    assert list(order2) == [0, 2, 1]


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="score_norm"):
        rank_sessions(FakeMemory(), np.ones(3), "q", RetrievalConfig(granularities=["session"], score_norm="zz"))
    with pytest.raises(ValueError, match="lexical granularity"):
        rank_sessions(FakeMemory(), np.ones(3), "q", RetrievalConfig(granularities=[], lexical=["tfidf"]))


def _old_aggregation(mem, cfg, trace, n_sess):
    """The aggregation as written before the bincount / reduceat / partial-sort path (np.add.at and
    np.maximum.at into zero vectors, then a full stable argsort), from a trace of the same query."""
    full = np.zeros(len(mem.rows))
    for g in trace["in_graph"]:
        np.add.at(full, trace["node_idx"][g], trace["node_score"][g])
    gidx = trace["gidx"]
    assert np.array_equal(full[gidx], trace["node_scores"])
    sess, best = np.zeros(n_sess), np.full(n_sess, -np.inf)
    agg = np.add.at if cfg.session_agg == "sum" else np.maximum.at
    agg(sess, trace["owner"], trace["final"])
    np.maximum.at(best, trace["owner"], trace["node_scores"])
    for g in cfg.lexical:
        owner = trace["lex_owner"][g]
        agg(sess, owner, trace["node_score"][g])
        np.maximum.at(best, owner, trace["node_score"][g])
    best[~np.isfinite(best)] = 0.0
    total = sess + 1e-6 * best
    return np.argsort(-total, kind="stable"), total


@pytest.mark.parametrize(
    "cfg",
    [
        RetrievalConfig(ppr="local"),  # paper-like: 4 session-level granularities, sum
        RetrievalConfig(granularities=["session", "turn"], session_agg="max", ppr="full"),
        RetrievalConfig(
            granularities=["session", "turn"],
            lexical=["bm25_session", "bm25_turn"],
            lexical_mode="bypass",
            session_agg="max",
        ),
        RetrievalConfig(granularities=["session"], lexical=["bm25_session"], lexical_mode="bypass", session_agg="sum"),
    ],
    ids=["sum", "max", "max_bypass", "sum_bypass"],
)
def test_fast_aggregation_and_partial_sort_equal_the_plain_computation_bit_for_bit(cfg):
    """Session scores and order equal, bit for bit, np.add.at / np.maximum.at and a full stable
    argsort on a real memory (60 LoCoMo-like sessions, edges), and `top` returns the full order's
    first entries, ties included. Mutations caught (each seen failing): `_segment_max` taking the
    first node instead of the max; `top_order` with `<` for `<=` (loses tied sessions); the bypass
    of bm25_session added where `max` was asked."""
    from memgas.data import Session, Turn
    from memgas.store import MemGASConfig, MemoryStore

    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    st = MemoryStore(MemGASConfig(encoder="hashing"))
    for k in range(60):
        turns = [Turn("user", " ".join(rng.choice(words, 6)), f"s{k}:{j}") for j in range(4)]
        st.add(Session(f"s{k}", turns, "2023-01-01"), "u", f"s{k}", "2023-01-01")
    mem = st.users["u"]
    assert len(mem.edges) > 0
    for query in ("w1 w2 w3", "w5 w5 w7 w30", "w39"):
        q = st.encoder.encode([query])[0]
        tr = {}
        order, scores, _ = rank_sessions(mem, q, query, cfg, trace=tr)
        want, total = _old_aggregation(mem, cfg, tr, len(mem.sessions))
        assert np.array_equal(order, want) and np.array_equal(scores, total[want])
        for top in (1, 3, 5, 60):
            o, s, _ = rank_sessions(mem, q, query, cfg, top=top)
            assert np.array_equal(o, want[:top]) and np.array_equal(s, total[want[:top]])
    # ties: every session scores the same, so the partial order must be positions 0..top-1
    from memgas.retrieval import top_order

    flat = np.zeros(10)
    flat[7] = 1.0
    assert list(top_order(flat, 4)) == [7, 0, 1, 2]
