"""The cost of forgetting: `delete` on one user's durable memory of N sessions, exact (re-associating
the later sessions that had the deleted nodes among their candidates, memgas.forget) and cheap
(`exact=False`), for sessions early, in the middle and late in the memory. Each delete includes
its commit and the truncating checkpoint that purges the bytes.

    python benchmarks/store_delete.py --out runs/bench_store_delete [--sessions 1000 10000]

Hashing encoder (384-d), sessions grown through the plain API once per size and reused
(`OUT/store_N.sqlite`); every measurement runs on a fresh `backup()` copy, so exact and cheap see
the same memory. Target (issue #32): an exact delete at 10,000 sessions finishes under 5 s.
Writes OUT/store_delete.json with provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tqdm import tqdm  # noqa: E402

from memgas.store import MemGASConfig, MemoryStore  # noqa: E402
from suite.encoders import HashingEncoder  # noqa: E402
from suite.io import atomic_write_json  # noqa: E402
from suite.provenance import provenance, start_stamp  # noqa: E402

DIM = 384
WORDS = (
    "alps bread bank dog vet hike oven loan walk cake rope snow rent yeast leash trail salary crust fetch summit "
    "flour mortgage kennel glacier dough budget puppy ridge starter interest collar lisbon ferry tram museum"
).split()


def _text(i: int) -> list[dict]:
    w = [WORDS[(i * k + k * k) % len(WORDS)] for k in range(1, 7)]
    return [
        {"role": "user", "content": f"Day {i}: about the {w[0]}, the {w[1]} and the {w[2]}."},
        {"role": "assistant", "content": f"And the {w[3]}? You said the {w[4]} mattered, and the {w[5]}."},
    ]


def grow(path: Path, n: int) -> None:
    st = MemoryStore.open(path, MemGASConfig(encoder="hashing"), encoder=HashingEncoder(DIM))
    have = len(st.get_all("u"))
    for i in tqdm(range(have, n), desc=f"grow {n}", disable=have >= n, mininterval=10):
        st.add(_text(i), "u", session_id=f"s{i}")
    st.close()


def one(src: Path, tmp: Path, sid: str, exact: bool) -> dict:
    st = MemoryStore.open(src, encoder=HashingEncoder(DIM))
    copy = tmp / f"copy-{sid}-{exact}.sqlite"
    for p in tmp.glob(f"{copy.name}*"):
        p.unlink()
    st.backup(copy)
    st.close()
    st = MemoryStore.open(copy, encoder=HashingEncoder(DIM))
    st.get_all("u")  # load the user first: the delete is timed, not the first read
    t0 = time.perf_counter()
    st.delete(sid, "u", exact=exact)
    dt = time.perf_counter() - t0
    h = st.history("u")[-1]
    st.close()
    for p in tmp.glob(f"{copy.name}*"):
        p.unlink()
    return {
        "session": sid,
        "exact": exact,
        "seconds": dt,
        "reassociated": h.get("reassociated", 0),
        "reassociated_nodes": h.get("reassociated_nodes", 0),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    a = ap.parse_args()
    start_stamp()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in a.sessions:
        path = out / f"store_{n}.sqlite"
        grow(path, n)
        for frac in (0.1, 0.5, 0.9):
            sid = f"s{int(frac * n)}"
            for exact in (True, False):
                rows.append({"sessions": n, "position": frac, **one(path, out, sid, exact)})
                print(json.dumps(rows[-1]), flush=True)
    worst = max((r["seconds"] for r in rows if r["exact"] and r["sessions"] == 10000), default=None)
    config = {"sessions": a.sessions, "encoder": f"hashing-{DIM}", "positions": [0.1, 0.5, 0.9]}
    doc = {
        "config": config,
        "rows": rows,
        "target": "exact delete at 10,000 sessions < 5 s",
        "met": None if worst is None else worst < 5.0,
        "provenance": provenance(config, {}),
    }
    atomic_write_json(out / "store_delete.json", doc)
    verdict = "not run" if worst is None else ("met" if doc["met"] else "MISSED")
    print(f"{out / 'store_delete.json'}: target {doc['target']}: {verdict}")


if __name__ == "__main__":
    main()
