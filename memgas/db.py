"""The durable MemGAS store: one SQLite file holding every user's sessions, nodes, vectors, edges,
metadata and history, where every `add` / `update` / `delete` is its own transaction.

    store = MemoryStore.open("mem.sqlite", MemGASConfig(), encoder=enc)   # create or open
    store.add(messages, user_id="alice")          # commits only this session's rows
    store.delete(sid, user_id="alice")            # commits, then purges the bytes (checkpoint + truncate)
    store.compact()                               # VACUUM: files shrink after deletes; returns what it did
    python -m memgas.tools migrate OLD_FOLDER NEW.sqlite     # a folder store (memgas-store/1) -> SQLite
    python -m memgas.tools info mem.sqlite

Why SQLite: crash-safe atomic commits (WAL: readers never see half a commit, a killed writer leaves
the old or the new state), several processes reading and writing one file with the database's own
locks (each add is one `BEGIN IMMEDIATE` transaction, so no writer can lose another's add), no
server, in the standard library, and `secure_delete` overwrites what a delete removes. A delete is
followed by a truncating checkpoint, so the text is in neither the main file nor the WAL when it
returns (`forget`); a reader's snapshot that blocks it past a bound raises `ForgettingPending`. Its limit:
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
    vec BLOB NOT NULL, floor REAL, PRIMARY KEY (user_id, key));
CREATE INDEX IF NOT EXISTS nodes_by_session ON nodes (user_id, session_id);
CREATE TABLE IF NOT EXISTS edges (user_id TEXT NOT NULL, a INTEGER NOT NULL, b INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS edges_a ON edges (user_id, a);
CREATE INDEX IF NOT EXISTS edges_b ON edges (user_id, b);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, event TEXT NOT NULL,
    session_id TEXT, at TEXT NOT NULL, detail TEXT);
"""
# columns added after memgas-sqlite/1 first shipped: (table, column, type), added to older files on open
ADDED_COLUMNS = (("nodes", "floor", "REAL"), ("history", "detail", "TEXT"))


class Database:
    """The SQL side of a durable store; `memgas.store.MemoryStore` keeps the in-memory graph in step."""

    def __init__(self, path: str | Path, timeout_s: float = 600.0):
        self.path = Path(path)
        self.timeout_s = timeout_s
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writers)
            self.con = sqlite3.connect(str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
            mode = self.con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":  # e.g. a file system without shared memory
                raise self.error(f"cannot use write-ahead logging (journal_mode stayed {mode!r})")
            # after a checkpoint the WAL is cut back to at most this many bytes (it never keeps growing)
            self.con.execute("PRAGMA journal_size_limit=1048576")
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
                for table, col, typ in ADDED_COLUMNS:
                    if col not in {r[1] for r in con.execute(f"PRAGMA table_info({table})")}:
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {col} {typ}")
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
        keys, gran, owner, vecs, floors = [], [], [], [], []
        for key, sid, g, blob, fl in con.execute(
            "SELECT key, session_id, gran, vec, floor FROM nodes WHERE user_id = ? ORDER BY key", (uid,)
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
            floors.append(float("nan") if fl is None else float(fl))
        kpos = {k: i for i, k in enumerate(keys)}
        edges = []
        # by new node, then insertion: the order `Memory.add` made them in, also after a re-association
        for a, b in con.execute("SELECT a, b FROM edges WHERE user_id = ? ORDER BY a, rowid", (uid,)):
            if a not in kpos or b not in kpos:
                raise self.error(
                    f"edge ({a}, {b}) names a node that is not stored", f"table edges, user {uid!r}", "a/b"
                )
            edges.append((kpos[a], kpos[b]))
        emb = np.stack(vecs) if vecs else np.zeros((0, dim), np.float32)
        return {
            "sessions": sess,
            "keys": keys,
            "gran": gran,
            "owner": owner,
            "emb": emb,
            "edges": edges,
            "floors": floors,
        }

    def read_session_nodes(self, con, uid: str, sid: str, dim: int) -> tuple | None:
        """One session as another process added it: (session, keys, granularities, vectors, edges by
        key, floors)."""
        row = con.execute("SELECT * FROM sessions WHERE user_id = ? AND session_id = ?", (uid, sid)).fetchone()
        if row is None:
            return None
        rows = con.execute(
            "SELECT key, gran, vec, floor FROM nodes WHERE user_id = ? AND session_id = ? ORDER BY key", (uid, sid)
        ).fetchall()
        keys = [int(r[0]) for r in rows]
        vecs = np.stack([self._vec(r[2], dim, uid, r[0]) for r in rows]) if rows else np.zeros((0, dim), np.float32)
        floors = [float("nan") if r[3] is None else float(r[3]) for r in rows]
        lo, hi = (min(keys), max(keys)) if keys else (0, -1)  # a session's keys are one contiguous range
        edges = con.execute(
            "SELECT a, b FROM edges WHERE user_id = ? AND a BETWEEN ? AND ? ORDER BY a, rowid", (uid, lo, hi)
        ).fetchall()
        edges = [(int(a), int(b)) for a, b in edges]
        return self._session(row), keys, [r[1] for r in rows], vecs, edges, floors

    def history(self, con, uid: str) -> list[dict]:
        out = []
        for e, s, at, detail in con.execute(
            "SELECT event, session_id, at, detail FROM history WHERE user_id = ? ORDER BY seq", (uid,)
        ):
            try:
                extra = json.loads(detail) if detail else {}
            except ValueError:
                raise self.error("unreadable JSON", f"table history, user {uid!r}", "detail") from None
            out.append({"event": e, "session_id": s, "at": at, **extra})
        return out

    # ---------------------------------------------------------------------------------- writes
    def insert_session(
        self, con, uid: str, session: dict, pos: int, keys, gran, vecs: np.ndarray, edges, floors
    ) -> None:
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
            "INSERT INTO nodes (user_id, key, session_id, gran, vec, floor) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (uid, int(k), session["session_id"], g, np.asarray(v, np.float32).tobytes(), _real(f))
                for k, g, v, f in zip(keys, gran, vecs, floors)
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

    def rewrite_association(self, con, uid: str, redone: list[dict]) -> None:
        """The re-associated nodes' edges and floors (memgas.forget), replacing what they had."""
        for r in redone:
            # exactly the redone nodes' edges (memgas.forget redoes nodes, not always whole sessions)
            con.executemany("DELETE FROM edges WHERE user_id = ? AND a = ?", [(uid, int(k)) for k in r["keys"]])
            con.executemany("INSERT INTO edges VALUES (?, ?, ?)", [(uid, int(a), int(b)) for a, b in r["edges"]])
            con.executemany(
                "UPDATE nodes SET floor = ? WHERE user_id = ? AND key = ?",
                [(_real(f), uid, int(k)) for k, f in r["floors"]],
            )

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

    def log(self, con, uid: str, event: str, sid: str | None, at: str, detail: dict | None = None) -> int:
        return int(
            con.execute(
                "INSERT INTO history (user_id, event, session_id, at, detail) VALUES (?, ?, ?, ?, ?)",
                (uid, event, sid, at, json.dumps(detail) if detail else None),
            ).lastrowid
        )

    def _bounded(self, timeout_s: float, sql: str):
        """Run `sql` waiting at most `timeout_s` for other connections (not the store-wide 600 s)."""
        self.con.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        try:
            return self.con.execute(sql).fetchone()
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                return (1, -1, -1)
            raise
        finally:
            self.con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")

    def forget(self, timeout_s: float, what: str) -> dict:
        """After a delete committed: copy the WAL (whose frames hold the deleted rows as they were
        added) into the main file, where `secure_delete` has zeroed them, and cut the WAL to 0 bytes.
        Raises `ForgettingPending` when another connection's snapshot still needs those frames after
        `timeout_s`: the bytes are then still on disk, so the caller must not report success."""
        from memgas.memory import ForgettingPending

        busy, log, done = self._bounded(timeout_s, "PRAGMA wal_checkpoint(TRUNCATE)")
        wal = Path(f"{self.path}-wal")
        left = wal.stat().st_size if wal.exists() else 0
        if busy or left:
            raise ForgettingPending(
                f"{self.path}: {what} is committed (no search returns it) but its bytes are still in the "
                f"write-ahead log ({left} bytes): another connection's read snapshot blocked the checkpoint "
                f"for {timeout_s:g} s. Call compact() once that reader has finished."
            )
        return {"checkpointed_frames": int(done), "wal_bytes": 0}

    def compact(self, timeout_s: float) -> dict:
        """Purge and shrink: checkpoint + truncate the WAL, VACUUM (free pages back to the file
        system), checkpoint + truncate again. Returns what it did; raises `StoreError` when another
        connection blocked it for `timeout_s` (nothing is reported as done that was not)."""
        from memgas.memory import StoreError

        before = self.disk_bytes()
        self.forget(timeout_s, "compact()")
        try:
            self.con.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self.con.execute("VACUUM")
        except sqlite3.OperationalError as e:
            raise StoreError(f"{self.path}: compact() could not VACUUM within {timeout_s:g} s ({e})") from None
        finally:
            self.con.execute(f"PRAGMA busy_timeout = {int(self.timeout_s * 1000)}")
        self.forget(timeout_s, "compact()")
        return {"bytes_before": before, "bytes_after": self.disk_bytes(), "vacuumed": True, "wal_bytes": 0}

    def backup(self, dest: str | Path) -> None:
        """A consistent single-file copy (e.g. to ship to object storage), taken while writers run."""
        self.con.execute("VACUUM INTO ?", (str(dest),))

    def disk_bytes(self) -> int:
        return sum(
            p.stat().st_size for p in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")) if p.exists()
        )


def _real(f) -> float | None:
    """A floor as SQLite stores it: NaN (unknown) as NULL; ±inf are valid REALs."""
    f = float(f)
    return None if f != f else f
