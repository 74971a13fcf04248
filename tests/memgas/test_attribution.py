"""Mechanism attribution: which path decides each top-5 place, checked on memories whose answer
is known by construction."""

import numpy as np
import pytest

from memgas.attribution import alone_rankings, decided, node_parts, qualifies, summarize_attribution
from memgas.retrieval import RetrievalConfig, rank_sessions
from tests.memgas.test_retrieval import FakeMemory

Q = np.array([1.0, 0.2, 0.0], dtype=np.float32)


class LexMemory(FakeMemory):
    """FakeMemory with a BM25 over sessions that scores only session 2 (the dense scores favour 0)."""

    class _BM25:
        def scores(self, query):
            return np.array([0.0, 0.0, 50.0])

    def bm25(self, g):
        return self._BM25()


def _run(mem, cfg, k=3):
    tr = {}
    order, _, w = rank_sessions(mem, Q, "q", cfg, trace=tr)
    return tr, order, w, decided(tr, order, len(mem.sessions), len(mem.rows), k)


@pytest.mark.parametrize("agg", ["sum", "max"])
def test_with_the_graph_off_the_graph_decides_nothing_and_on_it_decides_what_it_lifted(agg):
    """Mutation caught: counting PageRank's whole output as the graph's (graph = final instead of
    final − reset) gives the graph every place even when it is off."""
    off = RetrievalConfig(
        granularities=["session", "turn"], use_graph=False, num_seeds=0, router="uniform", session_agg=agg
    )
    tr, order, _, d = _run(FakeMemory(edges=[(0, 6), (1, 7), (2, 8)]), off)
    assert d.get("graph", 0) == 0 and d["dense"] == 3 - d.get("tie-break", 0)
    # parts add up to each node's final score (the decomposition loses nothing)
    parts = node_parts(tr, 9)
    np.testing.assert_allclose(sum(parts.values()), tr["final"], atol=1e-12)
    on = RetrievalConfig(
        granularities=["session", "turn"], use_graph=True, num_seeds=3, router="uniform", damping=0.85, session_agg=agg
    )
    tr, order, _, d = _run(FakeMemory(edges=[(0, 6), (1, 7), (2, 8)]), on)
    assert list(order) == [0, 2, 1]  # PageRank lifted session 2 above session 1 ...
    assert d.get("graph", 0) >= 1  # ... and the attribution credits the graph with that place
    np.testing.assert_allclose(sum(node_parts(tr, 9).values()), tr["final"], atol=1e-12)


def test_a_configuration_whose_bypass_decides_every_place_is_refused_by_the_gate():
    """The `memgas` row that was BM25 with a dense tie-breaker: graph on, router on, BM25 in
    bypass dominating. Mutation caught: a gate that reads the config flags (graph on, reference
    router) instead of the attribution accepts it."""
    cfg = RetrievalConfig(
        granularities=["session"],
        lexical=["bm25_session"],
        lexical_mode="bypass",
        router="reference",
        use_graph=True,
        num_seeds=1,
        session_agg="max",
    )
    mem = LexMemory(edges=[(0, 3)])
    records = []
    for i in range(4):
        tr, order, w, d = _run(mem, cfg, k=1)
        assert d == {"bypass:bm25_session": 1}  # session 2 is first, put there by BM25 alone
        records.append({"attribution": {"memgas": {"decided": d, "entropy_ratio": {}}}, "router": {"memgas": w}})
    att = summarize_attribution(records, "memgas")
    assert att["graph_share"] == 0.0 and att["decided_share"] == {"bypass:bm25_session": 1.0}
    ok, why = qualifies(att)
    assert not ok and "graph decides 0.0%" in why
    # the same rule accepts a configuration whose graph and router measurably act
    assert qualifies({"graph_share": 0.3, "router_weight_sd_max": 0.05})[0]
    assert not qualifies({"graph_share": 0.3, "router_weight_sd_max": 0.01})[0]  # a router that never moves


def test_each_path_alone_ranks_by_its_own_scores():
    cfg = RetrievalConfig(
        granularities=["session"], lexical=["bm25_session"], lexical_mode="bypass", router="uniform", use_graph=False
    )
    tr = {}
    rank_sessions(LexMemory(), Q, "q", cfg, trace=tr)
    alone = alone_rankings(tr, 3)
    assert alone["lexical:bm25_session"][0] == 2 and alone["dense"][0] == 0 and alone["graph"][0] == 0
