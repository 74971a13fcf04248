"""The persistent multi-granularity memory, with the interface users know from mem0:

    store = MemoryStore(MemGASConfig(), encoder=load_encoder("minilm"))
    store.add([{"role": "user", "content": "..."}, ...], user_id="alice")
    store.search("where did I travel?", user_id="alice", limit=3)  # sessions, scores, router weights
    store.add(messages, user_id="alice", agent_id="travel", run_id="r1", metadata={"topic": "trip"})
    store.search("flights", user_id="alice", agent_id="travel", filters={"topic": "trip"})
    store.update(session_id, user_id="alice", metadata={...} or messages=[...])
    store.get(session_id, user_id="alice"); store.get_all(user_id="alice", agent_id=..., filters=...)
    store.delete(session_id, user_id="alice")   # forgets: units, nodes, vectors, edges; files shrink on save
    store.delete_all(user_id="alice"); store.history(user_id="alice")   # add / delete events
    store.save("mem/"); MemoryStore.load("mem/", encoder=...)

Adding a session embeds its units and associates its nodes with earlier ones (GMM): the graph grows
incrementally, never rebuilt; an add that fails leaves the memory as it was. `save` writes the whole
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
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.numpy import load_file, save_file

from memgas.association import AssociationConfig, associate, paper_association
from memgas.data import Session, Turn
from memgas.encoders import CachedEncoder
from memgas.retrieval import RetrievalConfig, paper_config, rank_sessions
from memgas.units import SessionUnits, UnitBuilder
from suite.config import from_dict, opt
from suite.encoders import load_encoder
from suite.io import (
    DataError,
    atomic_dir,
    check_id,
    check_seal,
    check_text,
    file_lock,
    inside,
    read_json,
    readable_dir,
    seal,
    sha256_file,
)
from suite.lexical import BM25Index

FORMAT = "memgas-store/1"
NODE_GRANULARITIES = ("session", "turn", "turn_mean", "summary", "keywords")


@dataclass
class MemGASConfig:
    encoder: str = opt("minilm", "encoder: minilm | hashing | hub id / path")
    association: AssociationConfig = field(default_factory=AssociationConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    turn_mean: Literal["normalised", "mean"] = opt(
        "normalised",
        "the session-level turn node: normalised (unit length, like the other MiniLM nodes) | mean "
        "(the reference's plain mean of the turn embeddings)",
    )


def paper_memory(encoder: str = "minilm") -> MemGASConfig:
    """The memory the authors' code builds: their association settings and an unnormalised turn mean."""
    return MemGASConfig(encoder=encoder, association=paper_association(), retrieval=paper_config(), turn_mean="mean")


class StoreError(RuntimeError):
    """A store on disk is missing, inconsistent or corrupted; the message names the file."""


class Memory:
    """One user's sessions, nodes (all granularities), embeddings and association edges."""

    def __init__(self):
        self.sessions: list[dict] = []
        self.node_gran: list[str] = []
        self.node_sess_list: list[int] = []
        self.rows: list[np.ndarray] = []
        self.edges: list[tuple[int, int]] = []
        self._mat = None
        self._by_gran: dict[str, np.ndarray] = {}
        self._bm25: dict[str, BM25Index] = {}
        self._graphs: dict = {}  # PageRank subgraphs per granularity set (retrieval.subgraph)
        self.history: list[dict] = []  # add / delete events, oldest first (persisted with the memory)

    @property
    def node_sess(self) -> np.ndarray:
        return np.asarray(self.node_sess_list, dtype=np.int64)

    def matrix(self) -> np.ndarray:
        if self._mat is None or len(self._mat) != len(self.rows):
            self._mat = np.stack(self.rows) if self.rows else np.zeros((0, 1), np.float32)
        return self._mat

    def nodes_of(self, g: str) -> np.ndarray:
        if g not in NODE_GRANULARITIES:
            raise ValueError(f"unknown granularity {g!r}: {NODE_GRANULARITIES}")
        if g not in self._by_gran:
            self._by_gran[g] = np.asarray([i for i, x in enumerate(self.node_gran) if x == g], dtype=np.int64)
        return self._by_gran[g]

    def bm25(self, g: str) -> BM25Index:
        if g not in self._bm25:
            texts = (
                [s["units"]["session"][0] for s in self.sessions]
                if g == "bm25_session"
                else [t for s in self.sessions for t in s["units"]["turn"]]
            )
            self._bm25[g] = BM25Index(texts)
        return self._bm25[g]

    def add(
        self,
        session_id: str,
        date: str,
        units: SessionUnits,
        emb: dict[str, np.ndarray],
        cfg: AssociationConfig,
        meta: dict | None = None,
    ) -> int:
        if any(s["session_id"] == session_id for s in self.sessions):
            raise ValueError(f"session {session_id!r} is already in this memory")
        s_idx = len(self.sessions)
        old = self.matrix() if self.rows else np.zeros((0, 0), np.float32)
        first_new = len(self.rows)
        # everything is computed first and committed at the end: an error (a bad embedding, the
        # GMM failing) leaves the memory untouched, so the same session can be retried
        gran = [g for g in NODE_GRANULARITIES for _ in emb[g]]
        rows = [np.asarray(row, dtype=np.float32) for g in NODE_GRANULARITIES for row in emb[g]]
        if len(old) and any(r.shape != (old.shape[1],) for r in rows):
            raise ValueError(
                f"session {session_id!r}: embeddings of dimension {rows[0].shape}, "
                f"the memory holds dimension {old.shape[1]}"
            )
        edges = []
        if s_idx >= cfg.start_session and len(old):
            pool = set(cfg.pool)
            new_i = [k for k, g in enumerate(gran) if g in pool]
            old_i = [j for j in range(first_new) if self.node_gran[j] in pool]
            if new_i and old_i:
                new = np.stack([rows[k] for k in new_i])
                edges = [(first_new + new_i[i], old_i[j]) for i, j in associate(new, old[old_i], cfg)]
        session = {"session_id": session_id, "date": date, "units": units.by_granularity(), "meta": dict(meta or {})}
        self.node_gran += gran
        self.node_sess_list += [s_idx] * len(rows)
        self.rows += rows
        self.edges += edges
        self.sessions.append(session)
        self._mat, self._by_gran, self._bm25, self._graphs = None, {}, {}, {}
        return s_idx


def _delete_session(mem: Memory, session_id: str) -> bool:
    """Forget one session: its nodes, their embeddings and every association edge touching them
    are removed (later nodes and sessions renumbered; edges among the rest kept as they were)."""
    idx = next((i for i, x in enumerate(mem.sessions) if x["session_id"] == session_id), None)
    if idx is None:
        return False
    sess = np.asarray(mem.node_sess_list, dtype=np.int64)
    keep = np.flatnonzero(sess != idx)
    new_pos = np.full(len(sess), -1, dtype=np.int64)
    new_pos[keep] = np.arange(len(keep))
    mem.edges = [(int(new_pos[a]), int(new_pos[b])) for a, b in mem.edges if new_pos[a] >= 0 and new_pos[b] >= 0]
    mem.rows = [mem.rows[i] for i in keep]
    mem.node_gran = [mem.node_gran[i] for i in keep]
    mem.node_sess_list = [int(s_ - (s_ > idx)) for s_ in sess[keep]]
    del mem.sessions[idx]
    mem._mat, mem._by_gran, mem._bm25, mem._graphs = None, {}, {}, {}
    return True


def _check_meta(metadata, agent_id, run_id) -> dict:
    """A session's metadata: flat, JSON-safe values (scopes `agent_id` / `run_id` included)."""
    if metadata is not None and not isinstance(metadata, dict):
        raise DataError("add()", None, "metadata", f"expected a mapping, got {type(metadata).__name__}")
    meta = {}
    scopes = {k: v for k, v in (("agent_id", agent_id), ("run_id", run_id)) if v is not None}
    for k, v in {**(metadata or {}), **scopes}.items():
        if v is None:
            continue
        k = check_text("add()", None, "metadata key", k) if isinstance(k, str) else None
        if k is None or not (isinstance(v, str | bool) or (isinstance(v, int | float) and np.isfinite(v))):
            raise DataError("add()", None, f"metadata.{k}", "keys must be strings and values str/int/float/bool")
        meta[k] = check_text("add()", None, f"metadata.{k}", v) if isinstance(v, str) else v
    return meta


def _matches(s: dict, agent_id=None, run_id=None, filters: dict | None = None) -> bool:
    want = {**(filters or {}), **{k: v for k, v in (("agent_id", agent_id), ("run_id", run_id)) if v is not None}}
    meta = s.get("meta") or {}
    return all(meta.get(k) == v for k, v in want.items())


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _public(s: dict) -> dict:
    u = s["units"]
    return {
        "session_id": s["session_id"],
        "date": s["date"],
        "metadata": dict(s.get("meta") or {}),
        "text": u["session"][0],
        "summary": u["summary"][0],
        "keywords": u["keywords"][0],
        "turns": list(u["turn"]),
    }


def _to_session(messages, session_id: str, date: str) -> Session:
    """A `Session` from what `add()` accepts, every text checked before anything is stored (a text
    that cannot be saved would otherwise make every later `save()` of the whole store fail)."""
    if isinstance(messages, Session):
        for j, t in enumerate(messages.turns):
            check_text("add()", f"{session_id} turn {j}", "text", t.text)
            check_text("add()", f"{session_id} turn {j}", "speaker", t.speaker)
        return messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise DataError("add()", session_id, "messages", "expected a non-empty list of {role, content}")
    turns = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError("add()", f"{session_id} message {j}", "content", "missing or not a string")
        check_text("add()", f"{session_id} message {j}", "content", m["content"])
        role = check_text("add()", f"{session_id} message {j}", "role", m.get("role", "user"))
        turns.append(Turn(role, m["content"], f"{session_id}:{j}"))
    return Session(session_id, turns, date)


def _check_id(value, field: str) -> str:
    """`suite.io.check_id`, plus text that can be saved (no lone surrogates)."""
    return check_text("add()", None, field, check_id("add()", None, field, value))


def _generation(path: Path) -> int:
    """The generation of the store saved at `path` (0: none, or one saved before generations)."""
    mp = readable_dir(path) / "manifest.json"
    if not mp.is_file():
        return 0
    try:
        g = json.loads(mp.read_text(encoding="utf-8")).get("generation", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return g if isinstance(g, int) and not isinstance(g, bool) else 0


def _is_store(path: Path) -> bool:
    mp = path / "manifest.json"
    if not mp.is_file():
        return False
    try:
        return json.loads(mp.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class MemoryStore:
    def __init__(self, cfg: MemGASConfig | None = None, encoder=None, llm=None, units: UnitBuilder | None = None):
        self.cfg = cfg or MemGASConfig()
        self.encoder = (
            encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder or load_encoder(self.cfg.encoder))
        )
        self.units = units or UnitBuilder(llm)  # a shared builder counts LLM fallbacks across stores
        self.users: dict[str, Memory] = {}
        self._lock = threading.RLock()
        self._loaded_from: tuple[Path, int] | None = None  # (store folder, its generation when read)

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
        with self._lock:
            mem = self.users.get(user_id) or Memory()
            taken = {x["session_id"] for x in mem.sessions}
            sid, n = given, len(mem.sessions) + 1
            while sid is None or (given is None and sid in taken):  # a generated id never takes a chosen one
                sid, n = f"s{n}", n + 1
            mem.add(sid, date or session.date, units, emb, self.cfg.association, meta)
            mem.history.append({"event": "add", "session_id": sid, "at": _now()})
            self.users[user_id] = mem  # a new user appears only once their first session is in
            return sid

    def get(self, session_id: str, user_id: str) -> dict | None:
        """One stored session of a user (text, summary, keywords, turns), or None."""
        with self._lock:
            mem = self.users.get(str(user_id))
            found = [s for s in (mem.sessions if mem else []) if s["session_id"] == session_id]
            return _public(found[0]) if found else None

    def get_all(self, user_id: str, agent_id=None, run_id=None, filters: dict | None = None) -> list[dict]:
        """Every stored session of one user (never another user's), oldest first, optionally only
        those of an agent / run or whose metadata equal `filters`."""
        with self._lock:
            mem = self.users.get(str(user_id))
            return [_public(s) for s in mem.sessions if _matches(s, agent_id, run_id, filters)] if mem else []

    def update(self, session_id: str, user_id: str, messages=None, metadata: dict | None = None) -> bool:
        """Change a session: `metadata` is merged into its metadata; new `messages` replace its
        content (the old session is forgotten as by `delete`, the new one embedded and associated
        like any new session, keeping its id, date and metadata). `history` records the update."""
        with self._lock:
            mem = self.users.get(str(user_id))
            old = next((x for x in (mem.sessions if mem else []) if x["session_id"] == session_id), None)
            if old is None:
                return False
            meta = {**(old.get("meta") or {}), **_check_meta(metadata, None, None)}
            if messages is None:
                old["meta"] = meta
                mem.history.append({"event": "update", "session_id": session_id, "at": _now()})
                return True
            date = old["date"]
            _delete_session(mem, session_id)
            self.add(messages, user_id, session_id, date, metadata=meta)
            mem.history[-1]["event"] = "update"
            return True

    def delete(self, session_id: str, user_id: str) -> bool:
        """Forget a session: its units, nodes, embeddings and association edges are removed, so no
        later search can return it; the next `save` writes a store without it (files shrink).
        Returns whether it was there. `history` keeps the event (not the content)."""
        with self._lock:
            mem = self.users.get(str(user_id))
            if mem is None or not _delete_session(mem, session_id):
                return False
            mem.history.append({"event": "delete", "session_id": session_id, "at": _now()})
            return True

    def delete_all(self, user_id: str) -> int:
        """Forget every session of a user (and the user); returns how many sessions were removed."""
        with self._lock:
            mem = self.users.pop(str(user_id), None)
            return len(mem.sessions) if mem else 0

    def history(self, user_id: str) -> list[dict]:
        """The user's add / delete events, oldest first: {event, session_id, at}."""
        with self._lock:
            mem = self.users.get(str(user_id))
            return [dict(e) for e in mem.history] if mem else []

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
        q = self.encoder.encode([query])[0]  # outside the lock, like add()
        with self._lock:
            mem = self.users.get(str(user_id))
            if mem is None or not mem.sessions:
                return {"results": [], "router_weights": {}}
            order, scores, w = rank_sessions(mem, q, query, retrieval or self.cfg.retrieval)
            if agent_id is not None or run_id is not None or filters:  # scoped: only matching sessions
                keep = [k for k, i in enumerate(order) if _matches(mem.sessions[i], agent_id, run_id, filters)]
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

    # ------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the whole store atomically (temp folder + swap) under the folder's exclusive lock.
        Refuses a folder that exists, is not empty and is not a memory store, and refuses to save a
        store loaded from `path` over a newer one written there since (another process's adds would
        be silently lost): reload and add again, or use `MemoryStore.transaction`."""
        with file_lock(path):
            path = Path(path)
            loaded = self._loaded_from
            if loaded is not None and loaded[0] == path.resolve():
                now = _generation(path)
                if now != loaded[1]:
                    raise StoreError(
                        f"{path}: the store changed since it was loaded here (generation {loaded[1]} -> {now}: "
                        "another writer saved); saving would lose its adds. Reload and add again, or use "
                        "MemoryStore.transaction"
                    )
            return self._write(path)

    def _write(self, path: Path) -> Path:
        gen = _generation(path) + 1
        with self._lock, atomic_dir(path, is_own=_is_store, kind="memory store") as tmp:
            users = {}
            for k, (uid, mem) in enumerate(sorted(self.users.items())):
                meta = {
                    "user_id": uid,
                    "sessions": mem.sessions,
                    "node_gran": mem.node_gran,
                    "node_sess": mem.node_sess_list,
                    "edges": [list(e) for e in mem.edges],
                    "history": mem.history,
                }
                (tmp / f"user{k}.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
                save_file({"emb": mem.matrix().astype(np.float32)}, str(tmp / f"user{k}.safetensors"))
                users[uid] = {
                    "meta": f"user{k}.json",
                    "emb": f"user{k}.safetensors",
                    "sha256": {f: sha256_file(tmp / f) for f in (f"user{k}.json", f"user{k}.safetensors")},
                }
            man = seal(
                {
                    "format": FORMAT,
                    "config": asdict(self.cfg),
                    "encoder": self.encoder.name,
                    "dim": int(self.encoder.dim),
                    "n_users": len(users),
                    "users": users,
                    "generation": gen,  # one more on every save: a writer detects a newer store
                }
            )
            (tmp / "manifest.json").write_text(json.dumps(man, indent=1), encoding="utf-8")
        self._loaded_from = (path.resolve(), gen)
        return path

    @classmethod
    def load(cls, path: str | Path, encoder=None, llm=None, verify: bool = True) -> MemoryStore:
        """Read a store under the folder's shared lock (never while a writer swaps it). Reading
        changes nothing on disk."""
        with file_lock(path, shared=True):
            return cls._read(Path(path), encoder, llm, verify)

    @classmethod
    @contextlib.contextmanager
    def transaction(cls, path: str | Path, cfg: MemGASConfig | None = None, encoder=None, llm=None):
        """Load (or create) → yield → save, all under the exclusive lock: concurrent writers in other
        processes wait, and none loses another's adds. Nothing is saved if the block raises."""
        path = Path(path)
        with file_lock(path):
            exists = (readable_dir(path) / "manifest.json").exists()
            store = cls._read(path, encoder, llm, True) if exists else cls(cfg, encoder=encoder, llm=llm)
            yield store
            store._write(path)

    @classmethod
    def _read(cls, path: Path, encoder, llm, verify: bool) -> MemoryStore:
        where = readable_dir(path)
        mp = where / "manifest.json"
        if not mp.exists():
            raise StoreError(f"{mp}: no memory store here")
        man = read_json(mp)
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            raise StoreError(
                f"{mp}: format {man.get('format') if isinstance(man, dict) else None!r}, expected {FORMAT!r}"
            )
        try:
            check_seal(man, mp)
        except DataError as e:
            raise StoreError(str(e)) from None
        users = man.get("users")
        if not isinstance(users, dict) or man.get("n_users") != len(users):
            raise StoreError(
                f"{mp}: field 'users' does not hold the {man.get('n_users')} user(s) the manifest declares"
            )
        store = cls(from_dict(MemGASConfig, man["config"], str(mp)), encoder=encoder, llm=llm)
        store._loaded_from = (path.resolve(), int(man.get("generation", 0)))
        if store.encoder.name != man["encoder"]:
            raise StoreError(f"{mp}: saved with encoder {man['encoder']!r}, loading with {store.encoder.name!r}")
        if int(store.encoder.dim) != man.get("dim"):
            raise StoreError(
                f"{mp}: saved with {man.get('dim')}-dimensional embeddings, the encoder gives {store.encoder.dim}"
            )
        for uid, u in users.items():
            try:
                files = {k: inside(where, u.get(k), mp, f"user {uid!r}", k) for k in ("meta", "emb")}
                sums = u.get("sha256")
                if not isinstance(sums, dict) or set(sums) != {u["meta"], u["emb"]}:
                    raise DataError(mp, f"user {uid!r}", "sha256", "must give the checksum of exactly its two files")
            except DataError as e:
                raise StoreError(str(e)) from None
            for f, sha in sums.items():
                if verify and (not (where / f).exists() or sha256_file(where / f) != sha):
                    raise StoreError(f"{where / f}: missing or checksum mismatch (store corrupted)")
            meta = read_json(files["meta"])
            if meta.get("user_id") != uid:
                raise StoreError(f"{files['meta']}: holds user {meta.get('user_id')!r}, the manifest says {uid!r}")
            mem = Memory()
            mem.sessions, mem.node_gran, mem.node_sess_list = meta["sessions"], meta["node_gran"], meta["node_sess"]
            mem.edges = [tuple(e) for e in meta["edges"]]
            mem.history = meta.get("history", []) if isinstance(meta.get("history", []), list) else []
            emb = load_file(str(files["emb"]))["emb"]
            if emb.ndim != 2 or len(emb) != len(mem.node_gran) or (len(emb) and emb.shape[1] != man["dim"]):
                raise StoreError(
                    f"{files['emb']}: {tuple(emb.shape)} embeddings for {len(mem.node_gran)} nodes "
                    f"of dimension {man['dim']}"
                )
            mem.rows = list(emb)
            store.users[uid] = mem
        return store
