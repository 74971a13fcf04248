"""Query latency of one user's memory at 10,000 to 100,000 sessions, for the faithful MemGAS
configurations and for session-level ones that give up part of the method for speed; and, with
`--recall`, what each costs on LoCoMo.

    python benchmarks/query_scale.py --out runs/bench_query_scale                  # 10k, 30k, 100k sessions
    python benchmarks/query_scale.py --out runs/bench_query_recall --recall      # LoCoMo recall, MiniLM

Why a second benchmark beside `memgas_scaling.py`: growing a store by `add` pays the association
(GMM fits, ~33 ms a session at 100,000) and takes about an hour to reach 100,000 sessions, while a
query's cost depends on how many nodes it scores and how many edges PageRank walks, not on which
nodes an edge joins. So the memory here is built directly: each session is made of LoCoMo turns
drawn at random (seeded by n, as in `memgas_scaling.py`), its units built by the store's own
`UnitBuilder` and encoded by the hashing encoder as `MemoryStore.embed_units` does, and loaded into
a real `Memory`; the association edges are drawn at random between session-level (pool) nodes, each
to an earlier one, at the grown store's density (1,880,366 edges for 100,000 sessions, 18.8 a
session). The query path is the store's own (`MemoryStore.search`, query encoding excluded: every
query is encoded before timing), so `memgas` and `memgas_paper` here can be compared with the grown
store's figures (159.6 and 81.3 ms at 100,000 sessions) as a check of the construction.

`--recall`: every LoCoMo conversation ingested once through `MemoryStore.add` (the real
association), every configuration asked every question; recall_all@5 per configuration, so the
speed of a configuration is shown beside what it costs. Writes OUT/query_scale.json or
OUT/query_recall.json with provenance; rendered by `python -m ray_jobs.report OUT`.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from memgas.data import Session, load_locomo
from memgas.evaluate import retrieval_metrics
from memgas.memory import NODE_GRANULARITIES, Memory
from memgas.recipe import MemGASJobConfig, load_best, resolve_data
from memgas.retrieval import RetrievalConfig, paper_config
from memgas.store import MemoryStore
from suite.encoders import load_encoder
from suite.io import atomic_write_json
from suite.provenance import provenance, start_stamp
from suite.stats import compare

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: benchmarks.* importable
from benchmarks.memgas_scaling import query_latency  # noqa: E402 (the grown benchmark's timing)

EDGES_PER_SESSION = 1_880_366 / 100_000  # the grown store at 100,000 sessions (results/bench_scaling_hashing)
POOL = ("session", "turn_mean", "summary", "keywords")  # the association pool of every measured memory


def configs() -> dict[str, RetrievalConfig]:
    """The faithful configurations, and session-level ones that score fewer nodes per query."""
    paper = paper_config()
    return {
        "memgas": load_best(""),  # the dev-selected LoCoMo configuration (session + turn, BM25)
        "memgas_paper": paper,  # 4 session-level granularities, routed, graph
        # the session granularity alone, graph kept (the router has one granularity: no routing)
        "session_graph": replace(paper, granularities=["session"]),
        # two session-level granularities, routed, graph kept
        "session_summary_graph": replace(paper, granularities=["session", "summary"]),
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(store: MemoryStore, n: int, turns, sizes, dates, seed: int = 0) -> Memory:
    """A memory of `n` sessions: real units and vectors, association edges at random (see above)."""
    rng = np.random.default_rng(seed)
    sessions, gran, owner, blocks = [], [], [], []
    for k in tqdm(range(n), desc=f"sessions ({n:,})", unit="s", mininterval=5):
        pick = np.random.default_rng(k).choice(len(turns), size=sizes[k % len(sizes)], replace=False)
        sid = f"m{k}"
        s = Session(sid, [replace(turns[i], turn_id=f"{sid}:{j}") for j, i in enumerate(pick)], dates[k % len(dates)])
        units = store.units.build(s)
        emb = store.embed_units(units)
        sessions.append({"session_id": sid, "date": s.date, "units": units.by_granularity(), "meta": {}})
        for g in NODE_GRANULARITIES:  # the node order of Memory.add
            gran += [g] * len(emb[g])
            owner += [k] * len(emb[g])
            blocks += [np.asarray(emb[g], np.float32)]
    rows = np.concatenate(blocks)
    del blocks
    pool = np.flatnonzero(np.isin(np.asarray(gran), POOL))
    per_node = EDGES_PER_SESSION / len(POOL)
    edges = []
    for j, p in enumerate(pool):  # pool is in session order: an edge goes to an earlier pool node
        if j < 5 * len(POOL):  # association starts at the 6th session (start_session 5)
            continue
        for _ in range(rng.poisson(per_node)):
            edges.append((int(p), int(pool[rng.integers(0, j)])))
    mem = Memory()
    mem.load_nodes(sessions, gran, owner, edges, rows)
    return mem


def scale(a) -> None:
    out = Path(a.out)
    convs = load_locomo(resolve_data(MemGASJobConfig()))
    pool = [s for c in convs for s in c.sessions]
    turns = [t for s in pool for t in s.turns]
    sizes, dates = [len(s.turns) for s in pool], [s.date for s in pool]
    qs = [q.question for c in convs for q in c.questions][: a.queries]
    store = MemoryStore(replace(MemGASJobConfig().memgas, encoder="hashing"), encoder=load_encoder("hashing"))
    store.encoder.encode(qs)  # query encoding excluded from the timings
    methods = {k: v for k, v in configs().items() if k in a.configs}
    rows = []
    for n in a.sessions:
        t0 = time.perf_counter()
        mem = build(store, n, turns, sizes, dates)
        store.users["u"] = mem
        built_s = time.perf_counter() - t0
        lat = query_latency(store, qs, methods)  # the grown benchmark's timing, unchanged
        rows.append(
            {
                "sessions": n,
                "nodes": len(mem.rows),
                "edges": len(mem.edges),
                "scored_nodes": {
                    k: int(sum(len(mem.nodes_of(g)) for g in rc.granularities)) for k, rc in methods.items()
                },
                "query_ms_p50": {k: v["p50"] for k, v in lat.items()},
                "query_ms_p95": {k: v["p95"] for k, v in lat.items()},
                "build_s": built_s,
                "peak_rss_mb": _rss_mb(),
            }
        )
        tqdm.write(f"{n:>7,} sessions  " + "  ".join(f"{k} {v['p50']:.1f} ms" for k, v in lat.items()))
        store.users.pop("u")
        del mem
    config = {"sessions": a.sessions, "queries": len(qs), "encoder": "hashing", "edges_per_session": EDGES_PER_SESSION}
    res = {
        "kind": "query_scale",
        "config": config,
        "retrieval": {k: asdict(v) for k, v in methods.items()},
        "rows": rows,
        "target": {"sessions": 100000, "query_ms_p50": 30.0},
        "provenance": provenance(config, {"locomo": resolve_data(MemGASJobConfig())}),
    }
    atomic_write_json(out / "query_scale.json", res)
    print(f"query scale: {out / 'query_scale.json'}")


def recall(a) -> None:
    """recall_all@5 on every LoCoMo question for each configuration, over one real memory per
    conversation (the association of `memgas_locomo_best.yaml`'s memory)."""
    out = Path(a.out)
    convs = load_locomo(resolve_data(MemGASJobConfig()))
    methods = {k: v for k, v in configs().items() if k in a.configs}
    mcfg = replace(MemGASJobConfig().memgas, encoder=a.encoder)
    enc = load_encoder(a.encoder)
    per_q = {k: [] for k in methods}
    conv_of: list[str] = []  # the independent unit of each question
    units = None
    for conv in tqdm(convs, desc="conversations"):
        st = MemoryStore(mcfg, encoder=enc, units=units)
        units, enc = st.units, st.encoder  # one unit memo and one encoder cache across conversations
        for s in conv.sessions:
            st.add(s, conv.conv_id, s.session_id, s.date)
        corpus = [s["session_id"] for s in st.users[conv.conv_id].sessions]
        for q in conv.questions:
            if not q.gold_sessions:
                continue
            conv_of.append(conv.conv_id)
            for k, rc in methods.items():
                ranked = [x["session_id"] for x in st.search(q.question, conv.conv_id, len(corpus), rc)["results"]]
                per_q[k].append(retrieval_metrics(ranked, q.gold_sessions, corpus)["recall_all@5"])
    config = {"encoder": a.encoder, "memory": asdict(mcfg), "configs": sorted(methods)}
    res = {
        "kind": "query_recall",
        "benchmark": "locomo",
        "conversations": len(convs),
        "questions": len(next(iter(per_q.values()))),
        "metric": "recall_all@5",
        "recall": {k: float(np.mean(v)) for k, v in per_q.items()},
        # each configuration against the paper's, conversations as the unit of interval and test
        "vs_memgas_paper": compare(per_q, "memgas_paper", binary=False, clusters=conv_of),
        "per_question": per_q,
        "conversation": conv_of,
        "retrieval": {k: asdict(v) for k, v in methods.items()},
        "note": "every LoCoMo conversation (dev and test): a cost check of configurations, it selects nothing",
        "provenance": provenance(config, {"locomo": resolve_data(MemGASJobConfig())}),
    }
    atomic_write_json(out / "query_recall.json", res)
    print({k: round(v, 4) for k, v in res["recall"].items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, nargs="+", default=[10000, 30000, 100000])
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--configs", nargs="+", default=list(configs()), choices=list(configs()))
    ap.add_argument("--recall", action="store_true", help="LoCoMo recall_all@5 of each configuration")
    ap.add_argument("--encoder", default="minilm", help="the encoder of --recall")
    a = ap.parse_args()
    start_stamp()  # the commit and code hash the numbers are claimed for
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (recall if a.recall else scale)(a)


if __name__ == "__main__":
    main()
