"""Drive one MemGAS memory store with concurrent adds and searches from several threads for a
bounded time; report throughput, latency percentiles and an end-of-run consistency check.

    python benchmarks/store_load.py --out runs/bench_store_load [--seconds 60] [--writers 2] [--readers 4]

Writers add LoCoMo sessions (ids made unique) to a few users; readers search those users with
LoCoMo questions (only users that already hold sessions). At the end every added session must be
found (each user searched with a limit of
its session count), and a save + load round trip must return identical rankings. Writes
OUT/store_load.json. The store serialises add and search on one lock (a memory's graph is updated
in place), so throughput measures that lock under contention; Python threads share the GIL too.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from memgas.data import load_locomo
from memgas.recipe import MemGASJobConfig, load_best, resolve_data
from memgas.store import MemGASConfig, MemoryStore
from suite.encoders import load_encoder
from suite.io import atomic_write_json
from suite.provenance import provenance, start_stamp


def pct(xs: list[float]) -> dict:
    if not xs:
        return {}
    a = np.asarray(xs) * 1000
    return {
        "n": len(xs),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--best", default="", help="best_config.yaml of a MemGAS sweep (default: the committed LoCoMo one)")
    a = ap.parse_args()
    start_stamp()  # the commit and code hash the numbers are claimed for (compared again at the end)

    convs = load_locomo(resolve_data(MemGASJobConfig()))
    pool = [s for c in convs for s in c.sessions]
    questions = [q.question for c in convs for q in c.questions]
    store = MemoryStore(MemGASConfig(encoder=a.encoder), encoder=load_encoder(a.encoder))
    store.cfg.retrieval = load_best(a.best)
    users = [f"user{i}" for i in range(a.users)]
    added: dict[str, list[str]] = {u: [] for u in users}
    add_lat, search_lat, errors = [], [], []
    stop = time.monotonic() + a.seconds
    counter = iter(range(10**9))
    lock = threading.Lock()

    def writer(seed: int):
        rng = random.Random(seed)
        while time.monotonic() < stop:
            n = next(counter)
            s, u = pool[n % len(pool)], rng.choice(users)
            sid = f"{s.session_id}-{n}"
            t = time.perf_counter()
            try:
                store.add(replace(s, session_id=sid), u, sid, s.date)
            except Exception as e:  # noqa: BLE001 - counted and reported, the load goes on
                errors.append(f"add: {type(e).__name__}: {e}")
                continue
            add_lat.append(time.perf_counter() - t)
            with lock:
                added[u].append(sid)

    def reader(seed: int):
        rng = random.Random(seed)
        while time.monotonic() < stop:
            with lock:
                live = [u for u in users if added[u]]
            if not live:  # searching an empty memory would measure nothing
                time.sleep(0.01)
                continue
            t = time.perf_counter()
            try:
                store.search(rng.choice(questions), rng.choice(live), limit=5)
            except Exception as e:  # noqa: BLE001
                errors.append(f"search: {type(e).__name__}: {e}")
                continue
            search_lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(a.writers)] + [
        threading.Thread(target=reader, args=(100 + i,)) for i in range(a.readers)
    ]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0

    missing = {}
    for u in users:
        if not added[u]:
            continue
        found = {r["session_id"] for r in store.search("anything at all", u, limit=len(added[u]))["results"]}
        lost = sorted(set(added[u]) - found)
        if lost or len(store.users[u].sessions) != len(added[u]):
            missing[u] = lost[:10]
    out = Path(a.out)
    store.save(out / "store", overwrite=True)  # this benchmark's own output
    back = MemoryStore.load(out / "store", encoder=store.encoder)
    back.cfg.retrieval = load_best(a.best)
    same = all(
        [r["session_id"] for r in store.search(q, u, 10)["results"]]
        == [r["session_id"] for r in back.search(q, u, 10)["results"]]
        for q in questions[:20]
        for u in users
        if added[u]
    )
    res = {
        "seconds": wall,
        "writers": a.writers,
        "readers": a.readers,
        "users": a.users,
        "encoder": a.encoder,
        "sessions_added": sum(len(v) for v in added.values()),
        "adds_per_s": len(add_lat) / wall,
        "searches_per_s": len(search_lat) / wall,
        "add_latency": pct(add_lat),
        "search_latency": pct(search_lat),
        "errors": errors[:20],
        "n_errors": len(errors),
        "consistent": not missing and not errors,
        "missing": missing,
        "reload_identical": same,
    }
    res["provenance"] = provenance(vars(a), {"locomo": resolve_data(MemGASJobConfig())})
    atomic_write_json(out / "store_load.json", res)
    print(
        f"{res['sessions_added']} sessions added, {len(search_lat)} searches in {wall:.1f}s "
        f"({res['adds_per_s']:.1f} adds/s, {res['searches_per_s']:.1f} searches/s)"
    )
    print(
        f"add p50/p95/p99 ms: {res['add_latency'].get('p50_ms', 0):.1f}/{res['add_latency'].get('p95_ms', 0):.1f}/"
        f"{res['add_latency'].get('p99_ms', 0):.1f}; search p50/p95/p99 ms: {res['search_latency'].get('p50_ms', 0):.1f}/"  # noqa: E501
        f"{res['search_latency'].get('p95_ms', 0):.1f}/{res['search_latency'].get('p99_ms', 0):.1f}"
    )
    print(
        f"consistent: {res['consistent']} (errors {len(errors)}, users with missing sessions {len(missing)}); "
        f"reload identical: {same}"
    )
    if not res["consistent"] or not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
