"""Stage 2½ of the recipe: every trained method's settings chosen on train users, on evidence.

OPPU's settings (`eval.oppu_grid`), the stack's (`eval.stacking_grid`) and `mta_prior`'s λ
(`eval.lambda_grid`) are each chosen among their candidates on the SAME train users that are not
anchors (each seen as a few-shot user: newest `select_profile_cap` items as profile, its own query
held out), never on the evaluated split. Each candidate's score is the mean of the per-query main
metric with its standard error; the choice records its margin over the runner-up and the paired
standard error of that margin, and is flagged when the margin is under one standard error (the
data cannot tell the two apart). Each trained candidate's mean relative update ‖ΔW‖/‖W‖ is kept,
so an adapter that barely moved (an "untrained" OPPU) is visible beside its score.

The choices are written to OUT/selection.json; `eval.selection_from` reuses such a file in another
run (another job, another day) when everything the choice depends on matches (`fingerprint`); the
code version it was made at is recorded beside, and a run at other code says so.

Experiments (`eval.purpose: experiment`) choose on at least `MIN_SELECT_USERS` users among at
least `MIN_CANDIDATES` candidates per method, the same counts for every method
(`check_budgets`); a pipeline check may use fewer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from mta.calibration import mta_prior_scores, predictions
from mta.config import MIN_CANDIDATES, MIN_SELECT_USERS, _uses_labels, resolve_calibration
from mta.data import task_info
from mta.evaluate import per_query_scores, primary_metric
from mta.per_user import load_users, record_key, split_digest
from suite.config import ConfigError
from suite.io import atomic_write_json
from suite.models import model_identity
from suite.provenance import code_version

# trained method -> (the config field its candidates replace, the grid holding them, the method run)
TUNED = {"stack": ("stacking", "stacking_grid", "mta"), "oppu": ("oppu", "oppu_grid", "oppu")}


def candidate_stats(per_candidate: list[list[float]], higher: bool) -> dict:
    """Means, standard errors, the chosen index (ties: the first), its margin over the runner-up,
    the paired standard error of that margin and whether the margin is under one standard error.
    `per_candidate[k]`: the per-query main metric of candidate k, on the same queries in order."""
    arr = [np.asarray(s, dtype=np.float64) for s in per_candidate]
    n = {len(a) for a in arr}
    if len(n) != 1:
        raise ConfigError(f"selection: candidates scored on unequal query counts {sorted(n)}")
    means = [float(a.mean()) for a in arr]
    ses = [float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else float("nan") for a in arr]
    sign = 1.0 if higher else -1.0
    best = max(range(len(arr)), key=lambda k: (sign * means[k], -k))
    out = {"scores": means, "se": ses, "best": best, "margin": None, "margin_se": None, "flagged": False}
    if len(arr) > 1:
        runner = max((k for k in range(len(arr)) if k != best), key=lambda k: (sign * means[k], -k))
        d = arr[best] - arr[runner]
        se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else float("nan")
        margin = abs(means[best] - means[runner])
        out.update(
            {
                "runner_up": runner,
                "margin": margin,
                "margin_se": se,
                "flagged": bool(not (margin > se)),  # nan se (one query) is flagged too
            }
        )
    return out


def check_budgets(selection: dict[str, dict], purpose: str) -> None:
    """Refuse a selection whose methods chose on different user counts or different numbers of
    candidates, or (for experiments) on fewer than MIN_SELECT_USERS users or MIN_CANDIDATES
    candidates: equal budgets in count and in evidence."""
    if not selection:
        return
    users = {m: v["users"] for m, v in selection.items()}
    cands = {m: len(v["candidates"]) for m, v in selection.items()}
    if len(set(users.values())) > 1:
        raise ConfigError(f"selection: unequal user counts {users}: every trained method chooses on the same users")
    if len(set(cands.values())) > 1:
        raise ConfigError(f"selection: unequal candidate counts {cands}: give every trained method as many")
    if purpose == "experiment":
        few = {m: u for m, u in users.items() if u < MIN_SELECT_USERS}
        if few:
            raise ConfigError(
                f"selection: {few} train users; an experiment chooses on at least {MIN_SELECT_USERS} "
                "(data.select_users), or set eval.purpose=pipeline_check"
            )
        small = {m: c for m, c in cands.items() if c < MIN_CANDIDATES}
        if small:
            raise ConfigError(
                f"selection: {small} candidates; an experiment chooses among at least {MIN_CANDIDATES} "
                "(eval.oppu_grid, eval.stacking_grid, eval.lambda_grid), or set eval.purpose=pipeline_check"
            )


def selection_users(cfg, anchor_ids: list[str]):
    """The train users every method chooses on (the first `data.select_users` that are not
    anchors) and their questions file; fewer than asked is refused, never silently used."""
    users, path = load_users(cfg, cfg.data.train_split, anchor_ids)
    want = cfg.data.select_users
    if len(users) < want:
        raise ConfigError(
            f"data.select_users={want}: the {cfg.data.train_split} split of {cfg.data.task} has only "
            f"{len(users)} users that are not anchors"
        )
    return users[:want], path


def _record(cfg, candidates, stats, metric, users, rel_updates=None) -> dict:
    rec = {
        "candidates": candidates,
        **{k: v for k, v in stats.items() if k != "best"},
        "metric": metric,
        "choice": candidates[stats["best"]],
        "users": len(users),
        "queries": sum(len(u.queries) for u in users),
        "split": cfg.data.train_split,
    }
    if rel_updates is not None:
        rec["rel_update"] = rel_updates
    return rec


def select_setting(cfg, ev, anchor_ids: list[str], bank_sig: str, what: str, log=print, done=None, on_candidate=None):
    """One trained method's settings chosen on the selection users: every candidate of its grid
    runs the method on the same users; the best mean main metric under the primary calibration
    wins. Returns the config with the winner and the selection record. `done` ({index: row}):
    candidates an earlier, stopped run finished (reused when the candidate is the same);
    `on_candidate(index, row)` is called as each new one finishes, so a stop loses at most one."""
    field_name, grid_name, method = TUNED[what]
    task = cfg.data.task
    users, path = selection_users(cfg, anchor_ids)
    metric, mode = primary_metric(task)
    label_mode = _uses_labels(task, cfg.eval.inference)
    cal = resolve_calibration(task, cfg.eval.calibration)
    grid = getattr(cfg.eval, grid_name)
    per_cand, rel, higher, reused = [], [], True, []
    for i, cand in enumerate(grid):
        row = (done or {}).get(str(i))
        if row and row["candidate"] == cand:
            per_cand.append(row["scores"])
            rel.append(row["rel_update"])
            higher = row["higher"]
            reused.append(i)
            log(f"[select] {what} {cand}: {metric} {np.mean(row['scores']):.4f} (finished by an earlier run)")
            continue
        c = dataclasses.replace(cfg, **{field_name: dataclasses.replace(getattr(cfg, field_name), **cand)})
        e = ev.with_log(record_key(c, split_digest(path), bank_sig), "select_user.jsonl")
        e.cfg = c
        recs = e.run(users, methods=[method])
        p = predictions(task, recs, [method], label_mode, cal)[method]
        scores, _, higher = per_query_scores(task, p, [g for r in recs for g in r["golds"]])
        per_cand.append(scores)
        ru = [r["cost"][method]["rel_update"] for r in recs if "rel_update" in r.get("cost", {}).get(method, {})]
        rel.append(float(np.mean(ru)) if ru else None)
        if on_candidate:
            on_candidate(i, {"candidate": cand, "scores": scores, "rel_update": rel[-1], "higher": higher})
        log(f"[select] {what} {cand}: {metric} {np.mean(scores):.4f} on {len(users)} train users")
    stats = candidate_stats(per_cand, higher)
    chosen = dataclasses.replace(
        cfg, **{field_name: dataclasses.replace(getattr(cfg, field_name), **grid[stats["best"]])}
    )
    rec = _record(cfg, list(grid), stats, metric, users, rel)
    if reused:
        rec["reused_candidates"] = reused
    return chosen, rec


def select_lambda(cfg, ev, anchor_ids: list[str], bank_sig: str) -> dict:
    """mta_prior's λ chosen on the selection users (MTA's label scores are computed once and
    every λ re-scores them)."""
    task = cfg.data.task
    users, path = selection_users(cfg, anchor_ids)
    recs = ev.with_log(record_key(cfg, split_digest(path), bank_sig), "select_user.jsonl").run(users, methods=["mta"])
    cal = resolve_calibration(task, cfg.eval.calibration)
    labels = task_info(task)["labels"]
    golds = [g for r in recs for g in r["golds"]]
    per_cand, higher = [], True
    for lam in cfg.eval.lambda_grid:
        s = mta_prior_scores(recs, cal, lam)
        scores, _, higher = per_query_scores(task, [labels[i] for i in s.argmax(1)], golds)
        per_cand.append(scores)
    stats = candidate_stats(per_cand, higher)
    return _record(cfg, list(cfg.eval.lambda_grid), stats, primary_metric(task)[0], users)


SELECTION_FILE = "selection.json"
_FP_EVAL = ("oppu_grid", "stacking_grid", "lambda_grid", "prior_lambda", "inference", "calibration")
_FP_EVAL += ("rag_k", "history_k", "max_new_tokens", "seed", "recency_decay")


def fingerprint(cfg, train_sha: str, bank_sig: str) -> dict:
    """Everything a selection depends on but the code: the users it chose on (train split, its
    digest, how many, their profile cap), the bank's recipe (`bank_sig`: its signature, so a bank
    retrained by the same recipe matches; each choice records the weights it saw under `made_by`),
    the model and encoder, the base settings the candidates replace, the grids and how answers
    are scored."""
    d = cfg.data
    return {
        "data": {k: getattr(d, k) for k in ("task", "train_split", "scheme", "select_users", "select_profile_cap")},
        "train_sha": train_sha,
        "bank": bank_sig,
        "model": model_identity(cfg.model),
        "encoder": cfg.encoder,
        "fusion": dataclasses.asdict(cfg.fusion),
        "stacking": dataclasses.asdict(cfg.stacking),
        "oppu": dataclasses.asdict(cfg.oppu),
        "eval": {k: getattr(cfg.eval, k) for k in _FP_EVAL},
    }


def write_selection(out: Path, choices: dict, fp: dict) -> Path:
    """OUT/selection.json: the choices (records, λ, budgets), what they depend on, and the code."""
    path = Path(out) / SELECTION_FILE
    atomic_write_json(path, {**choices, "fingerprint": fp, "code_version": code_version(("mta", "suite"))})
    return path


def load_selection(path: str | Path, fp: dict, bank_content: str | None = None) -> dict:
    """The choices of a selection.json whose fingerprint equals `fp` (else a ConfigError naming the
    parts that differ), with {"file", "sha256", "code_version", "same_code"} under "selection_from"."""
    p = Path(path)
    try:
        raw = p.read_bytes()
        data = json.loads(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"eval.selection_from: {p}: cannot read a selection.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("selection"), dict) or "fingerprint" not in data:
        raise ConfigError(f"eval.selection_from: {p}: not a selection.json (no selection and fingerprint)")
    theirs = json.loads(json.dumps(data["fingerprint"]))
    mine = json.loads(json.dumps(fp))  # tuples and lists compare as JSON does
    if bank_content and theirs.get("bank") == bank_content:  # a file keyed by the bank's weights (older runs)
        theirs["bank"] = mine.get("bank")
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise ConfigError(
            f"eval.selection_from: {p}: made for another configuration ({', '.join(differ)} differ): "
            "its choices say nothing about this one"
        )
    here = code_version(("mta", "suite"))
    data["selection_from"] = {
        "file": str(p),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "code_version": data.get("code_version"),
        "same_code": data.get("code_version") == here,
    }
    return data
