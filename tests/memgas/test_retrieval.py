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
