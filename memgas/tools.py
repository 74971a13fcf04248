"""The durable store's tools: migrate a folder store into SQLite, info, compact.

python -m memgas.tools migrate OLD_FOLDER NEW.sqlite
python -m memgas.tools info mem.sqlite
python -m memgas.tools compact mem.sqlite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from memgas.db import Database
from memgas.memory import StoreError
from memgas.store import MemoryStore


def migrate(src: str | Path, dest: str | Path, encoder=None) -> Path:
    """Copy a folder store (memgas-store/1, checksums verified) into a new SQLite store at `dest`:
    same users, sessions, nodes, vectors, edges and history; the folder is left as it was."""
    dest = Path(dest)
    if dest.exists():
        raise StoreError(f"{dest}: exists; migrate writes a new store and never overwrites one")
    old = MemoryStore.load(src, encoder=encoder)
    tmp = dest.with_name(f".{dest.name}.migrating")
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        p.unlink(missing_ok=True)
    new = MemoryStore.open(tmp, old.cfg, encoder=old.encoder)
    with new._db.write() as con:
        for uid, mem in sorted(old.users.items()):
            # nodes and edges grouped by session once (an edge belongs to the session of its new node `a`)
            nodes_of = [[] for _ in mem.sessions]
            for j, i in enumerate(mem.node_sess_list):
                nodes_of[i].append(j)
            edges_of = [[] for _ in mem.sessions]
            for a, b in mem.edges:
                edges_of[mem.node_sess_list[a]].append((mem.node_keys[a], mem.node_keys[b]))
            for i, s in enumerate(mem.sessions):
                idx = np.asarray(nodes_of[i], dtype=np.int64)
                keys, gran = [mem.node_keys[j] for j in idx], [mem.node_gran[j] for j in idx]
                floors = [mem.node_floor[j] for j in idx]
                new._db.insert_session(con, uid, s, i, keys, gran, mem.rows[idx], edges_of[i], floors)
            for e in mem.history:
                new._db.log(con, uid, e.get("event", "add"), e.get("session_id"), e.get("at", ""))
            new._db.log(con, uid, "migrate", None, "")
    new.close()
    tmp.rename(dest)  # the new store appears complete or not at all
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m memgas.tools", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("migrate", help="copy a folder store into a new SQLite store")
    m.add_argument("src")
    m.add_argument("dest")
    i = sub.add_parser("info", help="users, sessions, nodes, edges and bytes of a SQLite store")
    i.add_argument("path")
    c = sub.add_parser("compact", help="purge the WAL and VACUUM a store so deleted data leaves the file")
    c.add_argument("path")
    c.add_argument("--timeout-s", type=float, default=10.0, help="wait at most this long for other connections")
    a = ap.parse_args(argv)
    from suite.encoders import load_encoder

    try:
        if a.cmd == "migrate":
            man = json.loads((Path(a.src) / "manifest.json").read_text(encoding="utf-8"))
            migrate(a.src, a.dest, encoder=load_encoder(man.get("config", {}).get("encoder", "minilm")))
            print(f"migrated {a.src} -> {a.dest}")
        else:
            if not Path(a.path).is_file():
                raise StoreError(f"{a.path}: no such store file")
            db = Database(a.path)
            meta = db.initialise({}) if Path(a.path).exists() else None
            if a.cmd == "compact":
                done = db.compact(a.timeout_s)  # raises (exit 2) when a reader blocked it
                print(f"{a.path}: {done['bytes_before']:,} -> {done['bytes_after']:,} bytes")
            else:
                with db.read() as con:
                    counts = {
                        t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                        for t in ("sessions", "nodes", "edges")
                    }  # noqa: S608
                    users = len(db.user_ids(con))
                print(
                    json.dumps(
                        {"format": meta and meta.get("format"), "users": users, **counts, "bytes": db.disk_bytes()}
                    )
                )
    except (StoreError, OSError, ValueError) as e:
        print(f"Store error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
