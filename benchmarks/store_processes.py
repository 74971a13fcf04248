"""Several *processes* sharing one MemGAS store folder: writers do load → add → save through
`MemoryStore.transaction` (inter-process lock), readers `load` in a loop. Counts lost adds (target 0)
and reader errors (target 0), and reports throughput and lock-wait latency.

    python benchmarks/store_processes.py --out runs/bench_store_processes [--writers 4] [--adds 20] [--readers 2]

Uses the hashing encoder so the figures measure the store and its lock, not the encoder. Also runs
the same writers *without* the transaction (plain load → add → save): a save over a store another
writer saved since is refused (`StoreError`), and the writer reloads and adds again; the refusals are
counted as conflicts.
Writes OUT/store_processes.json.
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
from memgas.store import MemGASConfig, MemoryStore, StoreError
from suite.encoders import HashingEncoder
from suite.io import atomic_write_json


def _cfg():
    return MemGASConfig(encoder="hashing", association=AssociationConfig(start_session=1, mem_threshold=10))


def writer(path: str, w: int, n: int, locked: bool, q) -> None:
    waits, conflicts = [], []
    for i in range(n):
        text = f"writer {w} note {i}: a walk by the river, topic {i % 5}"
        t0 = time.perf_counter()
        if locked:
            with MemoryStore.transaction(path, _cfg(), encoder=HashingEncoder()) as st:
                waits.append(time.perf_counter() - t0)
                st.add(text, f"user{w % 3}", session_id=f"w{w}-{i}")
        else:  # the plain API: a save over a newer store is refused, so reload and add again
            while True:
                st = MemoryStore.load(path, encoder=HashingEncoder())
                st.add(text, f"user{w % 3}", session_id=f"w{w}-{i}")
                try:
                    st.save(path)
                    break
                except StoreError:
                    conflicts.append(i)
    q.put(("writer", waits))
    q.put(("conflicts", len(conflicts)))


def reader(path: str, seconds: float, q) -> None:
    loads = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            MemoryStore.load(path, encoder=HashingEncoder())
            loads += 1
        except Exception:  # noqa: BLE001 - counted
            errors += 1
    q.put(("reader", (loads, errors)))


def trial(out: Path, writers: int, adds: int, readers: int, locked: bool) -> dict:
    import numpy as np

    path = out / ("store_locked" if locked else "store_unlocked")
    MemoryStore(_cfg(), encoder=HashingEncoder()).save(path)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    t0 = time.perf_counter()
    ws = [ctx.Process(target=writer, args=(str(path), w, adds, locked, q)) for w in range(writers)]
    for p in ws:
        p.start()
    rs = [ctx.Process(target=reader, args=(str(path), 5.0, q)) for _ in range(readers)]
    for p in rs:
        p.start()
    for p in ws + rs:
        p.join()
    wall = time.perf_counter() - t0
    got = [q.get() for _ in ws + rs + ws]  # writers send their waits and their conflicts
    waits = [x for kind, v in got if kind == "writer" for x in v]
    loads = sum(v[0] for kind, v in got if kind == "reader")
    errors = sum(v[1] for kind, v in got if kind == "reader")
    st = MemoryStore.load(path, encoder=HashingEncoder())
    kept = {s["session_id"] for m in st.users.values() for s in m.sessions}
    res = {
        "locked": locked,
        "writers": writers,
        "adds_per_writer": adds,
        "readers": readers,
        "adds_expected": writers * adds,
        "adds_kept": len(kept),
        "adds_lost": writers * adds - len(kept),
        "reader_loads": loads,
        "reader_errors": errors,
        "save_conflicts": sum(v for kind, v in got if kind == "conflicts"),
        "wall_s": wall,
        "adds_per_s": writers * adds / wall,
    }
    if waits:
        a = np.asarray(waits) * 1000
        res["lock_wait_ms"] = {
            "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)),
            "max": float(a.max()),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--adds", type=int, default=20)
    ap.add_argument("--readers", type=int, default=2)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {
        "locked": trial(out, a.writers, a.adds, a.readers, True),
        "unlocked": trial(out, a.writers, a.adds, a.readers, False),
    }
    atomic_write_json(out / "store_processes.json", res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
