"""The persistent multi-granularity memory, with the interface users know from mem0:

    store = MemoryStore(MemGASConfig(), encoder=load_encoder("minilm"))
    store.add([{"role": "user", "content": "..."}, ...], user_id="alice")
    store.search("where did I travel?", user_id="alice", limit=3)  # sessions, scores, router weights
    store.add(messages, user_id="alice", agent_id="travel", run_id="r1", metadata={"topic": "trip"})
    store.search("flights", user_id="alice", agent_id="travel", filters={"topic": "trip"})
    store.update(session_id, user_id="alice", metadata={...} or messages=[...])
    store.get(session_id, user_id="alice"); store.get_all(user_id="alice", agent_id=..., filters=...)
    store.delete(session_id, user_id="alice")   # forgets exactly: no byte on disk, no trace in the graph
    store.delete_all(user_id="alice"); store.history(user_id="alice")   # add / delete events
    store.save("mem/"); MemoryStore.load("mem/", encoder=...)        # a folder snapshot
    store = MemoryStore.open("mem.sqlite", cfg, encoder=...)         # the durable store (memgas.db)

Two ways to keep a memory. `MemoryStore.open` is the store for users: one SQLite file, every add /
update / delete its own transaction writing only its rows, any number of processes reading and
writing it through this same API (each add applies the others' commits first, so none is lost),
`compact()` to give deleted space back. The folder snapshot (`save` / `load`) is what evaluations
cache between runs; `python -m memgas.tools migrate FOLDER NEW.sqlite` turns one into the other.

Adding a session embeds its units and associates its nodes with earlier ones (GMM; candidates from an
exact scan in a small memory, from an ANN index in a large one): the graph grows incrementally, never
rebuilt; an add that fails leaves the memory as it was. `save` writes the whole
store into a temp folder and swaps it with the old one (atomic); every file's checksum is in the
manifest, the manifest is sealed with its own checksum, and both are verified on load.

Several processes may share one store folder: `save` holds an exclusive inter-process lock,
`load` a shared one (a reader sees the old or the new store, never a mix), and

    with MemoryStore.transaction("mem/", encoder=enc) as store:   # load → modify → save, locked
        store.add(messages, user_id="alice")

makes load-modify-save one step, so concurrent writers never lose each other's adds. Without it,
every save carries a generation number and a `save` over a store saved by someone else since this
one was loaded is refused (`StoreError`): reload and add again — never a silent overwrite.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from memgas import folder
from memgas.data import Session
from memgas.encoders import CachedEncoder
from memgas.forget import Forgotten, delete_session, unit_texts
from memgas.memory import FORMAT, NODE_GRANULARITIES, ForgettingPending, MemGASConfig, Memory, StoreError, paper_memory
from memgas.retrieval import RetrievalConfig, rank_sessions
from memgas.scopes import _check_id, _check_meta, _now, _public, _to_session, scope
from memgas.tenants import UserCache, memory_from
from memgas.units import SessionUnits, UnitBuilder
from suite.config import from_dict
from suite.encoders import load_encoder
from suite.io import (
    DataError,
    check_text,
)

__all__ = ["FORMAT", "NODE_GRANULARITIES", "ForgettingPending", "MemGASConfig", "Memory", "MemoryStore",
           "StoreError", "paper_memory"]  # fmt: skip


class MemoryStore:
    def __init__(self, cfg: MemGASConfig | None = None, encoder=None, llm=None, units: UnitBuilder | None = None):
        self.cfg = cfg or MemGASConfig()
        self.encoder = (
            encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder or load_encoder(self.cfg.encoder))
        )
        self.units = units or UnitBuilder(llm)  # a shared builder counts LLM fallbacks across stores
        self.users = UserCache()  # a durable store's: loaded on first use, least recently used dropped
        self._lock = threading.RLock()
        self._loaded_from: tuple[Path, int] | None = None  # (store folder, its generation when read)
        self._db = None  # memgas.db.Database when opened with `MemoryStore.open` (every change commits)
        self._seen = 0  # the last history event of the database applied to the in-memory graph
        self.forget_timeout_s = 10.0  # how long a delete waits for readers before ForgettingPending

    # ------------------------------------------------------------------------------- add/search
    def embed_units(self, units: SessionUnits) -> dict[str, np.ndarray]:
        by = units.by_granularity()
        texts = [t for g in ("session", "turn", "summary", "keywords") for t in by[g]]
        e = self.encoder.encode(texts)
        out, i = {}, 0
        for g in ("session", "turn", "summary", "keywords"):
            out[g] = e[i : i + len(by[g])]
            i += len(by[g])
        m = out["turn"].mean(0, keepdims=True)  # the reference's session-level turn node
        plain = self.cfg.turn_mean == "mean" or self.encoder.name == "contriever"
        out["turn_mean"] = m if plain else m / max(float(np.linalg.norm(m)), 1e-12)
        return out

    def add(
        self,
        messages,
        user_id: str,
        session_id: str | None = None,
        date: str = "",
        agent_id: str | None = None,
        run_id: str | None = None,
        metadata: dict | None = None,
    ) -> str:
        """Store one session (a list of {role, content}, a string, or a `Session`) for a user,
        with optional scopes (`agent_id`, `run_id`) and metadata usable as search filters."""
        user_id = _check_id(user_id, "user_id")
        meta = _check_meta(metadata, agent_id, run_id)
        given = (
            session_id if session_id is not None else (messages.session_id if isinstance(messages, Session) else None)
        )
        if given is not None:
            given = _check_id(given, "session_id")
        if not isinstance(date, str):  # e.g. a datetime.date: JSON cannot hold it
            raise DataError("add()", given, "date", f"expected an ISO date string, got {type(date).__name__}")
        check_text("add()", given, "date", date)
        session = _to_session(messages, given or "new", date)
        # LLM calls and encoding touch no shared state: they run outside the lock, so searches
        # are not queued behind them; only the graph update below is serialised.
        units = self.units.build(session)
        emb = self.embed_units(units)
        with self._lock, self._writing() as con:
            mem = self.users.get(user_id) or Memory()
            sid = given if given is not None else uuid.uuid4().hex  # generated: unique across users
            n_edges = len(mem.edges)
            mem.add(sid, date or session.date, units, emb, self.cfg.association, meta)
            if con is not None:
                self._dirty.add(user_id)
                self._persist_last(con, user_id, mem, n_edges, "add")
            else:
                mem.history.append({"event": "add", "session_id": sid, "at": _now()})
            self.users[user_id] = mem  # a new user appears only once their first session is in
            return sid

    def get(self, session_id: str, user_id: str) -> dict | None:
        """One stored session of a user (text, summary, keywords, turns), or None."""
        session_id, user_id = _check_id(session_id, "session_id", "get()"), _check_id(user_id, "user_id", "get()")
        with self._lock:
            self._sync()
            mem = self.users.get(user_id)
            i = mem._sids.get(session_id) if mem else None
            return _public(mem.sessions[i]) if i is not None else None

    def get_all(self, user_id: str, agent_id=None, run_id=None, filters: dict | None = None) -> list[dict]:
        """Every stored session of one user (never another user's), oldest first, optionally only
        those of an agent / run or whose metadata match `filters` (mem0's language, memgas.filters)."""
        user_id = _check_id(user_id, "user_id", "get_all()")
        ok = scope(agent_id, run_id, filters, "get_all()")
        with self._lock:
            self._sync()
            mem = self.users.get(user_id)
            return [_public(s) for s in mem.sessions if ok is None or ok(s)] if mem else []

    def update(self, session_id: str, user_id: str, messages=None, metadata: dict | None = None) -> bool:
        """Change a session: `metadata` is merged into its metadata (a key given as None is
        removed); new `messages` replace its content (the old session is forgotten exactly, as by
        `delete`, the new one embedded and associated like any new session, keeping its id, date
        and metadata). `history` records the update."""
        session_id = _check_id(session_id, "session_id", "update()")
        user_id = _check_id(user_id, "user_id", "update()")
        extra = _check_meta(metadata, None, None)
        removed = {k for k, v in (metadata or {}).items() if v is None}
        new = None
        if messages is not None:  # units and embeddings outside the lock, like add()
            session = _to_session(messages, session_id, "")
            units = self.units.build(session)
            new = (units, self.embed_units(units))
        with self._lock:
            with self._writing() as con:
                mem = self.users.get(user_id)
                i = mem._sids.get(session_id) if mem else None
                if i is None:
                    return False
                old = mem.sessions[i]
                meta = {k: v for k, v in {**(old.get("meta") or {}), **extra}.items() if k not in removed}
                if con is not None:
                    self._dirty.add(user_id)
                if new is None:
                    old["meta"] = meta
                    if con is not None:
                        self._db.set_meta(con, user_id, session_id, meta)
                        self._seen = self._db.log(con, user_id, "update", session_id, _now())
                    else:
                        mem.history.append({"event": "update", "session_id": session_id, "at": _now()})
                    return True
                gone = self._forget(con, user_id, mem, session_id, exact=True)
                n_edges = len(mem.edges)
                mem.add(session_id, old["date"], new[0], new[1], self.cfg.association, meta)
                if con is not None:
                    self._persist_last(con, user_id, mem, n_edges, "update")
                else:
                    mem.history.append({"event": "update", "session_id": session_id, "at": _now()})
            self._purge(gone.texts, f"the old content of session {session_id!r}")
            return True

    def delete(self, session_id: str, user_id: str, exact: bool = True) -> bool:
        """Forget a session; returns whether it was there. When it returns, no search can return the
        session, no file of a durable store holds its text, units or vectors (the delete commits,
        `secure_delete` zeroes the freed pages, a truncating checkpoint empties the WAL; a reader
        holding an old snapshot past `forget_timeout_s` raises `ForgettingPending` instead), the
        ANN index is rebuilt without its vectors and the unit and embedding caches drop its texts.
        `exact` (default) also re-associates the later sessions that had its nodes among their
        candidates, so the graph and every ranking equal a store that never saw it (memgas.forget);
        `exact=False` only removes its nodes and edges. `history` records which, not the content."""
        session_id = _check_id(session_id, "session_id", "delete()")
        user_id = _check_id(user_id, "user_id", "delete()")
        with self._lock:
            with self._writing() as con:
                mem = self.users.get(user_id)
                if mem is None or session_id not in mem._sids:
                    return False
                gone = self._forget(con, user_id, mem, session_id, exact)
                detail = {"exact": gone.exact, "reassociated": len(gone.redone),
                          "reassociated_nodes": sum(len(r["keys"]) for r in gone.redone)}  # fmt: skip
                if con is not None:
                    self._seen = self._db.log(con, user_id, "delete", session_id, _now(), detail)
                else:
                    mem.history.append({"event": "delete", "session_id": session_id, "at": _now(), **detail})
                if not mem.sessions and con is not None:
                    self.users.pop(user_id, None)
            self._purge(gone.texts, f"session {session_id!r} of user {user_id!r}")
            return True

    def _forget(self, con, user_id: str, mem: Memory, session_id: str, exact: bool) -> Forgotten:
        """The in-memory delete (memgas.forget) and, in a durable store, its rows."""
        gone = delete_session(mem, session_id, self.cfg.association if exact else None)
        if con is not None:
            self._dirty.add(user_id)
            self._db.delete_session(con, user_id, session_id)
            self._db.rewrite_association(con, user_id, gone.redone)
        return gone

    def _purge(self, texts: list[str], what: str) -> None:
        """After a committed delete: drop the texts from the caches, then the bytes from the files."""
        self.units.forget(texts)
        self.encoder.forget(texts)
        if self._db is not None:
            self._db.forget(self.forget_timeout_s, what)

    def delete_all(self, user_id: str) -> int:
        """Forget every session of a user (and the user), as `delete` does (no byte left on disk);
        returns how many sessions were removed."""
        user_id = _check_id(user_id, "user_id", "delete_all()")
        with self._lock:
            with self._writing() as con:
                mem = self.users.pop(user_id, None)
                texts = [t for s in mem.sessions for t in unit_texts(s)] if mem else []
                if con is not None:
                    self._dirty.add(user_id)
                    n = self._db.delete_user(con, user_id)
                    self._seen = self._db.log(con, user_id, "delete_all", None, _now())
                else:
                    n = len(mem.sessions) if mem else 0
            self._purge(texts, f"every session of user {user_id!r}")
            return n

    def history(self, user_id: str) -> list[dict]:
        """The user's add / update / delete events, oldest first: {event, session_id, at}."""
        with self._lock:
            if self._db is not None:
                with self._db.read() as con:
                    return self._db.history(con, str(user_id))
            mem = self.users.get(_check_id(user_id, "user_id", "history()"))
            return [dict(e) for e in mem.history] if mem else []

    # ------------------------------------------------------------------------------- durable store
    @classmethod
    def open(
        cls,
        path: str | Path,
        cfg: MemGASConfig | None = None,
        encoder=None,
        llm=None,
        verify: bool = False,
        max_users: int = 1024,
        max_bytes: int = 1 << 30,
    ) -> MemoryStore:
        """Open (or create) a durable store in one SQLite file (memgas.db): every add / update /
        delete commits only what it changes, several processes may read and write the file at once
        and never lose each other's adds, and the in-memory graph follows other processes' commits
        before every read or write. A folder store is refused with the command that migrates it.

        Opening reads no user: a user's memory is read on first use and kept in an LRU of at most
        `max_users` users and about `max_bytes` (memgas.tenants). `verify` runs SQLite's
        quick_check, which reads the whole file (seconds for a large store)."""
        from memgas.db import Database

        path = Path(path)
        if path.is_dir():
            is_folder_store = folder._is_store(path)
            hint = " (a folder store: python -m memgas.tools migrate FOLDER NEW.sqlite)" if is_folder_store else ""
            raise StoreError(f"{path}: is a folder, not a SQLite memory store{hint}")
        store = cls(cfg, encoder=encoder, llm=llm)
        db = Database(path)
        meta = db.initialise(
            {"config": asdict(store.cfg), "encoder": store.encoder.name, "dim": int(store.encoder.dim)}
        )
        if verify:
            db.quick_check()
        try:
            saved = from_dict(MemGASConfig, meta.get("config"), f"{path} (table meta, field 'config')")
        except (ValueError, TypeError) as e:
            raise StoreError(str(e)) from None
        if cfg is not None and asdict(saved) != asdict(cfg):
            diff = sorted(k for k in asdict(cfg) if asdict(cfg)[k] != asdict(saved).get(k))
            raise StoreError(f"{path}: created with another configuration (differs in {diff}); open it without cfg")
        store.cfg = saved
        if store.encoder.name != meta.get("encoder") or int(store.encoder.dim) != meta.get("dim"):
            raise StoreError(
                f"{path}: saved with encoder {meta.get('encoder')!r} ({meta.get('dim')}-d), "
                f"opening with {store.encoder.name!r} ({store.encoder.dim}-d)"
            )
        store._db = db
        store.users = UserCache(store._fetch_user, max_users, max_bytes)
        with db.read() as con:
            store._seen = db.last_seq(con)
        return store

    def user_ids(self) -> list[str]:
        """Every user with at least one session (from the database for a durable store)."""
        with self._lock:
            if self._db is None:
                return sorted(u for u, m in self.users.items() if m.sessions)
            with self._db.read() as con:
                return self._db.user_ids(con)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def compact(self, timeout_s: float | None = None) -> dict:
        """Durable store: purge the WAL and give the space of deleted sessions back to the file
        system (VACUUM). Returns {bytes_before, bytes_after, ...}; raises `StoreError` when other
        connections blocked it for `timeout_s` (default `forget_timeout_s`), never returns as if done."""
        if self._db is None:
            raise StoreError("compact() is for a store opened with MemoryStore.open; a folder store shrinks on save")
        with self._lock:
            return self._db.compact(self.forget_timeout_s if timeout_s is None else timeout_s)

    def backup(self, dest: str | Path) -> Path:
        """Durable store: a consistent single-file copy (`VACUUM INTO`), taken while writers run.
        A copy outlives later deletes: a deletion request must reach it too."""
        if self._db is None:
            raise StoreError("backup() is for a store opened with MemoryStore.open; a folder store is copied by save()")
        dest = Path(dest)
        if dest.exists():
            raise StoreError(f"{dest}: exists; backup never overwrites a file")
        with self._lock:
            self._db.backup(dest)
        return dest

    def disk_bytes(self) -> int:
        return self._db.disk_bytes() if self._db is not None else 0

    @contextlib.contextmanager
    def _writing(self):
        """The database's write transaction (None for an in-memory / folder store), after applying
        every change other processes committed; if the transaction fails, the in-memory graph is
        re-read so it matches the database again."""
        if self._db is None:
            yield None
            return
        self._dirty: set[str] = set()  # users changed in memory inside this transaction
        try:
            with self._db.write() as con:
                self._apply(con)
                yield con
        except BaseException:
            # the transaction rolled back: users changed in memory before the failure are re-read
            # (an error before any change, e.g. a duplicate id, costs nothing)
            with contextlib.suppress(Exception), self._db.read() as con:
                for uid in self._dirty:
                    self._reload(con, uid)
            raise
        finally:
            self._dirty = set()

    def _sync(self) -> None:
        if self._db is not None:
            with self._db.read() as con:
                self._apply(con)

    def _apply(self, con) -> None:
        """Bring the loaded users up to the database's committed state: an add by another process
        is appended as stored (no second association); anything else re-reads that user. Users not
        in memory are skipped: they are read as committed when next used."""
        dim = int(self.encoder.dim)
        stale = set()
        for seq, uid, event, sid in self._db.changes_since(con, self._seen):
            mem = self.users.peek(uid)
            if mem is not None and uid not in stale and event == "add":
                got = self._db.read_session_nodes(con, uid, sid, dim)
                if got is not None and sid not in mem._sids:
                    try:
                        mem.append_stored(*got)
                    except ValueError:
                        stale.add(uid)
            elif mem is not None:
                stale.add(uid)
            self._seen = seq
        for uid in stale:
            self._reload(con, uid)

    def _reload(self, con, uid: str) -> None:
        mem = memory_from(self._db.read_user(con, uid, int(self.encoder.dim)))
        if mem is None:
            self.users.pop(uid, None)
        else:
            self.users[uid] = mem

    def _fetch_user(self, uid: str) -> Memory | None:
        """The user-cache loader: one consistent read of the user (inside the current transaction
        when there is one, e.g. an add's)."""
        con = self._db.con
        if con.in_transaction:
            return memory_from(self._db.read_user(con, uid, int(self.encoder.dim)))
        with self._db.read() as c:
            return memory_from(self._db.read_user(c, uid, int(self.encoder.dim)))

    def _persist_last(self, con, user_id: str, mem: Memory, n_edges: int, event: str) -> None:
        """Write the session `mem.add` just committed in memory: its rows only."""
        i = len(mem.sessions) - 1
        s = mem.sessions[i]
        idx = np.arange(*mem.last_span)
        keys = [mem.node_keys[j] for j in idx]
        edges = [(mem.node_keys[a], mem.node_keys[b]) for a, b in mem.edges[n_edges:]]
        gran, floors = [mem.node_gran[j] for j in idx], [mem.node_floor[j] for j in idx]
        self._db.insert_session(con, user_id, s, i, keys, gran, mem.rows[idx], edges, floors)
        self._seen = self._db.log(con, user_id, event, s["session_id"], _now())

    def search(
        self,
        query: str,
        user_id: str,
        limit: int = 3,
        retrieval: RetrievalConfig | None = None,
        agent_id=None,
        run_id=None,
        filters: dict | None = None,
    ) -> dict:
        if not isinstance(query, str):
            raise ValueError(f"search(): query must be a string, got {type(query).__name__}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"search(): limit must be a positive integer, got {limit!r}")
        user_id = _check_id(user_id, "user_id", "search()")
        ok = scope(agent_id, run_id, filters, "search()")  # a bad filter fails before any work
        q = self.encoder.encode([query])[0]  # outside the lock, like add()
        with self._lock:
            self._sync()
            mem = self.users.get(user_id)
            if mem is None or not mem.sessions:
                return {"results": [], "router_weights": {}}
            # unscoped, only the first `limit` are shown: only they are ordered (the same ones)
            top = limit if ok is None else None
            order, scores, w = rank_sessions(mem, q, query, retrieval or self.cfg.retrieval, top=top)
            if ok is not None:  # scoped: only matching sessions
                keep = [k for k, i in enumerate(order) if ok(mem.sessions[i])]
                order, scores = order[keep], scores[keep]
            res = [
                {
                    "session_id": mem.sessions[i]["session_id"],
                    "score": float(s),
                    "date": mem.sessions[i]["date"],
                    "text": mem.sessions[i]["units"]["session"][0],
                    "summary": mem.sessions[i]["units"]["summary"][0],
                    "keywords": mem.sessions[i]["units"]["keywords"][0],
                    "metadata": dict(mem.sessions[i].get("meta") or {}),
                }
                for i, s in zip(order[:limit], scores[:limit])
            ]
            return {"results": res, "router_weights": w}

    # ------------------------------------------------------------------------------ folder snapshots
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the whole store atomically as a folder snapshot (`memgas.folder.save`); a store
        this object was not loaded from is never replaced unless `overwrite=True`."""
        return folder.save(self, path, overwrite)

    def _write(self, path: Path) -> Path:
        return folder.write(self, path)

    @classmethod
    def load(cls, path: str | Path, encoder=None, llm=None, verify: bool = True) -> MemoryStore:
        """Read a folder snapshot, verified (`memgas.folder.load`)."""
        return folder.load(cls, path, encoder, llm, verify)

    @classmethod
    def transaction(cls, path: str | Path, cfg: MemGASConfig | None = None, encoder=None, llm=None):
        """Load (or create) → yield → save under the folder's exclusive lock (`memgas.folder.transaction`)."""
        return folder.transaction(cls, path, cfg, encoder, llm)

    @classmethod
    def _read(cls, path: Path, encoder, llm, verify: bool) -> MemoryStore:
        return folder.read(cls, path, encoder, llm, verify)
