"""Several *processes* writing one durable MemGAS store (SQLite, `MemoryStore.open`) through the
plain API — each writer opens the store and calls `add` in a loop, nothing else — while readers
search in a loop. Counts lost adds (target 0) and reader errors (target 0) for 2, 4 and 8 writers,
and reports add throughput and add latency (which includes waiting for the database's write lock).

    python benchmarks/store_processes.py --out runs/bench_store_processes [--writers 2 4 8] [--adds 20] [--readers 2]

Uses the hashing encoder so the figures measure the store and its locking, not the encoder.
Writes OUT/store_processes.json (with provenance), rendered by `python -m ray_jobs.report OUT`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # spawned children import this file by path
from memgas.association import AssociationConfig
from memgas.store import MemGASConfig, MemoryStore
from suite.encoders import HashingEncoder
from suite.io import atomic_write_json
from suite.provenance import provenance, start_stamp


def _cfg():
    return MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1, mem_threshold=10))


def writer(path: str, w: int, n: int, q) -> None:
    st = MemoryStore.open(path, encoder=HashingEncoder(), verify=False)
    lat, start = [], time.time()
    for i in range(n):
        t0 = time.perf_counter()
        st.add(f"writer {w} note {i}: a walk by the river, topic {i % 5}", f"user{w % 3}", session_id=f"w{w}-{i}")
        lat.append(time.perf_counter() - t0)
    st.close()
    q.put(("writer", (lat, start, time.time())))


def reader(path: str, stop, q) -> None:
    st = MemoryStore.open(path, encoder=HashingEncoder(), verify=False)
    searches = errors = 0
    while not stop.is_set():
        try:
            st.search("a walk by the river", f"user{searches % 3}", limit=3)
            searches += 1
        except Exception:  # noqa: BLE001 - counted
            errors += 1
    q.put(("reader", (searches, errors)))


def trial(out: Path, writers: int, adds: int, readers: int) -> dict:
    import numpy as np

    path = out / f"store_{writers}w.sqlite"
    for p in out.glob(f"store_{writers}w.sqlite*"):
        p.unlink()
    MemoryStore.open(path, _cfg(), encoder=HashingEncoder()).close()
    ctx = mp.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    rs = [ctx.Process(target=reader, args=(str(path), stop, q)) for _ in range(readers)]
    for p in rs:
        p.start()
    t0 = time.perf_counter()
    ws = [ctx.Process(target=writer, args=(str(path), w, adds, q)) for w in range(writers)]
    for p in ws:
        p.start()
    got = [q.get() for _ in ws]
    for p in ws:
        p.join()
    wall = time.perf_counter() - t0
    stop.set()
    got += [q.get() for _ in rs]
    for p in rs:
        p.join()
    spans = [v for kind, v in got if kind == "writer"]
    lat = np.asarray([x for v in spans for x in v[0]]) * 1000
    adding_s = max(v[2] for v in spans) - min(v[1] for v in spans)  # first add to last, process start-up excluded
    st = MemoryStore.open(path, encoder=HashingEncoder())
    kept = {s["session_id"] for u in st.user_ids() for s in st.get_all(u)}
    expected = {f"w{w}-{i}" for w in range(writers) for i in range(adds)}
    return {
        "writers": writers,
        "adds_per_writer": adds,
        "readers": readers,
        "adds_expected": len(expected),
        "adds_kept": len(kept & expected),
        "adds_lost": len(expected - kept),
        "reader_searches": sum(v[0] for kind, v in got if kind == "reader"),
        "reader_errors": sum(v[1] for kind, v in got if kind == "reader"),
        "wall_s": wall,
        "adds_per_s": len(expected) / adding_s,
        "add_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--writers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--adds", type=int, default=20)
    ap.add_argument("--readers", type=int, default=2)
    a = ap.parse_args()
    start_stamp()  # the commit and code hash the numbers are claimed for (compared again at the end)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"writers": a.writers, "adds": a.adds, "readers": a.readers, "api": "plain (MemoryStore.open + add)"}
    trials = []
    for w in a.writers:
        trials.append(trial(out, w, a.adds, a.readers))
        print(json.dumps(trials[-1]), flush=True)
    res = {
        "config": config,
        "trials": trials,
        "target": "zero adds lost, zero reader errors",
        "met": all(t["adds_lost"] == 0 and t["reader_errors"] == 0 for t in trials),
        "provenance": provenance(config, {}),
    }
    atomic_write_json(out / "store_processes.json", res)
    print(f"{out / 'store_processes.json'}: target {'met' if res['met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
