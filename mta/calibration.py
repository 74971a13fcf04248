"""Label-score calibration applied at summary time, the same for every method, and `mta_prior`'s
scores and λ; predictions per method."""

from __future__ import annotations

import numpy as np

from mta.data import (
    task_info,
)
from mta.evaluate import (
    calibrate,
    primary_metric,
    score_task,
)


def _label_scores(records: list[dict], m: str, calibration: str) -> np.ndarray | None:
    outs = [o for r in records for o in r["out"].get(m, [])]
    cfs = [o for r in records for o in r.get("cf", {}).get(m, [])]
    if not outs:
        return None
    base = next((r["cf_base"] for r in records if r.get("cf_base") is not None), None)
    return calibrate(
        np.asarray(outs, dtype=np.float64),
        calibration,
        np.asarray(cfs, dtype=np.float64) if len(cfs) == len(outs) else None,
        np.asarray(base, dtype=np.float64) if base is not None else None,
    )


def mta_prior_scores(records: list[dict], calibration: str, lam: float) -> np.ndarray | None:
    """MTA's calibrated label scores + lambda * log p_user(label)."""
    s = _label_scores(records, "mta", calibration)
    if s is None or any("log_prior" not in r for r in records):
        return None
    lp = np.asarray([r["log_prior"] for r in records for _ in r["queries"]], dtype=np.float64)
    return s + lam * lp


def choose_lambda(task: str, records: list[dict], calibration: str, grid: list[float]) -> tuple[float, dict]:
    """The lambda of mta_prior with the best main metric on `records` (train users, never dev);
    ties → the smallest lambda."""
    labels = task_info(task)["labels"]
    golds = [g for r in records for g in r["golds"]]
    metric, mode = primary_metric(task)
    scores = {}
    for lam in grid:
        s = mta_prior_scores(records, calibration, lam)
        if s is None:
            return 0.0, {}
        scores[lam] = score_task(task, [labels[i] for i in s.argmax(1)], golds)[metric]
    best = (max if mode == "max" else min)(scores.values())
    return min(l for l, v in scores.items() if v == best), {str(k): v for k, v in scores.items()}


def predictions(
    task: str, records: list[dict], methods: list[str], label_mode: bool, calibration: str, lam: float = 0.0
) -> dict[str, list[str]]:
    labels = task_info(task).get("labels", [])
    n = sum(len(r["queries"]) for r in records)
    out = {}
    for m in methods:
        if m == "mta_prior":
            s = mta_prior_scores(records, calibration, lam) if label_mode else None
            if s is not None:
                out[m] = [labels[i] for i in s.argmax(1)]
            continue
        outs = [o for r in records for o in r["out"].get(m, [])]
        if len(outs) != n or not outs:
            continue
        if label_mode and not m.startswith("prior"):
            out[m] = [labels[i] for i in _label_scores(records, m, calibration).argmax(1)]
        else:
            out[m] = [str(o) for o in outs]
    return out
