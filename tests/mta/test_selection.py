"""Choices made on evidence: equal budgets, standard errors, flagged margins; and the rule that an
order of methods must hold under both calibrations."""

import numpy as np
import pytest

from mta.data import task_info
from mta.recipe import MTAJobConfig
from mta.selection import candidate_stats, check_budgets
from mta.verdicts import require_both_calibrations, summarize
from suite.config import ConfigError, load_config


def _sel(users=32, cands=4):
    return {"candidates": list(range(cands)), "users": users}


def test_unequal_user_or_candidate_counts_are_refused():
    """Mutation caught: `check_budgets` comparing only one of the two counts (or neither)."""
    check_budgets({"oppu": _sel(), "stack": _sel(), "mta_prior_lambda": _sel()}, "experiment")
    with pytest.raises(ConfigError, match="unequal user counts"):
        check_budgets({"oppu": _sel(32), "stack": _sel(40)}, "experiment")
    with pytest.raises(ConfigError, match="unequal candidate counts"):
        check_budgets({"oppu": _sel(32, 4), "stack": _sel(32, 5)}, "experiment")
    with pytest.raises(ConfigError, match="at least 32"):
        check_budgets({"oppu": _sel(8, 4), "stack": _sel(8, 4)}, "experiment")
    with pytest.raises(ConfigError, match="at least 4"):
        check_budgets({"oppu": _sel(32, 2), "stack": _sel(32, 2)}, "experiment")
    check_budgets({"oppu": _sel(8, 2), "stack": _sel(8, 2)}, "pipeline_check")  # a smoke run may be small


def test_an_experiment_with_too_little_evidence_fails_when_its_config_is_read():
    """Before any work: fewer than 32 selection users or fewer than 4 candidates per trained method.
    Mutation caught: removing the experiment check in MTAConfig.__post_init__."""
    four = [
        "eval.oppu_grid=[{lr: 1.0e-4}, {lr: 3.0e-4}, {lr: 1.0e-3}, {lr: 3.0e-3}]",
        "eval.stacking_grid=[{max_steps: 1}, {max_steps: 2}, {max_steps: 3}, {max_steps: 4}]",
        "eval.prior_lambda=-1",
        "eval.lambda_grid=[0.25, 0.5, 1.0, 2.0]",
    ]
    load_config(MTAJobConfig, None, [*four, "data.select_users=32"])
    with pytest.raises(ConfigError, match="at least 32 train users"):
        load_config(MTAJobConfig, None, [*four, "data.select_users=8"])
    two = ["eval.oppu_grid=[{lr: 1.0e-4}, {lr: 1.0e-3}]", "eval.stacking_grid=[{max_steps: 1}, {max_steps: 2}]"]
    with pytest.raises(ConfigError, match="at least 4"):
        load_config(MTAJobConfig, None, [*two, "eval.prior_lambda=-1", "eval.lambda_grid=[0.5, 2.0]"])
    with pytest.raises(ConfigError, match="unequal tuning budgets"):
        load_config(MTAJobConfig, None, [*four[:3], "eval.lambda_grid=[0.5, 1.0, 2.0, 4.0, 8.0]"])


def test_candidate_scores_carry_standard_errors_and_a_close_choice_is_flagged():
    """Mutation caught: a margin compared with nothing (never flagged), or an SE that is not the
    standard error of the per-query mean."""
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2, 64).astype(float)
    a[:3] = [0.0, 1.0, 0.0]
    b = a.copy()
    b[:3] = [1.0, 0.0, 1.0]  # 3 queries apart, one net: a margin of 1/64, under its SE of 0.027
    far = np.ones(64)
    st = candidate_stats([a, b, far * 0.0, far], higher=True)
    assert st["best"] == 3 and st["flagged"] is False and st["margin"] == pytest.approx(1 - max(a.mean(), b.mean()))
    assert st["se"][0] == pytest.approx(a.std(ddof=1) / 8)
    close = candidate_stats([a, b], higher=True)
    assert close["flagged"] is True and close["margin"] < close["margin_se"]
    # lower is better (absolute error): the smaller mean wins
    assert candidate_stats([far, far * 0.0], higher=False)["best"] == 1
    with pytest.raises(ConfigError, match="unequal query counts"):
        candidate_stats([a, a[:10]], higher=True)


def _records(n, mta_raw, rag_raw, base_cf, gold):
    return [
        {
            "user_id": f"u{i}",
            "queries": [f"q{i}"],
            "golds": [gold],
            "out": {"mta": [list(mta_raw)], "rag": [list(rag_raw)]},
            "cf": {},
            "cost": {},
            "cf_base": list(base_cf),
        }
        for i in range(n)
    ]


def test_a_verdict_that_the_calibration_makes_becomes_ns():
    """Calibrated, MTA is right on every query and RAG wrong on every query ("worse", p ~ 1e-12);
    uncalibrated, both are wrong on every query (n.s.). The order depends on the calibration, so the
    verdict is n.s. with calibration_dependent. Mutation caught: dropping
    `require_both_calibrations` from `summarize` (the row stays "worse")."""
    labels = task_info("LaMP_2")["labels"]
    k = len(labels)
    base_cf = [5.0] + [0.0] * (k - 1)  # the content-free prompt favours label 0
    mta = [5.5, 1.0] + [0.0] * (k - 2)  # raw: label 0 (wrong); calibrated: label 1 (right)
    rag = [6.0] + [0.0] * (k - 1)  # label 0 either way (wrong)
    recs = _records(40, mta, rag, base_cf, labels[1])
    res = summarize("LaMP_2", recs, ["mta", "rag"], True, "base_content_free", n_boot=200)
    row = res["vs_mta"]["rag"]
    assert res["methods"]["mta"]["accuracy"] == 1.0 and res["methods"]["rag"]["accuracy"] == 0.0
    assert row["verdict_primary"] == "worse" and row["verdict_uncalibrated"] == "n.s."
    assert row["calibration_dependent"] is True and row["verdict"] == "n.s."
    # an order that holds under both calibrations is kept
    rag_both = [0.0, 0.0, 9.0] + [0.0] * (k - 3)  # label 2: wrong either way; MTA right when calibrated only
    res = summarize("LaMP_2", _records(40, [0.0, 1.0] + [0.0] * (k - 2), rag_both, base_cf, labels[1]),
                    ["mta", "rag"], True, "base_content_free", n_boot=200)  # fmt: skip
    row = res["vs_mta"]["rag"]
    assert row["verdict"] == "worse" and row["calibration_dependent"] is False


def test_require_both_calibrations_on_prior_recency_rows():
    """The same rule on the stretch table (`vs_prior_recency`)."""
    primary = {"mta": {"verdict": "better"}, "mta_prior": {"verdict": "n.s."}}
    require_both_calibrations(primary, {"mta": {"verdict": "n.s."}, "mta_prior": {"verdict": "n.s."}})
    assert primary["mta"]["verdict"] == "n.s." and primary["mta"]["calibration_dependent"] is True
    assert primary["mta_prior"]["calibration_dependent"] is False


def test_a_selection_serves_the_same_run_with_or_without_the_sweeps_method():
    """mta_lamp2_swept_cpu.yaml reuses the selection job of mta_lamp2_cpu.yaml: adding `eval.swept`
    (method mta_swept) changes nothing the choices depend on, so the fingerprints are equal, while
    a changed grid is not. Catches: `swept` or `methods` in the fingerprint (the two-job path of the
    swept run would be refused), or a fingerprint blind to the grids."""
    import dataclasses

    from mta.selection import fingerprint

    cfg = load_config(MTAJobConfig, "ray_jobs/configs/mta_lamp2_cpu.yaml")
    swept = dataclasses.replace(
        cfg,
        eval=dataclasses.replace(
            cfg.eval, swept="results/sweep_mta_lamp2/best_config.yaml", methods=[*cfg.eval.methods, "mta_swept"]
        ),
    )
    assert fingerprint(swept, "sha", "bank") == fingerprint(cfg, "sha", "bank")
    other = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, lambda_grid=[0.5, 1.0, 2.0, 4.0]))
    assert fingerprint(other, "sha", "bank") != fingerprint(cfg, "sha", "bank")
