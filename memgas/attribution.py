"""Mechanism attribution: how much of a MemGAS ranking each path decides (pure numpy, no I/O).

A configuration's flags say which mechanisms are on; this says what they DO on a query. From the
trace of `memgas.retrieval.rank_sessions`, a session's score splits into paths:

- `dense`: the seed scores that dense granularities put on the graph's nodes (what survives of
  the seeds after PageRank's restart, `reset` split by each granularity's share of the node score);
- `lexical:<g>`: the same for a lexical granularity seeded into the graph (`lexical_mode: seed`);
- `graph`: what personalised PageRank moved (final − reset: positive on the nodes the walk reaches,
  negative on the seeds that lost mass);
- `bypass:<g>`: a lexical granularity added after the graph (`lexical_mode: bypass`).

A top-k place is *decided* by the path with the largest part of that session's score (sum
aggregation), or by the path of the term that attains the maximum (max aggregation), split the
same way. A session that only the 1e-6 tie-break placed is decided by `tie-break`. Beside it:
the recall of each path alone (`graph` = the in-graph pipeline, seeds and PageRank, without
bypass; `dense` = every graph node's dense score, no PageRank; each lexical granularity alone),
and each granularity's router entropy over its maximum log N (about 1 = a uniform softmax, so the
router cannot prefer it on this query).
"""

from __future__ import annotations

import numpy as np

from memgas.router import entropy, softmax

LEX_NODES = {"bm25_session": "session", "bm25_turn": "turn"}


def _path(g: str) -> str:
    return f"lexical:{g}" if g in LEX_NODES else "dense"


def _agg(n: int, owner: np.ndarray, vals: np.ndarray, how: str) -> np.ndarray:
    out = np.zeros(n) if how == "sum" else np.full(n, -np.inf)
    (np.add.at if how == "sum" else np.maximum.at)(out, owner, vals)
    if how != "sum":
        out[~np.isfinite(out)] = 0.0
    return out


def node_parts(trace: dict, n_rows: int) -> dict[str, np.ndarray]:
    """Per graph node (aligned with trace["gidx"]): each path's part of the node's final score;
    the parts add up to `final`."""
    gidx, reset, final = trace["gidx"], trace["reset"], trace["final"]
    gscore = trace["node_scores"]
    parts: dict[str, np.ndarray] = {}
    safe = np.where(gscore != 0, gscore, 1.0)
    for g in trace["in_graph"]:
        full = np.zeros(n_rows)
        np.add.at(full, trace["node_idx"][g], trace["node_score"][g])
        share = np.where(gscore != 0, full[gidx] / safe, 0.0)
        p = _path(g)
        parts[p] = parts.get(p, np.zeros(len(gidx))) + reset * share
    parts["graph"] = final - reset
    return parts


def decided(trace: dict, order: np.ndarray, n_sess: int, n_rows: int, k: int = 5) -> dict[str, int]:
    """Path -> how many of the top-k places it decides (see the module docstring)."""
    how = trace["agg"]
    owner = trace.get("owner")
    parts = node_parts(trace, n_rows) if owner is not None and len(trace["gidx"]) else {}
    bypass = trace.get("bypass", {})
    out: dict[str, int] = {}
    top = [int(s) for s in order[:k]]
    if how == "sum":
        comp = {p: _agg(n_sess, owner, v, "sum") for p, v in parts.items()}
        comp.update({f"bypass:{g}": _agg(n_sess, o, s, "sum") for g, (o, s) in bypass.items()})
        for s in top:
            vals = {p: c[s] for p, c in comp.items()}
            p = max(vals, key=vals.get) if vals and max(vals.values()) > 0 else "tie-break"
            out[p] = out.get(p, 0) + 1
        return out
    final = trace.get("final")
    for s in top:
        cands = []  # (value, path) of each term that could attain the session's maximum
        if owner is not None and len(owner):
            mine = np.flatnonzero(owner == s)
            if len(mine):
                i = mine[np.argmax(final[mine])]
                node = {p: v[i] for p, v in parts.items()}
                cands.append((final[i], max(node, key=node.get)))
        for g, (o, sc) in bypass.items():
            mine = np.flatnonzero(o == s)
            if len(mine):
                cands.append((float(sc[mine].max()), f"bypass:{g}"))
        best = max(cands, default=(0.0, "tie-break"))
        p = best[1] if best[0] > 0 else "tie-break"
        out[p] = out.get(p, 0) + 1
    return out


def alone_rankings(trace: dict, n_sess: int) -> dict[str, np.ndarray]:
    """Path -> sessions ranked by that path alone (best first)."""
    how = trace["agg"]
    out = {}
    owner = trace.get("owner")
    if owner is not None and len(trace["gidx"]):
        tie = _agg(n_sess, owner, trace["node_scores"], "max")
        out["graph"] = _agg(n_sess, owner, trace["final"], how) + 1e-6 * tie
        gidx = trace["gidx"]
        dense = np.zeros(int(gidx.max()) + 1 if len(gidx) else 0)
        for g in trace["in_graph"]:
            if _path(g) == "dense":
                np.add.at(dense, trace["node_idx"][g], trace["node_score"][g])
        if any(_path(g) == "dense" for g in trace["in_graph"]):
            out["dense"] = _agg(n_sess, owner, dense[gidx], how)
    for g in trace.get("lexical", []):
        o = trace["lex_owner"][g]
        out[f"lexical:{g}"] = _agg(n_sess, o, trace["node_score"][g], how)
    return {p: np.argsort(-v, kind="stable") for p, v in out.items()}


def entropy_ratio(trace: dict, temperature: float) -> dict[str, float]:
    """Granularity -> H(softmax(raw / T)) / log N (1 = uniform: the router sees nothing)."""
    out = {}
    for g, s in trace["raw"].items():
        if len(s) > 1:
            out[g] = entropy(softmax(s, temperature)) / float(np.log(len(s)))
    return out


def summarize_attribution(records: list[dict], method: str) -> dict:
    """Across questions: the share of top-k places each path decides, each path's mean recall
    alone, each granularity's mean entropy over log N, and the router weights' sd across questions."""
    att = [r["attribution"][method] for r in records if method in r.get("attribution", {})]
    if not att:
        return {}
    places = sum(sum(a["decided"].values()) for a in att)
    paths = sorted({p for a in att for p in a["decided"]})
    share = {p: sum(a["decided"].get(p, 0) for a in att) / max(1, places) for p in paths}
    alone_keys = sorted({p for a in att for p in a.get("alone", {})})
    alone = {p: float(np.mean([a["alone"][p] for a in att if p in a.get("alone", {})])) for p in alone_keys}
    grans = sorted({g for a in att for g in a.get("entropy_ratio", {})})
    ent = {g: float(np.mean([a["entropy_ratio"][g] for a in att if g in a["entropy_ratio"]])) for g in grans}
    ws = [r["router"][method] for r in records if method in r.get("router", {})]
    wg = sorted({g for w in ws for g in w})
    sd = {g: float(np.std([w.get(g, 0.0) for w in ws])) for g in wg} if ws else {}
    return {
        "questions": len(att),
        "decided_share": share,
        "graph_share": share.get("graph", 0.0),
        "recall_all@5_alone": alone,
        "entropy_over_log_n": ent,
        "router_weight_sd": sd,
        "router_weight_sd_max": max(sd.values(), default=0.0),
    }


def qualifies(att: dict, min_graph_share: float = 0.25, min_router_sd: float = 0.02) -> tuple[bool, str]:
    """Does a configuration's attribution show MemGAS's mechanisms at work: the graph decides at
    least `min_graph_share` of the top-5 places and some granularity's router weight varies across
    questions with sd >= `min_router_sd`? Returns (ok, why)."""
    if not att:
        return False, "no attribution recorded"
    g, sd = att.get("graph_share", 0.0), att.get("router_weight_sd_max", 0.0)
    why = f"graph decides {g:.1%} of top-5 places (need {min_graph_share:.0%}), router weight sd max {sd:.3f} "
    why += f"(need {min_router_sd})"
    return (g >= min_graph_share and sd >= min_router_sd), why
