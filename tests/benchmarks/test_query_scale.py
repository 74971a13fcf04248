"""`benchmarks/query_scale.py`: the directly built memory is the one `add` would build, less the
association (so its query times measure the store's own search), and the target is read right."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np

from memgas.data import Session, Turn
from memgas.recipe import MemGASJobConfig
from memgas.store import MemoryStore
from reporting.bench import render_query_scale
from suite.encoders import HashingEncoder

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "query_scale.py"
_spec = importlib.util.spec_from_file_location("query_scale", _PATH)
qs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(qs)


def test_the_built_memory_holds_what_add_stores_and_edges_only_to_earlier_pool_nodes():
    """Nodes, owners, vectors and unit texts equal those of `MemoryStore.add` of the same sessions;
    every edge joins two pool nodes, the later to an earlier one, none before the 6th session.
    Mutations caught: vectors taken in another granularity order than Memory.add's (rows differ);
    edges drawn to any pool node (an edge points forward)."""
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    turns = [Turn("user", " ".join(rng.choice(words, 5))) for _ in range(40)]
    sizes, dates = [3, 4, 2], ["2023-01-01"]
    cfg = replace(MemGASJobConfig().memgas, encoder="hashing")
    st = MemoryStore(cfg, encoder=HashingEncoder(64))
    mem = qs.build(st, 12, turns, sizes, dates)
    ref = MemoryStore(cfg, encoder=HashingEncoder(64))
    for k in range(12):
        pick = np.random.default_rng(k).choice(len(turns), size=sizes[k % 3], replace=False)
        s = Session(f"m{k}", [replace(turns[i], turn_id=f"m{k}:{j}") for j, i in enumerate(pick)], dates[0])
        ref.add(s, "u", s.session_id, s.date)
    want = ref.users["u"]
    assert mem.node_gran == want.node_gran and list(mem.node_sess) == list(want.node_sess)
    np.testing.assert_array_equal(mem.rows, want.rows)
    assert [s["units"] for s in mem.sessions] == [s["units"] for s in want.sessions]
    pool = set(np.flatnonzero(np.isin(mem.node_gran, qs.POOL)).tolist())
    assert mem.edges
    for a, b in mem.edges:
        assert a in pool and b in pool and b < a and mem.node_sess[a] >= 5


def test_the_target_is_met_only_below_the_bound():
    """Mutation caught: the comparison reversed (a 31 ms p50 called met)."""
    row = {
        "sessions": 100000,
        "nodes": 1,
        "edges": 1,
        "scored_nodes": {"a": 1, "b": 1},
        "query_ms_p50": {"a": 29.9, "b": 31.0},
        "query_ms_p95": {"a": 40.0, "b": 40.0},
    }
    r = {
        "rows": [row],
        "config": {"encoder": "hashing", "edges_per_session": 18.8, "queries": 5},
        "target": {"sessions": 100000, "query_ms_p50": 30.0},
    }
    text = "\n".join(render_query_scale("x", r))
    assert "`a` 29.9 ms, met" in text and "`b` 31.0 ms, missed" in text
