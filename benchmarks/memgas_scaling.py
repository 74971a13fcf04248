"""Grow one durable MemGAS store (SQLite, `MemoryStore.open`) and measure what grows with it;
measure LoCoMo recall of the scalable path (ANN association + local PageRank) against the exact one.

    python benchmarks/memgas_scaling.py --out runs/bench_scaling_hashing --sessions 100000 --encoder hashing
    python benchmarks/memgas_scaling.py --out runs/bench_scaling_minilm --sessions 10000 --encoder minilm
    python benchmarks/memgas_scaling.py --out runs/bench_recall --recall      # LoCoMo, exact vs scalable

Growth: session n is made of LoCoMo turns drawn at random (seeded by n; as many turns as a LoCoMo
session has), so every session-level text and vector is new, as in a real memory — recycling whole
sessions would fill the memory with exact duplicates whose association finds no split and adds no
edge, making a large memory look cheap. Turn texts repeat, so the encoder's cache encodes each once;
ingest time is the store's own (units, association, graph, commit) plus encoding the session-level
texts. At each size:
ingest seconds per session over the last step, query p50/p95 for the dev-selected `memgas`
configuration and the paper's (the query's encoding excluded: encoded before timing), disk bytes per
session, the bytes one add writes (`wchar` of /proc/self/io, median and max over the step's last
adds) against the store's bytes, peak RSS. Resumable: the store is durable, rerun the same command.
The association index and PageRank are the defaults (`index: auto`, `ppr: auto`): exact below
4,096 pool nodes / 20,000 graph nodes, ANN and local push above.

`--preencode` (the MiniLM run): every text of the sessions to come is encoded first in batches of
64 (sorted by length, so batches pad little) and its throughput reported apart, so ingest figures
are the store's, comparable with the hashing run's. The vectors are saved in chunks under
OUT/preencode (keys and float32 arrays, no pickle): a killed run resumes without encoding again.
Encoding one session at a time inside `add` costs about 2 s per session on 2 CPU cores, which no
store change affects.

Recall (`--recall`): every LoCoMo conversation ingested twice, with the exact path forced
(index=exact, ppr=full) and the scalable path forced (index=ann, ppr=local); recall_all@5 of the
dev-selected `memgas` configuration on every question, the paired difference, and the top-5
agreement of the two rankings. Writes OUT/scaling.json or OUT/recall.json (with provenance),
rendered by `python -m ray_jobs.report OUT`.
"""

from __future__ import annotations

import argparse
import io
import resource
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from memgas.data import Session, load_locomo
from memgas.encoders import CachedEncoder
from memgas.evaluate import retrieval_metrics
from memgas.recipe import BEST_LOCOMO, MemGASJobConfig, load_best, resolve_data
from memgas.retrieval import paper_config
from memgas.store import MemGASConfig, MemoryStore
from suite.config import load_config
from suite.encoders import load_encoder
from suite.io import atomic_write_bytes, atomic_write_json, read_json
from suite.provenance import provenance, start_stamp


def _wchar() -> int:
    with open("/proc/self/io", encoding="ascii") as f:
        return int(next(line for line in f if line.startswith("wchar")).split()[1])


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def query_latency(store: MemoryStore, qs: list[str], methods: dict, user: str = "u") -> dict:
    """{configuration: {"p50", "p95"}} ms of `store.search` (limit 5) over the queries; the first
    query, which rebuilds the BM25 / graph caches after adds, is not timed."""
    lat = {}
    for name, rc in methods.items():
        store.search(qs[0], user, 5, rc)
        ts = []
        for q in qs:
            t = time.perf_counter()
            store.search(q, user, 5, rc)
            ts.append((time.perf_counter() - t) * 1000)
        lat[name] = {"p50": float(np.percentile(ts, 50)), "p95": float(np.percentile(ts, 95))}
    return lat


def _best_memory(best: str) -> MemGASConfig:
    p = Path(best or BEST_LOCOMO)
    return load_config(MemGASJobConfig, p).memgas


class _Primed:
    """The real encoder behind a table of vectors this benchmark's `--preencode` already computed:
    what the table holds is not encoded again (a resumed run skips the hour of encoding it did)."""

    def __init__(self, encoder):
        self.encoder, self.name, self.dim = encoder, encoder.name, encoder.dim
        self.known: dict[bytes, np.ndarray] = {}

    @staticmethod
    def key(text: str) -> bytes:  # the store's cache key, as bytes for the saved arrays
        return CachedEncoder.key(text).encode()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        miss = [t for t in dict.fromkeys(texts) if self.key(t) not in self.known]
        if miss:
            self.known.update(zip(map(self.key, miss), self.encoder.encode(miss, batch_size, progress)))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.known[self.key(t)] for t in texts])


def _preencode(primed: _Primed, todo: list[str], folder: Path, chunk: int = 64 * 40) -> dict:
    """Encode `todo` in chunks, each saved atomically to `folder` (keys + vectors, no pickle) with its
    encoding seconds; chunks already there are loaded instead. Texts are sorted by length first, so a
    batch pads little. Returns the throughput over all chunks, resumed ones included."""
    folder.mkdir(parents=True, exist_ok=True)
    secs, loaded = 0.0, 0
    saved = sorted(folder.glob("chunk_*.npz"))
    for f in saved:
        with np.load(f, allow_pickle=False) as z:
            primed.known.update(zip(z["keys"].tolist(), z["vecs"]))
            secs += float(z["seconds"])
            loaded += len(z["keys"])
    rest = sorted((t for t in todo if primed.key(t) not in primed.known), key=len)
    start = 1 + max((int(f.stem.split("_")[1]) for f in saved), default=-1)
    for i in tqdm(range(0, len(rest), chunk), desc="encoding", unit="chunk"):
        part = rest[i : i + chunk]
        t0 = time.perf_counter()
        vecs = primed.encoder.encode(part, batch_size=64).astype(np.float32)
        dt = time.perf_counter() - t0
        buf = io.BytesIO()
        keys = np.asarray([primed.key(t) for t in part], dtype="S40")
        np.savez(buf, keys=keys, vecs=vecs, seconds=np.float64(dt))
        atomic_write_bytes(folder / f"chunk_{start + i // chunk:05d}.npz", buf.getvalue())
        primed.known.update(zip(keys.tolist(), vecs))
        secs += dt
    n = loaded + len(rest)
    return {"texts": n, "seconds": secs, "texts_per_s": n / max(secs, 1e-9), "batch_size": 64, "sorted_by_length": True}


def grow(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    convs = load_locomo(resolve_data(MemGASJobConfig()))
    pool = [s for c in convs for s in c.sessions]
    turns = [t for s in pool for t in s.turns]
    sizes = [len(s.turns) for s in pool]

    def session(n: int) -> Session:
        rng = np.random.default_rng(n)
        picked = rng.choice(len(turns), size=sizes[n % len(sizes)], replace=False)
        sid = f"m{n}"
        return Session(
            sid, [replace(turns[i], turn_id=f"{sid}:{j}") for j, i in enumerate(picked)], pool[n % len(pool)].date
        )

    qs = [q.question for c in convs for q in c.questions][: a.queries]
    primed = _Primed(load_encoder(a.encoder))
    mcfg = replace(_best_memory(a.best), encoder=a.encoder)
    store = MemoryStore.open(out / "store.sqlite", mcfg, encoder=primed, verify=False)
    methods = {"memgas": load_best(a.best), "memgas_paper": paper_config()}
    store.encoder.encode(qs)  # query encoding excluded from the timings
    prev = read_json(out / "scaling.json") if (out / "scaling.json").exists() else {}
    n0 = len(store.users["u"].sessions) if "u" in store.users else 0
    encoding = prev.get("encoding")
    if a.preencode:  # every text of the sessions to come, encoded in large batches before timing
        texts = []
        for k in tqdm(range(n0, a.sessions), desc="units", unit="s"):
            by = store.units.build(session(k)).by_granularity()
            texts += [t for g in ("session", "turn", "summary", "keywords") for t in by[g]]
        todo = list(dict.fromkeys(texts))
        encoding = {**_preencode(primed, todo, out / "preencode"), "sessions": a.sessions - n0}
        store.encoder.encode(todo)  # fills the store's cache from the table: no model call
    config = {
        "encoder": a.encoder,
        "sessions": a.sessions,
        "session_source": "locomo turns drawn at random, seed = n",
        "queries": len(qs),
        "best": a.best or BEST_LOCOMO,
        "memory": asdict(mcfg),
    }
    if prev and prev.get("config") != config:
        raise SystemExit(f"{out}/scaling.json was made with another configuration; use another --out")
    rows = prev.get("rows", [])
    n = len(store.users["u"].sessions) if "u" in store.users else 0
    marks = sorted({m for m in (100, 300, 1000, 3000, 10000, 30000, 100000, a.sessions) if n < m <= a.sessions})
    bar = tqdm(total=a.sessions, initial=n, desc="sessions", unit="s")
    for m in marks:
        t0, first = time.perf_counter(), n
        writes = []
        while n < m:
            s = session(n)
            w0 = _wchar()
            store.add(s, "u", s.session_id, s.date)
            if m - n <= 50:
                writes.append(_wchar() - w0)
            n += 1
            bar.update(1)
        step_s = time.perf_counter() - t0
        mem = store.users["u"]
        lat = query_latency(store, qs, methods)
        disk = store.disk_bytes()
        rows.append(
            {
                "sessions": n,
                "nodes": len(mem.rows),
                "edges": len(mem.edges),
                "ingest_s_per_session": step_s / max(1, n - first),
                "ingest_s_total": sum(r.get("step_s", 0) for r in rows) + step_s,
                "step_s": step_s,
                "ingest_sessions_per_s_recent": (n - first) / max(step_s, 1e-9),
                "query_ms_p50": {k: v["p50"] for k, v in lat.items()},
                "query_ms_p95": {k: v["p95"] for k, v in lat.items()},
                "disk_bytes": disk,
                "disk_bytes_per_session": disk / n,
                "add_write_bytes_median": float(np.median(writes)) if writes else None,
                "add_write_bytes_max": int(max(writes)) if writes else None,
                "add_write_share_max": (max(writes) / disk) if writes else None,
                "peak_rss_mb": _rss_mb(),
                "ann_association": mcfg.association.uses_ann(sum(len(mem.nodes_of(g)) for g in mcfg.association.pool)),
            }
        )
        r = rows[-1]
        tqdm.write(
            f"{n:>7,} sessions {r['nodes']:>9,} nodes  {r['ingest_s_per_session'] * 1000:7.1f} ms/session  "
            f"query p50 memgas {lat['memgas']['p50']:7.1f} ms (p95 {lat['memgas']['p95']:.1f})  "
            f"paper {lat['memgas_paper']['p50']:7.1f} ms  disk {disk / n:,.0f} B/session  "
            f"add writes {r['add_write_share_max'] or 0:.4%} of the store  rss {r['peak_rss_mb']:,.0f} MB"
        )
        atomic_write_json(
            out / "scaling.json",
            {
                **config,
                "config": config,
                "memgas_config": a.best or BEST_LOCOMO,
                "rows": rows,
                "encoding": encoding,
                "provenance": provenance(config, {"locomo": resolve_data(MemGASJobConfig())}),
            },
        )
    bar.close()
    print(f"scaling: {out / 'scaling.json'}")


def recall(a) -> None:
    out = Path(a.out)
    convs = load_locomo(resolve_data(MemGASJobConfig()))
    enc = load_encoder(a.encoder)
    base = replace(_best_memory(a.best), encoder=a.encoder)
    rc = load_best(a.best)
    paths = {
        "exact": (replace(base, association=replace(base.association, index="exact")), replace(rc, ppr="full")),
        "scalable": (replace(base, association=replace(base.association, index="ann")), replace(rc, ppr="local")),
    }
    per_q = {k: [] for k in paths}
    agree = []
    first = None
    for conv in tqdm(convs, desc="conversations"):
        rankings = {}
        for k, (mcfg, r) in paths.items():
            st = MemoryStore(mcfg, encoder=first.encoder if first else enc, units=first.units if first else None)
            first = first or st
            for s in conv.sessions:
                st.add(s, conv.conv_id, s.session_id, s.date)
            mem = st.users[conv.conv_id]
            corpus = [s["session_id"] for s in mem.sessions]
            rankings[k] = []
            for q in conv.questions:
                if not q.gold_sessions:
                    continue
                res = st.search(q.question, conv.conv_id, len(corpus), r)["results"]
                ranked = [x["session_id"] for x in res]
                rankings[k].append(ranked[:5])
                per_q[k].append(retrieval_metrics(ranked, q.gold_sessions, corpus)["recall_all@5"])
        agree += [len(set(x) & set(y)) / 5 for x, y in zip(rankings["exact"], rankings["scalable"])]
    ex, sc = np.asarray(per_q["exact"]), np.asarray(per_q["scalable"])
    res = {
        "benchmark": "locomo",
        "conversations": len(convs),
        "questions": len(ex),
        "metric": "recall_all@5",
        "memgas_config": a.best or BEST_LOCOMO,
        "exact": float(ex.mean()),
        "scalable": float(sc.mean()),
        "difference": float(sc.mean() - ex.mean()),
        "questions_changed": int((ex != sc).sum()),
        "top5_agreement": float(np.mean(agree)),
        "target": "within 0.005 of the exact pipeline",
        "met": bool(abs(sc.mean() - ex.mean()) <= 0.005),
        "provenance": provenance(
            {"encoder": a.encoder, "best": a.best or BEST_LOCOMO}, {"locomo": resolve_data(MemGASJobConfig())}
        ),
    }
    atomic_write_json(out / "recall.json", res)
    print({k: v for k, v in res.items() if k != "provenance"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--encoder", default="hashing")
    ap.add_argument("--best", default="", help="best_config.yaml of a MemGAS sweep (default: the committed LoCoMo one)")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--recall", action="store_true", help="LoCoMo recall of the scalable path against the exact one")
    ap.add_argument(
        "--preencode",
        action="store_true",
        help="encode every session's texts in large batches before growing (ingest then excludes the encoder; "
        "its throughput is reported apart): a real encoder on CPU otherwise dominates every add",
    )
    a = ap.parse_args()
    start_stamp()  # the commit and code hash the numbers are claimed for (compared again at the end)
    (recall if a.recall else grow)(a)


if __name__ == "__main__":
    main()
