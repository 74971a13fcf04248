"""One durable MemGAS store holding many users with modest memories, the case a deployment has:
open time, search and add latency for a warm user (in the user cache) and a cold one (read from the
file on first use), RSS after touching 1,000 distinct users, disk bytes per session.

    python benchmarks/store_tenants.py --out runs/bench_store_tenants [--users 10000] [--sessions 100]

Growth: one template user's `--sessions` sessions are added through the plain API (so units,
vectors, association edges and floors are what `add` writes), then copied in SQL to every other
user (rows, not the API: a million API adds would take hours here and measure nothing this
benchmark reports). All users therefore hold the same texts; the store's work per user (reading
the rows, building the indexes, ranking 100 sessions) is what a user of that size costs. The store
is grown once and reused (`OUT/store.sqlite`, resumable by user count). Hashing encoder (384-d), so
the figures measure the store, not an encoder. Writes OUT/store_tenants.json with provenance.

Targets (issue #32): open < 1 s; warm search p50 < 20 ms; cold search p50 < 200 ms; add p50 < 50 ms;
RSS < 2 GB after 1,000 users.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sqlite3
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402

from memgas.store import MemGASConfig, MemoryStore  # noqa: E402
from suite.encoders import HashingEncoder  # noqa: E402
from suite.io import atomic_write_json  # noqa: E402
from suite.provenance import provenance, start_stamp  # noqa: E402

TOPICS = ["a hike in the alps", "baking bread", "a job interview", "the dog's vet visit", "a trip to Lisbon"]
DIM = 384


def _session(i: int) -> list[dict]:
    t, u = TOPICS[i % 5], TOPICS[(i * 3) % 5]
    return [
        {"role": "user", "content": f"Day {i}: I want to talk about {t}. It went fine, mostly."},
        {"role": "assistant", "content": f"Tell me more about {t}; last time you mentioned {u}."},
        {"role": "user", "content": f"Sure. On {t}: we planned it for weeks, and {u} came up again."},
    ]


def grow(path: Path, users: int, sessions: int) -> float:
    """Returns the seconds spent growing (0 when the store already holds `users` users)."""
    t0 = time.perf_counter()
    st = MemoryStore.open(path, MemGASConfig(encoder="hashing"), encoder=HashingEncoder(DIM))
    if st.get_all("user0") == []:
        for i in range(sessions):
            st.add(_session(i), "user0", session_id=f"s{i}", date=f"2026-01-{1 + i % 28:02d}")
    st.close()
    con = sqlite3.connect(path, isolation_level=None)
    # the copy is the benchmark's set-up, not what it measures: no fsync per transaction (a killed
    # growth still leaves a consistent file: WAL stays on; the last batch may be lost and is redone)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-262144")
    have = con.execute("SELECT COUNT(DISTINCT user_id) FROM sessions").fetchone()[0]
    step = 500
    for lo in range(have, users, step):
        con.execute("BEGIN IMMEDIATE")
        for u in range(lo, min(users, lo + step)):
            uid = f"user{u}"
            con.execute(
                "INSERT INTO sessions SELECT ?, session_id, pos, date, meta, units FROM sessions WHERE user_id='user0'",
                (uid,),
            )
            con.execute(
                "INSERT INTO nodes SELECT ?, key, session_id, gran, vec, floor FROM nodes WHERE user_id='user0'",
                (uid,),
            )
            con.execute("INSERT INTO edges SELECT ?, a, b FROM edges WHERE user_id='user0'", (uid,))
            con.execute(
                "INSERT INTO history (user_id, event, session_id, at, detail) "
                "SELECT ?, event, session_id, at, detail FROM history WHERE user_id='user0'",
                (uid,),
            )
        con.execute("COMMIT")
        print(f"grown: {min(users, lo + step)}/{users} users", flush=True)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return time.perf_counter() - t0 if have < users else 0.0


def _pct(xs) -> dict:
    a = np.asarray(xs) * 1000
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "n": len(a)}


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, users: int, touch: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    rss0 = rss_mb()
    t0 = time.perf_counter()
    st = MemoryStore.open(path, encoder=HashingEncoder(DIM))
    open_s = time.perf_counter() - t0
    warm_user = "user1"
    st.search("warm up", warm_user)
    warm_search = []
    for i in range(50):
        t = time.perf_counter()
        st.search(f"what about {TOPICS[i % 5]}?", warm_user, limit=5)
        warm_search.append(time.perf_counter() - t)
    warm_add = []
    for i in range(20):
        t = time.perf_counter()
        st.add(f"a new note {i} about {TOPICS[i % 5]}", warm_user, session_id=f"bench-warm-{time.time_ns()}-{i}")
        warm_add.append(time.perf_counter() - t)
    cold = rng.sample(range(2, users), min(touch, users - 2))
    cold_search, cold_add = [], []
    for k, u in enumerate(cold):
        uid = f"user{u}"
        t = time.perf_counter()
        if k % 10 == 9:  # every 10th cold user is first touched by an add (the rest by a search)
            st.add(f"a cold note about {TOPICS[k % 5]}", uid, session_id=f"bench-cold-{time.time_ns()}")
            cold_add.append(time.perf_counter() - t)
        else:
            st.search(f"what about {TOPICS[k % 5]}?", uid, limit=5)
            cold_search.append(time.perf_counter() - t)
        if (k + 1) % 200 == 0:
            print(f"touched {k + 1}/{len(cold)} users, rss {rss_mb():.0f} MB", flush=True)
    n_sessions = sqlite3.connect(path).execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    out = {
        "open_s": open_s,
        "warm_search_ms": _pct(warm_search),
        "warm_add_ms": _pct(warm_add),
        "cold_search_ms": _pct(cold_search),
        "cold_add_ms": _pct(cold_add),
        "users_touched": len(cold) + 1,
        "users_in_memory": len(st.users),
        "rss_peak_mb": rss_mb(),
        "rss_before_open_mb": rss0,
        "sessions": int(n_sessions),
        "disk_bytes": st.disk_bytes(),
        "disk_bytes_per_session": st.disk_bytes() / max(1, n_sessions),
    }
    st.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--sessions", type=int, default=100)
    ap.add_argument("--touch", type=int, default=1000, help="distinct cold users touched")
    ap.add_argument("--grow-only", action="store_true", help="grow the store and stop (measure on a quiet machine)")
    a = ap.parse_args()
    start_stamp()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "store.sqlite"
    grow_s = grow(path, a.users, a.sessions)
    if a.grow_only:
        print(f"{path}: grown in {grow_s:.0f} s")
        return
    res = measure(path, a.users, a.touch)
    res["grow_s"] = grow_s
    targets = {
        "open_s < 1": res["open_s"] < 1,
        "warm search p50 < 20 ms": res["warm_search_ms"]["p50"] < 20,
        "cold search p50 < 200 ms": res["cold_search_ms"]["p50"] < 200,
        "add p50 < 50 ms": res["warm_add_ms"]["p50"] < 50,
        "RSS < 2 GB after 1,000 users": res["rss_peak_mb"] < 2048,
    }
    config = {"users": a.users, "sessions_per_user": a.sessions, "touch": a.touch, "encoder": f"hashing-{DIM}"}
    doc = {"config": config, "results": res, "targets": targets, "provenance": provenance(config, {})}
    atomic_write_json(out / "store_tenants.json", doc)
    print(json.dumps(doc["results"], indent=1))
    for k, ok in targets.items():
        print(f"{k}: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
