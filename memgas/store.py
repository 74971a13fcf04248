"""The persistent multi-granularity memory, with the interface users know from mem0:

    store = MemoryStore(MemGASConfig(), encoder=load_encoder("minilm"))
    store.add([{"role": "user", "content": "..."}, ...], user_id="alice")
    store.search("where did I travel?", user_id="alice", limit=3)  # sessions, scores, router weights
    store.save("mem/"); MemoryStore.load("mem/", encoder=...)

Adding a session embeds its units and associates its nodes with earlier ones (GMM): the graph grows
incrementally, never rebuilt. `save` writes the whole store into a temp folder and renames it over
the old one (atomic); every file's checksum is in the manifest and verified on load.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from memgas.association import AssociationConfig, associate
from memgas.data import Session, Turn
from memgas.encoders import CachedEncoder
from memgas.retrieval import RetrievalConfig, rank_sessions
from memgas.units import SessionUnits, UnitBuilder
from suite.config import from_dict, opt
from suite.io import DataError, atomic_dir, read_json, recover_dir, sha256_file
from suite.lexical import BM25Index

FORMAT = "memgas-store/1"
NODE_GRANULARITIES = ("session", "turn", "turn_mean", "summary", "keywords")


@dataclass
class MemGASConfig:
    encoder: str = opt("minilm", "encoder: minilm | hashing | hub id / path")
    association: AssociationConfig = field(default_factory=AssociationConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


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
            texts = ([s["units"]["session"][0] for s in self.sessions] if g == "bm25_session"
                     else [t for s in self.sessions for t in s["units"]["turn"]])
            self._bm25[g] = BM25Index(texts)
        return self._bm25[g]

    def add(self, session_id: str, date: str, units: SessionUnits, emb: dict[str, np.ndarray], cfg: AssociationConfig) -> int:
        if any(s["session_id"] == session_id for s in self.sessions):
            raise ValueError(f"session {session_id!r} is already in this memory")
        s_idx = len(self.sessions)
        old = self.matrix() if self.rows else np.zeros((0, 0), np.float32)
        first_new = len(self.rows)
        for g in NODE_GRANULARITIES:
            for row in emb[g]:
                self.node_gran.append(g)
                self.node_sess_list.append(s_idx)
                self.rows.append(np.asarray(row, dtype=np.float32))
        self.sessions.append({"session_id": session_id, "date": date, "units": units.by_granularity()})
        if s_idx >= cfg.start_session and len(old):
            pool = set(cfg.pool)
            new_i = [i for i in range(first_new, len(self.rows)) if self.node_gran[i] in pool]
            old_i = [j for j in range(first_new) if self.node_gran[j] in pool]
            if new_i and old_i:
                new = np.stack([self.rows[i] for i in new_i])
                self.edges += [(new_i[i], old_i[j]) for i, j in associate(new, old[old_i], cfg)]
        self._mat, self._by_gran, self._bm25, self._graphs = None, {}, {}, {}
        return s_idx


def _to_session(messages, session_id: str, date: str) -> Session:
    if isinstance(messages, Session):
        return messages
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise DataError("add()", session_id, "messages", "expected a non-empty list of {role, content}")
    turns = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise DataError("add()", f"{session_id} message {j}", "content", "missing or not a string")
        turns.append(Turn(str(m.get("role", "user")), m["content"], f"{session_id}:{j}"))
    return Session(session_id, turns, date)


class MemoryStore:
    def __init__(self, cfg: MemGASConfig | None = None, encoder=None, llm=None, units: UnitBuilder | None = None):
        from suite.encoders import load_encoder

        self.cfg = cfg or MemGASConfig()
        self.encoder = encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder or load_encoder(self.cfg.encoder))
        self.units = units or UnitBuilder(llm)  # a shared builder counts LLM fallbacks across stores
        self.users: dict[str, Memory] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------------------- add/search
    def embed_units(self, units: SessionUnits) -> dict[str, np.ndarray]:
        by = units.by_granularity()
        texts = [t for g in ("session", "turn", "summary", "keywords") for t in by[g]]
        e = self.encoder.encode(texts)
        out, i = {}, 0
        for g in ("session", "turn", "summary", "keywords"):
            out[g] = e[i:i + len(by[g])]
            i += len(by[g])
        m = out["turn"].mean(0, keepdims=True)  # the reference's session-level turn node
        out["turn_mean"] = m / max(float(np.linalg.norm(m)), 1e-12) if self.encoder.name != "contriever" else m
        return out

    def add(self, messages, user_id: str, session_id: str | None = None, date: str = "") -> str:
        """Store one session (a list of {role, content}, a string, or a `Session`) for a user."""
        given = session_id or (messages.session_id if isinstance(messages, Session) else None)
        session = _to_session(messages, given or "new", date)
        # LLM calls and encoding touch no shared state: they run outside the lock, so searches
        # are not queued behind them; only the graph update below is serialised.
        units = self.units.build(session)
        emb = self.embed_units(units)
        with self._lock:
            mem = self.users.setdefault(str(user_id), Memory())
            sid = given or f"s{len(mem.sessions) + 1}"
            mem.add(sid, date or session.date, units, emb, self.cfg.association)
            return sid

    def search(self, query: str, user_id: str, limit: int = 3, retrieval: RetrievalConfig | None = None) -> dict:
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
            res = [{"session_id": mem.sessions[i]["session_id"], "score": float(s), "date": mem.sessions[i]["date"],
                    "text": mem.sessions[i]["units"]["session"][0], "summary": mem.sessions[i]["units"]["summary"][0],
                    "keywords": mem.sessions[i]["units"]["keywords"][0]}
                   for i, s in zip(order[:limit], scores[:limit])]
            return {"results": res, "router_weights": w}

    # ------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the whole store atomically (temp folder + rename), with checksums."""
        import json

        from safetensors.numpy import save_file

        with self._lock, atomic_dir(path) as tmp:
            users = {}
            for k, (uid, mem) in enumerate(sorted(self.users.items())):
                meta = {"user_id": uid, "sessions": mem.sessions, "node_gran": mem.node_gran,
                        "node_sess": mem.node_sess_list, "edges": [list(e) for e in mem.edges]}
                (tmp / f"user{k}.json").write_text(json.dumps(meta, ensure_ascii=False))
                save_file({"emb": mem.matrix().astype(np.float32)}, str(tmp / f"user{k}.safetensors"))
                users[uid] = {"meta": f"user{k}.json", "emb": f"user{k}.safetensors",
                              "sha256": {f: sha256_file(tmp / f) for f in (f"user{k}.json", f"user{k}.safetensors")}}
            (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, "config": asdict(self.cfg),
                                                           "encoder": self.encoder.name, "users": users}, indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, encoder=None, llm=None, verify: bool = True) -> "MemoryStore":
        from safetensors.numpy import load_file

        path = Path(path)
        recover_dir(path)
        mp = path / "manifest.json"
        if not mp.exists():
            raise StoreError(f"{mp}: no memory store here")
        man = read_json(mp)
        if man.get("format") != FORMAT:
            raise StoreError(f"{mp}: format {man.get('format')!r}, expected {FORMAT!r}")
        store = cls(from_dict(MemGASConfig, man["config"], str(mp)), encoder=encoder, llm=llm)
        if store.encoder.name != man["encoder"]:
            raise StoreError(f"{mp}: saved with encoder {man['encoder']!r}, loading with {store.encoder.name!r}")
        for uid, u in man["users"].items():
            for f, sha in u["sha256"].items():
                if verify and (not (path / f).exists() or sha256_file(path / f) != sha):
                    raise StoreError(f"{path / f}: missing or checksum mismatch (store corrupted)")
            meta = read_json(path / u["meta"])
            mem = Memory()
            mem.sessions, mem.node_gran, mem.node_sess_list = meta["sessions"], meta["node_gran"], meta["node_sess"]
            mem.edges = [tuple(e) for e in meta["edges"]]
            mem.rows = list(load_file(str(path / u["emb"]))["emb"])
            store.users[uid] = mem
        return store
