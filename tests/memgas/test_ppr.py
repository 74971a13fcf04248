"""Local push PageRank (memgas.ppr) against igraph's full personalised PageRank."""

import igraph as ig
import numpy as np
import pytest

from memgas.association import AssociationConfig
from memgas.ppr import push_ppr, topk_agreement
from memgas.retrieval import RetrievalConfig, rank_sessions
from memgas.store import MemGASConfig, MemoryStore
from suite.encoders import HashingEncoder


@pytest.mark.parametrize("damping", [0.1, 0.5, 0.85])
def test_push_matches_igraph_isolated_nodes_included(damping):
    rng = np.random.default_rng(0)
    n = 80
    edges = sorted({(int(min(a, b)), int(max(a, b))) for a, b in rng.integers(0, 70, (150, 2)) if a != b})
    adj = [[] for _ in range(n)]
    for a, b in edges:
        adj[a] += [b]
        adj[b] += [a]
    reset = np.zeros(n)
    reset[[1, 5, 72, 75]] = [0.5, 0.2, 0.2, 0.1]  # 72 and 75 have no neighbours
    full = np.asarray(
        ig.Graph(n=n, edges=edges).personalized_pagerank(damping=damping, reset=reset.tolist(), implementation="prpack")
    )
    got = np.zeros(n)
    for k, v in push_ppr(lambda u: adj[u], {i: reset[i] for i in np.flatnonzero(reset)}, damping, 1e-10).items():
        got[k] = v
    np.testing.assert_allclose(got, full, atol=1e-7)
    assert topk_agreement(got, full, 10) == 1.0


def test_local_and_full_pagerank_rank_sessions_alike():
    cfg = MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1))
    st = MemoryStore(cfg, encoder=HashingEncoder())
    topics = ["hiking in the alps", "baking sourdough bread", "a job interview", "the dog's vet visit"]
    for i in range(40):
        st.add(f"{topics[i % 4]} on day {i}, with notes about {topics[(i * 7) % 4]}", "u")
    mem = st.users["u"]
    assert mem.edges
    for q in ("bread recipe", "vet appointment for the dog", "mountain trip"):
        qv = st.encoder.encode([q])[0]
        o_full, s_full, _ = rank_sessions(mem, qv, q, RetrievalConfig(ppr="full"))
        o_tight, s_tight, _ = rank_sessions(mem, qv, q, RetrievalConfig(ppr="local", ppr_tol=1e-10))
        # converged push: the same session scores (so the same ranking, up to exact ties)
        np.testing.assert_allclose(s_tight[np.argsort(o_tight)], s_full[np.argsort(o_full)], atol=1e-8)
        assert list(o_tight[:5]) == list(o_full[:5])
        o_loc, s_loc, _ = rank_sessions(mem, qv, q, RetrievalConfig(ppr="local"))  # the default tolerance
        assert len(set(o_loc[:5]) & set(o_full[:5])) >= 4
        np.testing.assert_allclose(
            s_loc[np.argsort(o_loc)], s_full[np.argsort(o_full)], atol=1e-2 * s_full.max()
        )  # within 1% of the top score


def test_ppr_option_is_checked_when_read():
    with pytest.raises(ValueError, match="ppr"):
        RetrievalConfig(ppr="approx")
