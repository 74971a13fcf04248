"""The durable MemGAS store: one SQLite file holding every user's sessions, nodes, vectors, edges,
metadata and history, where every `add` / `update` / `delete` is its own transaction.

    store = MemoryStore.open("mem.sqlite", MemGASConfig(), encoder=enc)   # create or open
    store.add(messages, user_id="alice")          # commits only this session's rows
    store.compact()                               # VACUUM: files shrink after deletes
    python -m memgas.tools migrate OLD_FOLDER NEW.sqlite     # a folder store (memgas-store/1) -> SQLite
    python -m memgas.tools info mem.sqlite

Why SQLite: crash-safe atomic commits (WAL: readers never see half a commit, a killed writer leaves
the old or the new state), several processes reading and writing one file with the database's own
locks (each add is one `BEGIN IMMEDIATE` transaction, so no writer can lose another's add), no
server, in the standard library, and `secure_delete` overwrites what a delete removes. Its limit:
WAL needs one machine's shared memory, so a file on NFS or object storage is not safe for
concurrent writers — a cluster shares a memory through the store's server (memgas.serve), and a
single-writer copy can be shipped to object storage with `VACUUM INTO` (`backup`). LanceDB would
live on object storage but its deletes are soft until compaction and concurrent writers retry on
conflict; DuckDB allows one writing process. ANN search is not delegated to the database: the HNSW
index (memgas.ann) is rebuilt from the stored vectors when a memory is opened, so it can never
disagree with the committed rows.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

import numpy as np

FORMAT = "memgas-sqlite/1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    user_id TEXT NOT NULL, session_id TEXT NOT NULL, pos INTEGER NOT NULL, date TEXT NOT NULL,
    meta TEXT NOT NULL, units TEXT NOT NULL, PRIMARY KEY (user_id, session_id));
CREATE TABLE IF NOT EXISTS nodes (
    user_id TEXT NOT NULL, key INTEGER NOT NULL, session_id TEXT NOT NULL, gran TEXT NOT NULL,
    vec BLOB NOT NULL, PRIMARY KEY (user_id, key));
CREATE INDEX IF NOT EXISTS nodes_by_session ON nodes (user_id, session_id);
CREATE TABLE IF NOT EXISTS edges (user_id TEXT NOT NULL, a INTEGER NOT NULL, b INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS edges_a ON edges (user_id, a);
CREATE INDEX IF NOT EXISTS edges_b ON edges (user_id, b);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, event TEXT NOT NULL,
    session_id TEXT, at TEXT NOT NULL);
"""


class Database:
    """The SQL side of a durable store; `memgas.store.MemoryStore` keeps the in-memory graph in step."""

    def __init__(self, path: str | Path, timeout_s: float = 600.0):
        self.path = Path(path)
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writers)
            self.con = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
            self.con.execute("PRAGMA journal_mode=WAL")
            self.con.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not only a kill
            self.con.execute("PRAGMA secure_delete=ON")  # deleted content is overwritten, not left in free pages
            self.con.execute("PRAGMA foreign_keys=OFF")
        except sqlite3.DatabaseError as e:
            raise self.error(f"cannot open as a SQLite memory store ({e})") from None

    def error(self, problem: str, record=None, field: str | None = None):
        from memgas.memory import StoreError

        where = f"{self.path}" + (f", {record}" if record is not None else "") + (f", field {field!r}" if field else "")
        return StoreError(f"{where}: {problem}")

    def close(self) -> None:
        self.con.close()

    @contextlib.contextmanager
    def write(self):
        """One write transaction; `BEGIN IMMEDIATE` takes the database's write lock first, so two
        writers never interleave (the second waits up to `timeout_s`)."""
        self.con.execute("BEGIN IMMEDIATE")
        try:
            yield self.con
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    @contextlib.contextmanager
    def read(self):
        """A read transaction: one consistent snapshot of committed state (never half a commit)."""
        self.con.execute("BEGIN")
        try:
            yield self.con
        finally:
            self.con.execute("COMMIT")

    # ---------------------------------------------------------------------------------- meta
    def initialise(self, meta: dict) -> dict:
        """Create the schema and write `meta` if the file is new; returns the stored meta."""
        try:
            with self.write() as con:
                for stmt in SCHEMA.strip().split(";"):
                    if stmt.strip():
                        con.execute(stmt)
                have = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if not have:
                    for k, v in {"format": FORMAT, **meta}.items():
                        con.execute("INSERT INTO meta VALUES (?, ?)", (k, json.dumps(v)))
                    have = {k: json.dumps(v) for k, v in {"format": FORMAT, **meta}.items()}
        except sqlite3.DatabaseError as e:
            raise self.error(f"not a usable SQLite memory store ({e})") from None
        try:
            out = {k: json.loads(v) for k, v in have.items()}
        except ValueError:
            raise self.error("unreadable JSON", "table meta", "value") from None
        if out.get("format") != FORMAT:
            raise self.error(f"format {out.get('format')!r}, expected {FORMAT!r}", "table meta", "format")
        return out

    def quick_check(self) -> None:
        rows = self.con.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            raise self.error(f"integrity check failed: {rows[:3]}")

    def last_seq(self, con) -> int:
        return int(con.execute("SELECT COALESCE(MAX(seq), 0) FROM history").fetchone()[0])

    def changes_since(self, con, seq: int) -> list[tuple[int, str, str, str | None]]:
        return con.execute(
            "SELECT seq, user_id, event, session_id FROM history WHERE seq > ? ORDER BY seq", (seq,)
        ).fetchall()

    def user_ids(self, con) -> list[str]:
        return [r[0] for r in con.execute("SELECT DISTINCT user_id FROM sessions ORDER BY user_id")]

    # ---------------------------------------------------------------------------------- reads
    def _session(self, row) -> dict:
        uid, sid, _, date, meta, units = row
        try:
            return {"session_id": sid, "date": date, "units": json.loads(units), "meta": json.loads(meta)}
        except ValueError:
            raise self.error("unreadable JSON", f"table sessions, user {uid!r} session {sid!r}", "units/meta") from None

    def _vec(self, blob, dim: int, uid: str, key: int) -> np.ndarray:
        v = np.frombuffer(blob, dtype=np.float32)
        if len(v) != dim:
            raise self.error(f"{len(v)} floats, expected {dim}", f"table nodes, user {uid!r} key {key}", "vec")
        return v

    def read_user(self, con, uid: str, dim: int) -> dict:
        """Everything of one user, in insertion order: sessions, nodes (keys, granularities,
        owning session positions, vectors), edges as node keys, history."""
        sess = [self._session(r) for r in con.execute("SELECT * FROM sessions WHERE user_id = ? ORDER BY pos", (uid,))]
        pos = {s["session_id"]: i for i, s in enumerate(sess)}
        keys, gran, owner, vecs = [], [], [], []
        for key, sid, g, blob in con.execute(
            "SELECT key, session_id, gran, vec FROM nodes WHERE user_id = ? ORDER BY key", (uid,)
        ):
            if sid not in pos:
                raise self.error(
                    f"belongs to session {sid!r}, which is not stored",
                    f"table nodes, user {uid!r} key {key}",
                    "session_id",
                )
            keys.append(int(key))
            gran.append(g)
            owner.append(pos[sid])
            vecs.append(self._vec(blob, dim, uid, key))
        kpos = {k: i for i, k in enumerate(keys)}
        edges = []
        for a, b in con.execute("SELECT a, b FROM edges WHERE user_id = ? ORDER BY rowid", (uid,)):
            if a not in kpos or b not in kpos:
                raise self.error(
                    f"edge ({a}, {b}) names a node that is not stored", f"table edges, user {uid!r}", "a/b"
                )
            edges.append((kpos[a], kpos[b]))
        emb = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
        return {"sessions": sess, "keys": keys, "gran": gran, "owner": owner, "emb": emb, "edges": edges}

    def read_session_nodes(self, con, uid: str, sid: str, dim: int) -> tuple[dict, list, list, np.ndarray, list]:
        """One session as another process added it: (session, keys, granularities, vectors, edges by key)."""
        row = con.execute("SELECT * FROM sessions WHERE user_id = ? AND session_id = ?", (uid, sid)).fetchone()
        if row is None:
            return None
        rows = con.execute(
            "SELECT key, gran, vec FROM nodes WHERE user_id = ? AND session_id = ? ORDER BY key", (uid, sid)
        ).fetchall()
        keys = [int(k) for k, _, _ in rows]
        vecs = np.stack([self._vec(b, dim, uid, k) for k, _, b in rows]) if rows else np.zeros((0, dim), np.float32)
        lo, hi = (min(keys), max(keys)) if keys else (0, -1)  # a session's keys are one contiguous range
        edges = con.execute(
            "SELECT a, b FROM edges WHERE user_id = ? AND a BETWEEN ? AND ? ORDER BY rowid", (uid, lo, hi)
        ).fetchall()
        return self._session(row), keys, [g for _, g, _ in rows], vecs, [(int(a), int(b)) for a, b in edges]

    def history(self, con, uid: str) -> list[dict]:
        return [
            {"event": e, "session_id": s, "at": at}
            for e, s, at in con.execute(
                "SELECT event, session_id, at FROM history WHERE user_id = ? ORDER BY seq", (uid,)
            )
        ]

    # ---------------------------------------------------------------------------------- writes
    def insert_session(self, con, uid: str, session: dict, pos: int, keys, gran, vecs: np.ndarray, edges) -> None:
        con.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
            (
                uid,
                session["session_id"],
                pos,
                session["date"],
                json.dumps(session["meta"], ensure_ascii=False),
                json.dumps(session["units"], ensure_ascii=False),
            ),
        )
        con.executemany(
            "INSERT INTO nodes VALUES (?, ?, ?, ?, ?)",
            [
                (uid, int(k), session["session_id"], g, np.asarray(v, np.float32).tobytes())
                for k, g, v in zip(keys, gran, vecs)
            ],
        )
        con.executemany("INSERT INTO edges VALUES (?, ?, ?)", [(uid, int(a), int(b)) for a, b in edges])

    def delete_session(self, con, uid: str, sid: str) -> list[int]:
        keys = [
            int(k) for (k,) in con.execute("SELECT key FROM nodes WHERE user_id = ? AND session_id = ?", (uid, sid))
        ]
        con.executemany("DELETE FROM edges WHERE user_id = ? AND (a = ? OR b = ?)", [(uid, k, k) for k in keys])
        con.execute("DELETE FROM nodes WHERE user_id = ? AND session_id = ?", (uid, sid))
        pos = con.execute("SELECT pos FROM sessions WHERE user_id = ? AND session_id = ?", (uid, sid)).fetchone()
        con.execute("DELETE FROM sessions WHERE user_id = ? AND session_id = ?", (uid, sid))
        if pos is not None:  # positions stay dense: later sessions move up one
            con.execute("UPDATE sessions SET pos = pos - 1 WHERE user_id = ? AND pos > ?", (uid, pos[0]))
        return keys

    def delete_user(self, con, uid: str) -> int:
        n = con.execute("SELECT COUNT(*) FROM sessions WHERE user_id = ?", (uid,)).fetchone()[0]
        for t in ("edges", "nodes", "sessions"):
            con.execute(f"DELETE FROM {t} WHERE user_id = ?", (uid,))  # noqa: S608 - fixed table names
        return int(n)

    def set_meta(self, con, uid: str, sid: str, meta: dict) -> None:
        con.execute(
            "UPDATE sessions SET meta = ? WHERE user_id = ? AND session_id = ?",
            (json.dumps(meta, ensure_ascii=False), uid, sid),
        )

    def log(self, con, uid: str, event: str, sid: str | None, at: str) -> int:
        return int(
            con.execute(
                "INSERT INTO history (user_id, event, session_id, at) VALUES (?, ?, ?, ?)", (uid, event, sid, at)
            ).lastrowid
        )

    def compact(self) -> None:
        """Give deleted pages back to the file system: checkpoint the WAL, VACUUM, truncate the WAL."""
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.con.execute("VACUUM")
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def backup(self, dest: str | Path) -> None:
        """A consistent single-file copy (e.g. to ship to object storage), taken while writers run."""
        self.con.execute("VACUUM INTO ?", (str(dest),))

    def disk_bytes(self) -> int:
        return sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
        )
