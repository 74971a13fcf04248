"""One user's memory: its sessions, nodes (vectors per granularity), association edges, the ANN
index over its pool and the BM25 indexes, grown session by session; and the store's config and
error. Pure state and math: no files, no scopes (`memgas.store` is the API, `memgas.db` and
`memgas.folder` the persistence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from memgas.association import AssociationConfig, associate_candidates, exact_top, paper_association
from memgas.retrieval import RetrievalConfig, paper_config
from memgas.units import SessionUnits
from suite.config import opt
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


class ForgettingPending(StoreError):
    """A delete committed (no search returns the session) but its bytes could not yet be purged from
    the store's files (a reader's snapshot blocked the checkpoint): `compact()` finishes it."""


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
        # per node: the lowest score among its association candidates (the k-th best), so a delete
        # knows which later sessions had the deleted nodes among their candidates (memgas.forget);
        # +inf: nothing earlier to associate with; nan: not associated, or unknown (an older store)
        self.node_floor: list[float] = []
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
        edges, floors = [], [float("nan")] * len(gran)
        if s_idx >= cfg.start_session and self._n:
            edges, floors = self.associate_nodes(new_mat, gran, first_new, cfg)
        session = {"session_id": session_id, "date": date, "units": units.by_granularity(), "meta": dict(meta or {})}
        keys = list(range(self._next_key, self._next_key + len(rows)))
        return self._commit(session, gran, new_mat, keys, edges, floors)

    def associate_nodes(self, new_mat, gran, first_new: int, cfg: AssociationConfig, before=None):
        """(edges (new position, old position), each new node's candidate floor) for nodes that will
        sit at `first_new...`, against every pool node (`Memory.add`) or, for a re-association after
        a delete, against `before` = (sorted pool positions, their rows) of the earlier sessions only,
        scanned exactly."""
        floors = [float("nan")] * len(gran)
        pool = tuple(cfg.pool)
        new_i = [k for k, g in enumerate(gran) if g in pool]
        old_i, old_rows = before if before is not None else (self._pool_positions(pool), None)
        for k in new_i:
            floors[k] = float("inf")  # nothing earlier: no delete can change this node's candidates
        if not new_i or not len(old_i):
            return [], floors
        new = new_mat[new_i]
        if before is None and cfg.uses_ann(len(old_i)):
            keys, sims = self._ann_index(pool).search(new, cfg.mem_threshold)
            cand = np.vectorize(lambda k: self._key_pos.get(int(k), -1), otypes=[np.int64])(keys)
            cand[keys < 0] = -1
            sims = np.where(cand >= 0, sims, -np.inf)
            edges = [(first_new + new_i[i], int(j)) for i, j in associate_candidates(cand, sims, cfg)]
        else:
            cand, sims = exact_top(new, self.rows[old_i] if old_rows is None else old_rows, cfg.mem_threshold)
            edges = [(first_new + new_i[i], int(old_i[j])) for i, j in associate_candidates(cand, sims, cfg)]
        for r, k in enumerate(new_i):
            got = sims[r][np.isfinite(sims[r])]
            # fewer candidates than asked: every earlier pool node was one, so any delete affects it
            floors[k] = float(got[-1]) if len(got) >= cfg.mem_threshold else float("-inf")
        return edges, floors

    def append_stored(
        self, session: dict, keys: list[int], gran: list[str], vecs: np.ndarray, edge_keys, floors=None
    ) -> int:
        """Append a session another process committed (its edges given by node keys), without
        associating it again."""
        first_new = self._n
        pos = {k: first_new + i for i, k in enumerate(keys)}
        edges = [(pos[a], self._key_pos.get(b, pos.get(b, -1))) for a, b in edge_keys if a in pos]
        if any(b < 0 for _, b in edges):
            raise ValueError(f"session {session['session_id']!r}: an edge names a node this memory does not hold")
        vecs = np.asarray(vecs, np.float32).reshape(len(keys), -1)
        return self._commit(session, list(gran), vecs, list(keys), edges, floors)

    def _commit(self, session: dict, gran: list[str], new_mat: np.ndarray, keys: list[int], edges, floors=None) -> int:
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
        self.node_floor += list(floors) if floors is not None else [float("nan")] * len(keys)
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

    def load_nodes(self, sessions, node_gran, node_sess, edges, emb, node_keys=None, floors=None) -> None:
        """Replace the contents at once (reading a store)."""
        n = len(node_gran)
        self.node_floor = [float("nan")] * n if floors is None else [float(f) for f in floors]
        self.sessions, self.node_gran, self.node_sess_list = list(sessions), list(node_gran), list(node_sess)
        self.edges = [tuple(e) for e in edges]
        self.rows = emb
        self.node_keys = list(node_keys) if node_keys is not None else list(range(len(self.node_gran)))
        self._next_key = max(self.node_keys, default=-1) + 1
        self._reset_derived()
