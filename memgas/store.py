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
    store.save("mem/"); MemoryStore.load("mem/", encoder=...)        # a folder snapshot
    store = MemoryStore.open("mem.sqlite", cfg, encoder=...)         # the durable store (memgas.db)

Two ways to keep a memory. `MemoryStore.open` is the store for users: one SQLite file, every add /
update / delete its own transaction writing only its rows, any number of processes reading and
writing it through this same API (each add applies the others' commits first, so none is lost),
`compact()` to give deleted space back. The folder snapshot (`save` / `load`) is what evaluations
cache between runs; `python -m memgas.db migrate FOLDER NEW.sqlite` turns one into the other.

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
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from safetensors.numpy import load_file, save_file

from memgas.association import AssociationConfig, associate_candidates, exact_top, paper_association
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
    """One user's sessions, nodes (all granularities), embeddings and association edges.

    Everything a later add or search needs grows in place (an amortised-doubling embedding buffer,
    per-granularity positions, adjacency lists, an ANN index over the association pool), so the cost
    of an add does not grow with the memory; only a delete renumbers and rebuilds."""

    def __init__(self, dim: int = 0):
        self.sessions: list[dict] = []
        self.node_gran: list[str] = []
        self.node_sess_list: list[int] = []
        self.node_keys: list[int] = []  # stable node ids (a delete renumbers positions, not keys)
        self.edges: list[tuple[int, int]] = []
        self.history: list[dict] = []  # add / update / delete events, oldest first (persisted)
        self._buf = np.zeros((0, dim), np.float32)
        self._n = 0
        self._next_key = 0
        self._reset_derived()

    def _reset_derived(self) -> None:
        self._sids = {s["session_id"]: i for i, s in enumerate(self.sessions)}
        self._pos_by_gran: dict[str, list[int]] = {}
        for i, g in enumerate(self.node_gran):
            self._pos_by_gran.setdefault(g, []).append(i)
        self._key_pos = {k: i for i, k in enumerate(self.node_keys)}
        self._adj: list[list[int]] | None = None
        self._sess_arr = None
        self._by_gran: dict[str, np.ndarray] = {}
        self._gran_mat: dict[str, np.ndarray] = {}
        self._bm25: dict[str, BM25Index] = {}
        self._graphs: dict = {}  # PageRank subgraphs per granularity set (retrieval.subgraph)
        self._ann: dict[tuple, object] = {}  # pool -> memgas.ann.NodeIndex

    # ---- embeddings: a growable buffer, `rows` a view of its used part
    @property
    def rows(self) -> np.ndarray:
        return self._buf[: self._n]

    @rows.setter
    def rows(self, value) -> None:
        arr = np.asarray(np.stack(value) if isinstance(value, list) and value else value, dtype=np.float32)
        if arr.ndim != 2:
            arr = np.zeros((0, self._buf.shape[1]), np.float32)
        self._buf, self._n = np.array(arr, dtype=np.float32, copy=True), len(arr)

    def _append_rows(self, new: np.ndarray) -> None:
        if self._buf.shape[1] != new.shape[1]:
            if self._n:
                raise ValueError(f"embeddings of dimension {new.shape[1]}, the memory holds {self._buf.shape[1]}")
            self._buf = np.zeros((0, new.shape[1]), np.float32)
        need = self._n + len(new)
        if need > len(self._buf):
            grown = np.zeros((max(need, 2 * len(self._buf), 64), new.shape[1]), np.float32)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : need] = new
        self._n = need

    @property
    def node_sess(self) -> np.ndarray:
        """The owning session of every node, as an array (grown in place by `add`)."""
        if self._sess_arr is None or len(self._sess_arr) < self._n:
            self._sess_arr = np.asarray(self.node_sess_list, dtype=np.int64)
        return self._sess_arr[: self._n]

    def matrix(self) -> np.ndarray:
        return self.rows if self._n else np.zeros((0, 1), np.float32)

    def nodes_of(self, g: str) -> np.ndarray:
        if g not in NODE_GRANULARITIES:
            raise ValueError(f"unknown granularity {g!r}: {NODE_GRANULARITIES}")
        if g not in self._by_gran:
            self._by_gran[g] = np.asarray(self._pos_by_gran.get(g, []), dtype=np.int64)
        return self._by_gran[g]

    def gran_matrix(self, g: str) -> np.ndarray:
        """The embeddings of granularity `g` as one contiguous matrix (cached: no copy per query)."""
        if g not in self._gran_mat:
            self._gran_mat[g] = self.rows[self.nodes_of(g)]
        return self._gran_mat[g]

    def adjacency(self) -> list[list[int]]:
        """Neighbour positions of every node (kept up to date by `add`)."""
        if self._adj is None:
            self._adj = [[] for _ in range(self._n)]
            for a, b in self.edges:
                self._adj[a].append(b)
                self._adj[b].append(a)
        return self._adj

    def bm25(self, g: str) -> BM25Index:
        if g not in self._bm25:
            texts = (
                [s["units"]["session"][0] for s in self.sessions]
                if g == "bm25_session"
                else [t for s in self.sessions for t in s["units"]["turn"]]
            )
            self._bm25[g] = BM25Index(texts)
        return self._bm25[g]

    def _pool_positions(self, pool) -> list[int]:
        return sorted(i for g in pool for i in self._pos_by_gran.get(g, []))

    def _ann_index(self, pool: tuple):
        """The ANN index over the pool nodes, built from the stored vectors on first use."""
        if pool not in self._ann:
            from memgas.ann import NodeIndex

            ix = NodeIndex(self._buf.shape[1])
            pos = self._pool_positions(pool)
            ix.add([self.node_keys[i] for i in pos], self.rows[pos])
            self._ann[pool] = ix
        return self._ann[pool]

    def add(
        self,
        session_id: str,
        date: str,
        units: SessionUnits,
        emb: dict[str, np.ndarray],
        cfg: AssociationConfig,
        meta: dict | None = None,
    ) -> int:
        """Commit one session's nodes and association edges; returns its session index. The new
        nodes are `range(len(rows) before, len(rows) after)`, the new edges `edges[len before:]`."""
        if session_id in self._sids:
            raise ValueError(f"session {session_id!r} is already in this memory")
        s_idx = len(self.sessions)
        first_new = self._n
        # everything is computed first and committed at the end: an error (a bad embedding, the
        # GMM failing) leaves the memory untouched, so the same session can be retried
        gran = [g for g in NODE_GRANULARITIES for _ in emb[g]]
        rows = [np.asarray(row, dtype=np.float32) for g in NODE_GRANULARITIES for row in emb[g]]
        if self._n and any(r.shape != (self._buf.shape[1],) for r in rows):
            raise ValueError(
                f"session {session_id!r}: embeddings of dimension {rows[0].shape}, "
                f"the memory holds dimension {self._buf.shape[1]}"
            )
        new_mat = np.stack(rows) if rows else np.zeros((0, self._buf.shape[1]), np.float32)
        edges = []
        pool = tuple(cfg.pool)
        if s_idx >= cfg.start_session and self._n:
            new_i = [k for k, g in enumerate(gran) if g in pool]
            n_pool = sum(len(self._pos_by_gran.get(g, [])) for g in pool)
            if new_i and n_pool:
                new = new_mat[new_i]
                if cfg.uses_ann(n_pool):
                    keys, sims = self._ann_index(pool).search(new, cfg.mem_threshold)
                    cand = np.vectorize(lambda k: self._key_pos.get(int(k), -1), otypes=[np.int64])(keys)
                    cand[keys < 0] = -1
                    pairs = associate_candidates(cand, sims, cfg)
                    edges = [(first_new + new_i[i], int(j)) for i, j in pairs]
                else:
                    old_i = self._pool_positions(pool)
                    pairs = associate_candidates(*exact_top(new, self.rows[old_i], cfg.mem_threshold), cfg)
                    edges = [(first_new + new_i[i], old_i[j]) for i, j in pairs]
        session = {"session_id": session_id, "date": date, "units": units.by_granularity(), "meta": dict(meta or {})}
        keys = list(range(self._next_key, self._next_key + len(rows)))
        return self._commit(session, gran, new_mat, keys, edges)

    def append_stored(self, session: dict, keys: list[int], gran: list[str], vecs: np.ndarray, edge_keys) -> int:
        """Append a session another process committed (its edges given by node keys), without
        associating it again."""
        first_new = self._n
        pos = {k: first_new + i for i, k in enumerate(keys)}
        edges = [(pos[a], self._key_pos.get(b, pos.get(b, -1))) for a, b in edge_keys if a in pos]
        if any(b < 0 for _, b in edges):
            raise ValueError(f"session {session['session_id']!r}: an edge names a node this memory does not hold")
        return self._commit(session, list(gran), np.asarray(vecs, np.float32).reshape(len(keys), -1), list(keys), edges)

    def _commit(self, session: dict, gran: list[str], new_mat: np.ndarray, keys: list[int], edges) -> int:
        s_idx, first_new = len(self.sessions), self._n
        if len(new_mat):
            self._append_rows(new_mat)
        self._next_key = max(self._next_key, max(keys, default=-1) + 1)
        for k, (g, key) in enumerate(zip(gran, keys)):
            self._pos_by_gran.setdefault(g, []).append(first_new + k)
            self._key_pos[key] = first_new + k
        self.node_gran += gran
        self.node_sess_list += [s_idx] * len(keys)
        if self._sess_arr is not None:  # amortised growth, like the embedding buffer
            if len(self._sess_arr) < self._n:
                grown = np.zeros(max(self._n, 2 * len(self._sess_arr)), np.int64)
                grown[:first_new] = self._sess_arr[:first_new]
                self._sess_arr = grown
            self._sess_arr[first_new : self._n] = s_idx
        self.last_span = (first_new, self._n)  # the nodes of the session just committed
        self.node_keys += keys
        self.edges += edges
        if self._adj is not None:
            self._adj += [[] for _ in keys]
            for a, b in edges:
                self._adj[a].append(b)
                self._adj[b].append(a)
        for p, ix in self._ann.items():
            new_pool = [k for k, g in enumerate(gran) if g in p]
            ix.add([keys[k] for k in new_pool], new_mat[new_pool])
        self.sessions.append(session)
        self._sids[session["session_id"]] = s_idx
        self._by_gran, self._gran_mat, self._bm25, self._graphs = {}, {}, {}, {}
        return s_idx

    def load_nodes(self, sessions, node_gran, node_sess, edges, emb, node_keys=None) -> None:
        """Replace the contents at once (reading a store)."""
        self.sessions, self.node_gran, self.node_sess_list = list(sessions), list(node_gran), list(node_sess)
        self.edges = [tuple(e) for e in edges]
        self.rows = emb
        self.node_keys = list(node_keys) if node_keys is not None else list(range(len(self.node_gran)))
        self._next_key = max(self.node_keys, default=-1) + 1
        self._reset_derived()


def _delete_session(mem: Memory, session_id: str) -> list[int] | None:
    """Forget one session: its nodes, their embeddings, their ANN index entries and every association
    edge touching them are removed (later nodes and sessions renumbered; edges among the rest kept as
    they were). Returns the removed node keys, or None when the session is not there."""
    idx = mem._sids.get(session_id)
    if idx is None:
        return None
    sess = mem.node_sess
    keep = np.flatnonzero(sess != idx)
    gone = [mem.node_keys[i] for i in np.flatnonzero(sess == idx)]
    new_pos = np.full(len(sess), -1, dtype=np.int64)
    new_pos[keep] = np.arange(len(keep))
    mem.edges = [(int(new_pos[a]), int(new_pos[b])) for a, b in mem.edges if new_pos[a] >= 0 and new_pos[b] >= 0]
    mem._buf, mem._n = mem.rows[keep].copy(), len(keep)
    mem.node_gran = [mem.node_gran[i] for i in keep]
    mem.node_sess_list = [int(s_ - (s_ > idx)) for s_ in sess[keep]]
    mem.node_keys = [mem.node_keys[i] for i in keep]
    del mem.sessions[idx]
    ann = mem._ann
    mem._reset_derived()
    for ix in ann.values():  # index entries removed, not soft-deleted: no later search returns them
        ix.remove([k for k in gone if k in ix])
    mem._ann = ann
    return gone


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
        self._db = None  # memgas.db.Database when opened with `MemoryStore.open` (every change commits)
        self._seen = 0  # the last history event of the database applied to the in-memory graph

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
            taken = mem._sids
            sid, n = given, len(mem.sessions) + 1
            while sid is None or (given is None and sid in taken):  # a generated id never takes a chosen one
                sid, n = f"s{n}", n + 1
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
        with self._lock:
            self._sync()
            mem = self.users.get(str(user_id))
            i = mem._sids.get(session_id) if mem else None
            return _public(mem.sessions[i]) if i is not None else None

    def get_all(self, user_id: str, agent_id=None, run_id=None, filters: dict | None = None) -> list[dict]:
        """Every stored session of one user (never another user's), oldest first, optionally only
        those of an agent / run or whose metadata equal `filters`."""
        with self._lock:
            self._sync()
            mem = self.users.get(str(user_id))
            return [_public(s) for s in mem.sessions if _matches(s, agent_id, run_id, filters)] if mem else []

    def update(self, session_id: str, user_id: str, messages=None, metadata: dict | None = None) -> bool:
        """Change a session: `metadata` is merged into its metadata; new `messages` replace its
        content (the old session is forgotten as by `delete`, the new one embedded and associated
        like any new session, keeping its id, date and metadata). `history` records the update."""
        user_id = str(user_id)
        extra = _check_meta(metadata, None, None)
        new = None
        if messages is not None:  # units and embeddings outside the lock, like add()
            session = _to_session(messages, session_id, "")
            units = self.units.build(session)
            new = (units, self.embed_units(units))
        with self._lock, self._writing() as con:
            mem = self.users.get(user_id)
            i = mem._sids.get(session_id) if mem else None
            if i is None:
                return False
            old = mem.sessions[i]
            meta = {**(old.get("meta") or {}), **extra}
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
            _delete_session(mem, session_id)
            if con is not None:
                self._db.delete_session(con, user_id, session_id)
            n_edges = len(mem.edges)
            mem.add(session_id, old["date"], new[0], new[1], self.cfg.association, meta)
            if con is not None:
                self._persist_last(con, user_id, mem, n_edges, "update")
            else:
                mem.history.append({"event": "update", "session_id": session_id, "at": _now()})
            return True

    def delete(self, session_id: str, user_id: str) -> bool:
        """Forget a session: its units, nodes, embeddings, ANN index entries and association edges
        are removed, so no later search can return it (a durable store commits the removal at once,
        its freed pages overwritten; `compact` shrinks the file; a folder store is rewritten without
        it on the next `save`). Returns whether it was there. `history` keeps the event, not the content."""
        user_id = str(user_id)
        with self._lock, self._writing() as con:
            mem = self.users.get(user_id)
            if mem is None or _delete_session(mem, session_id) is None:
                return False
            if con is not None:
                self._dirty.add(user_id)
                self._db.delete_session(con, user_id, session_id)
                self._seen = self._db.log(con, user_id, "delete", session_id, _now())
            else:
                mem.history.append({"event": "delete", "session_id": session_id, "at": _now()})
            if not mem.sessions and con is not None:
                self.users.pop(user_id, None)
            return True

    def delete_all(self, user_id: str) -> int:
        """Forget every session of a user (and the user); returns how many sessions were removed."""
        user_id = str(user_id)
        with self._lock, self._writing() as con:
            mem = self.users.pop(user_id, None)
            if con is not None:
                self._dirty.add(user_id)
                n = self._db.delete_user(con, user_id)
                self._seen = self._db.log(con, user_id, "delete_all", None, _now())
                return n
            return len(mem.sessions) if mem else 0

    def history(self, user_id: str) -> list[dict]:
        """The user's add / update / delete events, oldest first: {event, session_id, at}."""
        with self._lock:
            if self._db is not None:
                with self._db.read() as con:
                    return self._db.history(con, str(user_id))
            mem = self.users.get(str(user_id))
            return [dict(e) for e in mem.history] if mem else []

    # ------------------------------------------------------------------------------- durable store
    @classmethod
    def open(
        cls, path: str | Path, cfg: MemGASConfig | None = None, encoder=None, llm=None, verify: bool = True
    ) -> MemoryStore:
        """Open (or create) a durable store in one SQLite file (memgas.db): every add / update /
        delete commits only what it changes, several processes may read and write the file at once
        and never lose each other's adds, and the in-memory graph follows other processes' commits
        before every read or write. A folder store is refused with the command that migrates it."""
        from memgas.db import Database

        path = Path(path)
        if path.is_dir():
            hint = " (a folder store: python -m memgas.db migrate FOLDER NEW.sqlite)" if _is_store(path) else ""
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
        store._sync()
        return store

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def compact(self) -> None:
        """Durable store: give the space of deleted sessions back to the file system (VACUUM)."""
        if self._db is None:
            raise StoreError("compact() is for a store opened with MemoryStore.open; a folder store shrinks on save")
        with self._lock:
            self._db.compact()

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
                    self._load_user(con, uid)
            raise
        finally:
            self._dirty = set()

    def _sync(self) -> None:
        if self._db is not None:
            with self._db.read() as con:
                self._apply(con)

    def _apply(self, con) -> None:
        """Bring the in-memory graph up to the database's committed state: an add by another
        process is appended as stored (no second association); anything else re-reads that user."""
        dim = int(self.encoder.dim)
        if self._seen == 0 and not self.users:
            for uid in self._db.user_ids(con):
                self._load_user(con, uid)
            self._seen = self._db.last_seq(con)
            return
        stale = set()
        for seq, uid, event, sid in self._db.changes_since(con, self._seen):
            if uid not in stale and event == "add":
                got = self._db.read_session_nodes(con, uid, sid, dim)
                mem = self.users.get(uid) or Memory()
                if got is not None and sid not in mem._sids:
                    try:
                        mem.append_stored(*got)
                        self.users[uid] = mem
                    except ValueError:
                        stale.add(uid)
            else:
                stale.add(uid)
            self._seen = seq
        for uid in stale:
            self._load_user(con, uid)

    def _load_user(self, con, uid: str) -> None:
        got = self._db.read_user(con, uid, int(self.encoder.dim))
        if not got["sessions"]:
            self.users.pop(uid, None)
            return
        mem = Memory()
        mem.load_nodes(got["sessions"], got["gran"], got["owner"], got["edges"], got["emb"], got["keys"])
        self.users[uid] = mem

    def _persist_last(self, con, user_id: str, mem: Memory, n_edges: int, event: str) -> None:
        """Write the session `mem.add` just committed in memory: its rows only."""
        i = len(mem.sessions) - 1
        s = mem.sessions[i]
        idx = np.arange(*mem.last_span)
        keys = [mem.node_keys[j] for j in idx]
        edges = [(mem.node_keys[a], mem.node_keys[b]) for a, b in mem.edges[n_edges:]]
        self._db.insert_session(con, user_id, s, i, keys, [mem.node_gran[j] for j in idx], mem.rows[idx], edges)
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
        q = self.encoder.encode([query])[0]  # outside the lock, like add()
        with self._lock:
            self._sync()
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
            emb = load_file(str(files["emb"]))["emb"]
            if emb.ndim != 2 or len(emb) != len(meta["node_gran"]) or (len(emb) and emb.shape[1] != man["dim"]):
                raise StoreError(
                    f"{files['emb']}: {tuple(emb.shape)} embeddings for {len(meta['node_gran'])} nodes "
                    f"of dimension {man['dim']}"
                )
            mem.load_nodes(meta["sessions"], meta["node_gran"], meta["node_sess"], meta["edges"], emb)
            mem.history = meta.get("history", []) if isinstance(meta.get("history", []), list) else []
            store.users[uid] = mem
        return store
