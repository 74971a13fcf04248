"""Grow one MemGAS memory to 10,000 sessions and report how ingest time and query latency grow.

    python benchmarks/memgas_scaling.py --out runs/bench_scaling [--sessions 10000] [--encoder minilm]

Sessions are LoCoMo sessions recycled (ids made unique). Query latency is measured at checkpoints
on LoCoMo questions for the dev-selected `memgas` configuration and the paper configuration. Writes
OUT/scaling.json and, through `ray_jobs.report`, OUT/report/ (table and curves).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from memgas.data import load_locomo
from memgas.recipe import BEST_LOCOMO, MemGASJobConfig, load_best, resolve_data
from memgas.retrieval import paper_config
from memgas.store import MemGASConfig, MemoryStore
from ray_jobs.report import render_report
from suite.encoders import load_encoder
from suite.io import atomic_write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--best", default="", help="best_config.yaml of a MemGAS sweep (default: the committed LoCoMo one)")
    ap.add_argument("--queries", type=int, default=30)
    a = ap.parse_args()

    convs = load_locomo(resolve_data(MemGASJobConfig()))
    pool = [s for c in convs for s in c.sessions]
    qs = [q.question for c in convs for q in c.questions][: a.queries]
    store = MemoryStore(MemGASConfig(encoder=a.encoder), encoder=load_encoder(a.encoder))
    marks = sorted({m for m in (100, 300, 1000, 3000, 10000, a.sessions) if m <= a.sessions})
    rows, t_ingest, n = [], 0.0, 0
    for m in marks:
        t0 = time.perf_counter()
        while n < m:
            s = pool[n % len(pool)]
            store.add(replace(s, session_id=f"{s.session_id}-{n}"), "u", f"{s.session_id}-{n}", s.date)
            n += 1
        t_ingest += time.perf_counter() - t0
        lat = {}
        for name, rc in (("memgas", load_best(a.best)), ("memgas_paper", paper_config())):
            ts = []
            for q in qs:
                t = time.perf_counter()
                store.search(q, "u", 5, rc)
                ts.append((time.perf_counter() - t) * 1000)
            lat[name] = float(np.percentile(ts, 50))
        mem = store.users["u"]
        rows.append(
            {
                "sessions": n,
                "nodes": len(mem.rows),
                "edges": len(mem.edges),
                "ingest_s_total": t_ingest,
                "ingest_sessions_per_s_recent": (m - (rows[-1]["sessions"] if rows else 0))
                / max(1e-9, time.perf_counter() - t0),
                "query_ms_p50": lat,
            }
        )
        print(
            f"{n:>6} sessions {len(mem.rows):>7} nodes {len(mem.edges):>8} edges  ingest {t_ingest:8.1f}s  "
            f"query p50 memgas {lat['memgas']:7.1f} ms  paper {lat['memgas_paper']:7.1f} ms",
            flush=True,
        )
        meta = {"encoder": a.encoder, "queries": len(qs), "memgas_config": a.best or BEST_LOCOMO}
        atomic_write_json(Path(a.out) / "scaling.json", {**meta, "rows": rows})
    rep = render_report([Path(a.out)], Path(a.out) / "report")
    print(f"scaling: {Path(a.out) / 'scaling.json'}; table and curves: {Path(a.out) / 'report' / 'report.md'}")
    assert rep["plots"], "the report drew no scaling curves"


if __name__ == "__main__":
    main()
