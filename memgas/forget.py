"""Forgetting a session from one user's memory (pure state and math, like `memgas.memory`).

A delete removes the session's nodes, vectors and every edge touching them. That alone leaves a
trace: a later session associated while the deleted one was in the memory may have taken one of its
nodes among its top-`mem_threshold` candidates, so its GMM split (and so its edges to *other*
nodes) was made on a candidate list a store that never saw the session would not have had.
The exact path re-associates exactly those sessions, in their original order, against the memory
without the deleted one; afterwards edges and rankings equal those of a store that never saw it
(when association scanned exactly; an ANN-associated memory is re-associated by an exact scan).

Which sessions: each associated node keeps its candidate floor (the k-th best candidate score,
`Memory.node_floor`); a later pool node whose score with any deleted pool node reaches its floor had
it among its candidates. Nothing else changes its candidates (a delete removes nodes, never adds),
so the check costs one product of the later pool nodes with the deleted ones.

`exact=False` keeps the cheap path: the session's nodes and edges go, the other edges stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sklearn

from memgas.association import AssociationConfig
from memgas.memory import Memory


@dataclass
class Forgotten:
    """What a delete changed: the removed node keys, the session's unit texts (for the caches to
    drop) and, per later session whose association was redone, its node keys, new edges (by node
    key) and floors, for the database to rewrite."""

    keys: list[int]
    texts: list[str]
    exact: bool
    redone: list[dict] = field(default_factory=list)


def unit_texts(session: dict) -> list[str]:
    u = session["units"]
    return [*u["session"], *u["turn"], *u["summary"], *u["keywords"]]


def delete_session(mem: Memory, session_id: str, cfg: AssociationConfig | None = None) -> Forgotten | None:
    """Forget one session; with `cfg`, exactly (the later sessions it influenced are re-associated).
    Returns None when the session is not there."""
    idx = mem._sids.get(session_id)
    if idx is None:
        return None
    sess = mem.node_sess
    mine = np.flatnonzero(sess == idx)
    keep = np.flatnonzero(sess != idx)
    pool = tuple(cfg.pool) if cfg is not None else ()
    deleted_pool = mem.rows[[p for p in mine if mem.node_gran[p] in pool]].copy()
    out = Forgotten([mem.node_keys[i] for i in mine], unit_texts(mem.sessions[idx]), cfg is not None)
    new_pos = np.full(len(sess), -1, dtype=np.int64)
    new_pos[keep] = np.arange(len(keep))
    mem.edges = [(int(new_pos[a]), int(new_pos[b])) for a, b in mem.edges if new_pos[a] >= 0 and new_pos[b] >= 0]
    mem._buf, mem._n = mem.rows[keep].copy(), len(keep)  # a fresh buffer: the old one (and its rows) is dropped
    mem.node_gran = [mem.node_gran[i] for i in keep]
    mem.node_sess_list = [int(s_ - (s_ > idx)) for s_ in sess[keep]]
    mem.node_keys = [mem.node_keys[i] for i in keep]
    mem.node_floor = [mem.node_floor[i] for i in keep]
    del mem.sessions[idx]
    mem._reset_derived()  # also drops the ANN index: rebuilt from the kept vectors on first use, since
    # usearch's remove (even with compact=True) leaves the vector's bytes in the index's memory
    if cfg is not None:
        out.redone = _reassociate_after(mem, idx, deleted_pool, cfg)
    return out


def _reassociate_after(mem: Memory, idx: int, deleted: np.ndarray, cfg: AssociationConfig) -> list[dict]:
    """Redo the association of every node from session `idx` on (new numbering) that a store without
    the deleted session would have associated differently; returns what changed, per session.

    Node by node: a later node whose candidates did not include a deleted node keeps its exact
    candidate list, so its GMM split and edges are already those of a store that never saw the
    session (the split is deterministic given the list); only the nodes that had one are redone."""
    n = len(mem.sessions)
    if idx >= n:
        return []
    sess = mem.node_sess
    pool = np.isin(np.asarray(mem.node_gran, dtype=object), list(cfg.pool))
    floors = np.asarray(mem.node_floor, dtype=np.float64)
    redo: dict[int, list[int]] = {}  # session -> its nodes to redo
    # a session that moved below `start_session` would never have been associated: its edges go
    for s in range(idx, min(n, cfg.start_session)):
        mine = sess == s
        if np.isfinite(floors[mine]).any() or any(sess[a] == s for a, _ in mem.edges):
            redo[s] = [int(p) for p in np.flatnonzero(mine)]
    later = np.flatnonzero((sess >= max(idx, cfg.start_session)) & pool)
    if len(later) and len(deleted):
        best = (mem.rows[later] @ deleted.T).max(axis=1)
        f = floors[later]
        hit = np.isnan(f) | (best >= f - 1e-6)  # nan: floor unknown (older store), so redo to be exact
        for p in later[hit]:
            redo.setdefault(int(sess[p]), []).append(int(p))
    if not redo:
        return []
    pool_pos = np.asarray(mem._pool_positions(tuple(cfg.pool)), dtype=np.int64)
    pool_rows = mem.rows[pool_pos]  # once: re-association changes edges, never nodes
    new_edges, changed, redone_nodes = [], [], set()
    # hundreds of GMM fits on 30 numbers: scikit-learn's input checks were a third of their time
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for s in sorted(redo):  # the original order (association only reads earlier nodes)
            new_edges += _redo_session(mem, s, np.asarray(redo[s], dtype=np.int64), pool_pos, pool_rows, cfg, changed)
            redone_nodes.update(redo[s])
    # edges stay ordered by their new node, each node's in candidate order, as `Memory.add` makes them
    mem.edges = sorted([e for e in mem.edges if e[0] not in redone_nodes] + new_edges, key=lambda e: e[0])
    mem._adj, mem._graphs = None, {}
    return changed


def _redo_session(mem: Memory, s: int, pos: np.ndarray, pool_pos, pool_rows, cfg: AssociationConfig, changed: list):
    """Re-associate nodes `pos` of session `s` against the earlier sessions' pool nodes; records the
    change in `changed`, returns the new edges (positions)."""
    lo = int(np.flatnonzero(mem.node_sess == s)[0])
    gran = [mem.node_gran[p] for p in pos]
    if s >= cfg.start_session:
        cut = int(np.searchsorted(pool_pos, lo))  # the earlier sessions' pool nodes: a prefix (views)
        edges, fl = mem.associate_nodes(mem.rows[pos], gran, 0, cfg, before=(pool_pos[:cut], pool_rows[:cut]))
        edges = [(int(pos[a]), b) for a, b in edges]  # row k of the batch is node pos[k]
    else:
        edges, fl = [], [float("nan")] * len(pos)
    for p, f_ in zip(pos, fl):
        mem.node_floor[p] = f_
    changed.append(
        {
            "session": s,
            "keys": [mem.node_keys[p] for p in pos],
            "edges": [(mem.node_keys[a], mem.node_keys[b]) for a, b in edges],
            "floors": [(mem.node_keys[p], f_) for p, f_ in zip(pos, fl)],
        }
    )
    return edges
