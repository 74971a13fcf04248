"""The summary block of one task: metrics per method, exact paired tests against MTA at the user
level with Holm's correction, under the primary calibration and without (an order must hold under
both), costs, relative updates and the overlap split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mta.calibration import predictions
from mta.config import resolve_calibration
from mta.data import (
    save_outputs,
)
from mta.evaluate import (
    CALIBRATIONS,
    METHOD_INDEPENDENT,
    per_query_scores,
    primary_metric,
    score_task,
)
from suite.stats import compare, deciding_test, describe

COSTED = ("oppu", "fusion", "mta", "mta_swept")  # the methods that adapt per user, with their costs


def require_both_calibrations(primary: dict, uncalibrated: dict) -> None:
    """An order must hold under every calibration shown: where the uncalibrated test's verdict
    differs from the primary one, the verdict becomes "n.s." with `calibration_dependent: true`
    (the primary verdict is kept as `verdict_primary`). Mutates `primary`'s rows."""
    for m, v in primary.items():
        other = uncalibrated.get(m, {}).get("verdict", "n.s.")
        v["verdict_primary"] = v["verdict"]
        v["verdict_uncalibrated"] = other
        v["calibration_dependent"] = other != v["verdict"]
        if v["calibration_dependent"]:
            v["verdict"] = "n.s."


def summarize(
    task: str,
    records: list[dict],
    methods: list[str],
    label_mode: bool,
    calibration: str,
    out_dir: str | Path | None = None,
    lam: float = 0.0,
    n_boot: int = 10000,
    reference: str = "mta",
    overlap: dict[str, bool] | None = None,
) -> dict:
    """Turn per-user records into the summary block of one task (and write predictions): metrics
    per method under the primary calibration (the same for every method), the other calibrations
    beside, exact paired tests of every method against MTA with Holm's correction (`vs_mta`; users
    are the resampled unit), the same tests without calibration (an order holds only when both
    agree), costs, each trained adapter's relative update, and results split by whether the query
    item occurs in an anchor's profile (`overlap`: query id -> bool)."""
    calibration = resolve_calibration(task, calibration)
    qids = [q for r in records for q in r["queries"]]
    golds = [g for r in records for g in r["golds"]]
    users = [r["user_id"] for r in records for _ in r["queries"]]
    res: dict = {
        "n_users": len(records),
        "n_queries": len(qids),
        "methods": {},
        "inference": "label_scoring" if label_mode else "greedy",
        "calibration": calibration if label_mode else None,
    }
    preds = predictions(task, records, methods, label_mode, calibration, lam)
    per_q, binary, higher = {}, False, True
    for m, p in preds.items():
        res["methods"][m] = score_task(task, p, golds)
        per_q[m], binary, higher = per_query_scores(task, p, golds)
        if out_dir is not None:
            save_outputs(Path(out_dir) / "predictions" / task / f"{m}.json", task, dict(zip(qids, p)))
    if "mta_prior" in preds:
        res["mta_prior_lambda"] = lam

    def table(pq: dict, ref: str) -> dict:
        return compare(pq, ref, binary, higher, n_boot, clusters=users)

    res["vs_mta"] = table(per_q, reference)
    pr_keys = ("prior_recency", "mta", "mta_prior")
    if "prior_recency" in per_q:  # the stretch target: does the model add anything to the best model-free prior?
        res["vs_prior_recency"] = table({m: per_q[m] for m in pr_keys if m in per_q}, "prior_recency")
    if label_mode and calibration != "none":  # an order of methods must not be made by the calibration
        none_q = {
            m: per_query_scores(task, p, golds)[0]
            for m, p in predictions(task, records, methods, True, "none", lam).items()
        }
        res["vs_mta_uncalibrated"] = table(none_q, reference)
        require_both_calibrations(res["vs_mta"], res["vs_mta_uncalibrated"])
        if "vs_prior_recency" in res:
            res["vs_prior_recency_uncalibrated"] = table(
                {m: none_q[m] for m in pr_keys if m in none_q}, "prior_recency"
            )
            require_both_calibrations(res["vs_prior_recency"], res["vs_prior_recency_uncalibrated"])
    if "mta_swept" in per_q:  # the sweep's choice against every other row (its own Holm family)
        res["vs_mta_swept"] = table(per_q, "mta_swept")
        if "vs_mta_uncalibrated" in res:
            res["vs_mta_swept_uncalibrated"] = table(none_q, "mta_swept")
            require_both_calibrations(res["vs_mta_swept"], res["vs_mta_swept_uncalibrated"])
    res["vs_mta_note"] = (
        "diff = method - MTA on the per-query "
        + primary_metric(task)[0]
        + ("" if higher else " (absolute error: lower is better)")
        + "; "
        + describe(binary, "users", deciding_test(res["vs_mta"]))
        + (f"; primary calibration {calibration}, the same for every method" if label_mode else "")
    )
    if label_mode:
        res["calibration_alternatives"] = {
            c: {
                m: score_task(task, p, golds)
                for m, p in predictions(task, records, methods, True, c, lam).items()
                if not m.startswith("prior")
            }
            for c in CALIBRATIONS
            if c != calibration and (c != "adapter_content_free" or all(r.get("cf") for r in records))
        }
        res["calibration_alternatives_note"] = (
            f"{', '.join(METHOD_INDEPENDENT)} are the same for every method; adapter_content_free and "
            "batch depend on the method (or on the other evaluated users) and never order methods"
        )
    if "mta" in preds and "fusion" in preds:  # is stage 3 exercised at all?
        res["mta_differs_from_fusion"] = float(np.mean([a != b for a, b in zip(preds["mta"], preds["fusion"])]))
    cost = lambda key, f: [r["cost"][key][f] for r in records if f in r.get("cost", {}).get(key, {})]  # noqa: E731
    res["bytes_per_user"] = {k: float(np.mean(cost(k, "bytes"))) for k in COSTED if cost(k, "bytes")}
    res["adapt_s_per_user"] = {k: float(np.mean(cost(k, "seconds"))) for k in COSTED if cost(k, "seconds")}
    res["rel_update"] = {
        name: float(np.mean(cost(k, "rel_update")))
        for k, name in (("oppu", "oppu"), ("mta", "stack"), ("mta_swept", "stack_swept"))
        if cost(k, "rel_update")
    }
    ms = cost("fusion", "merge_ms")
    if ms:
        res["merge_ms_per_user"] = float(np.mean(ms))
    o, m_ = res["bytes_per_user"].get("oppu"), res["bytes_per_user"].get("mta")
    a_o, a_m = res["adapt_s_per_user"].get("oppu"), res["adapt_s_per_user"].get("mta")
    if o and m_:
        res["ratios"] = {"bytes_mta_over_oppu": m_ / o}
        if a_o and a_m:
            res["ratios"]["adapt_s_mta_over_oppu"] = a_m / a_o
    if overlap is not None:
        res["by_overlap"] = {}
        for side, want in (("overlap", True), ("no_overlap", False)):
            idx = [i for i, q in enumerate(qids) if overlap.get(q) is want]
            res["by_overlap"][side] = {
                "n": len(idx),
                "methods": {m: score_task(task, [p[i] for i in idx], [golds[i] for i in idx]) for m, p in preds.items()}
                if idx
                else {},
            }
        res["by_overlap"]["note"] = "overlap: the query item's content occurs in some anchor's training profile"
    return res
