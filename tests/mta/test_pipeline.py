import json

import pytest

from mta.recipe import MTAJobConfig, run
from suite.config import load_config
from suite.io import read_jsonl


def _cfg(lamp_root, **extra):
    ov = [f"data.root={lamp_root}", f"bank_cache={lamp_root.parent / 'banks'}", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov)


EQUAL_GRIDS = {
    "eval.oppu_grid": "[{lr: 1.0e-4}, {lr: 1.0e-3}]",
    "eval.stacking_grid": "[{max_steps: 1}, {max_steps: 2}]",
    "eval.lambda_grid": "[0.5, 2.0]",
    "eval.prior_lambda": -1,
    "eval.adapter_twin": "true",
    "data.select_users": 6,
    "eval.purpose": "pipeline_check",  # 2 candidates on 6 users: too little for an experiment's choice
}


def v_name(res: dict, row: dict) -> str:
    return next(m for m, v in res["vs_mta"].items() if v is row)


def test_end_to_end_tiny_and_resume(lamp_root, tmp_path):
    out = tmp_path / "run"
    summary = run(_cfg(lamp_root, **EQUAL_GRIDS), out)
    res = summary["mta"]["LaMP_2"]
    assert res["n_users"] == 4
    assert set(res["methods"]) == {
        "base",
        "rag",
        "prior",
        "prior_recency",
        "oppu",
        "fusion",
        "mta",
        "mta_prior",
        "uniform",
        "random",
    }
    assert res["calibration"] == "base_content_free"
    assert set(res["calibration_alternatives"]) == {"adapter_content_free", "batch", "none"}
    assert res["runtime"]["driver"] == {"device": "cpu", "dtype": "float32"}  # mta_tiny.yaml sets model.device=cpu
    # lambda chosen on train users that are not anchors, never on the evaluated dev users
    # every trained method chose among the same number of candidates on the same train users
    sel = res["selection"]
    assert set(sel) == {"oppu", "stack", "mta_prior_lambda"} and res["tuning_budget"] == {
        "oppu": 2,
        "mta (stack)": 2,
        "mta_prior (lambda)": 2,
    }
    for rec in sel.values():
        assert rec["split"] == "train" and rec["users"] > 0 and len(rec["scores"]) == len(rec["candidates"]) == 2
        assert rec["choice"] in rec["candidates"] and len(rec["se"]) == 2 and rec["margin"] is not None
        # the choice is the best mean; its margin is over the runner-up
        best = rec["candidates"].index(rec["choice"])
        assert rec["margin"] == abs(rec["scores"][best] - rec["scores"][1 - best])
    assert len(sel["oppu"]["rel_update"]) == 2 and all(x > 0 for x in sel["oppu"]["rel_update"])
    assert res["mta_prior_lambda"] == sel["mta_prior_lambda"]["choice"]
    assert res["stacking"]["max_steps"] == sel["stack"]["choice"]["max_steps"]
    assert res["oppu"]["lr"] == sel["oppu"]["choice"]["lr"]
    assert set(res["vs_mta"]) == set(res["methods"]) - {"mta"}
    from suite.stats import verdict

    for v in res["vs_mta"].values():
        assert v["ci95"][0] <= v["diff"] <= v["ci95"][1] and 0 <= v["p"] <= v["p_holm"] <= 1
        assert v["n_clusters"] == 4 and v["test"] == "exact McNemar over 4 pairs"  # one query per user
        # the verdict printed is the one both calibrations' tests support, nothing else
        assert v["verdict_primary"] == verdict(v["diff"], v["p_holm"])
        unc = res["vs_mta_uncalibrated"][v_name(res, v)]
        assert v["verdict_uncalibrated"] == unc["verdict"]
        assert v["calibration_dependent"] == (v["verdict_primary"] != unc["verdict"])
        assert v["verdict"] == ("n.s." if v["calibration_dependent"] else v["verdict_primary"])
    # every trained adapter's relative update, and whether the stack moves any prediction
    assert res["rel_update"]["oppu"] > 0 and res["rel_update"]["stack"] > 0
    assert 0.0 <= res["mta_differs_from_fusion"] <= 1.0
    ov = res["by_overlap"]
    assert ov["overlap"]["n"] + ov["no_overlap"]["n"] == res["n_queries"]
    prov = res["provenance"]
    assert len(prov["commit"]) == 40 or prov["commit"] == "unknown"
    assert prov["code_version"] and prov["libraries"]["torch"].startswith("2.13.0")
    assert set(prov["files"]) == {"questions", "golds", "train_questions", "train_golds"}
    assert prov["config"]["eval"]["oppu_grid"]
    from suite.provenance import code_hash_now

    # the code hash is the code's own, taken at the start and again at the end
    assert prov["code_version"] == prov["code_version_end"] == code_hash_now(("mta", "suite"))
    assert prov["code_changed"] is False and prov["code_dirs"] == ["mta", "suite"]
    assert prov["runtime"] == {"device": "cpu", "dtype": "float32"}
    assert len(res["anchors"]) == res["bank"]["anchors"]
    for a in res["anchors"]:
        assert a["rel_update"] > 0 and a["loss_first"] is not None and a["steps"] > 0
    assert res["bytes_per_user"]["bank_amortised"] == res["bank"]["bytes"] / 4
    for m in res["methods"].values():
        assert set(m) == {"accuracy", "f1"} and 0 <= m["accuracy"] <= 1
    # the fixture users prefer one genre 70% of the time: the model-free prior must find it
    assert res["methods"]["prior"]["accuracy"] >= 0.5
    assert 0 < res["bytes_per_user"]["mta"] < res["bytes_per_user"]["oppu"]
    assert res["merge_ms_per_user"] > 0 and set(res["adapt_s_per_user"]) == {"oppu", "fusion", "mta"}
    # MTA's adaptation includes the new user's encoding, retrieval and merge
    assert res["adapt_s_per_user"]["mta"] > res["adapt_s_per_user"]["fusion"] > res["merge_ms_per_user"] / 1000
    assert json.loads((out / "summary.json").read_text()) == summary
    preds = json.loads((out / "predictions" / "LaMP_2" / "mta.json").read_text())
    assert preds["task"] == "LaMP_2" and len(preds["golds"]) == 4
    # resume: a rerun redoes no user and no anchor, and reproduces the summary
    log = out / "per_user.jsonl"
    lines = log.read_text()
    again = run(_cfg(lamp_root, **EQUAL_GRIDS), out)
    assert log.read_text() == lines
    assert again["mta"]["LaMP_2"]["methods"] == res["methods"]


def test_partial_log_resumes_missing_users_only(lamp_root, tmp_path):
    out = tmp_path / "run"
    run(_cfg(lamp_root, **{"eval.methods": "[prior, base]", "data.max_eval_users": 2}), out)
    assert len(read_jsonl(out / "per_user.jsonl")) == 2
    s = run(_cfg(lamp_root, **{"eval.methods": "[prior, base]"}), out)
    recs = read_jsonl(out / "per_user.jsonl")
    assert len(recs) == 4 and len({r["user_id"] for r in recs}) == 4
    assert s["mta"]["LaMP_2"]["n_users"] == 4


def test_sigkill_mid_run_then_rerun_continues_from_the_last_finished_user(tmp_path):
    """The pipeline process is SIGKILLed while it adapts users (stacking, OPPU, scoring): the rerun
    keeps the bank and every finished user, redoes only the rest, and each user is logged once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import make_lamp2

    root = tmp_path / "lamp"
    make_lamp2(root, "train", n_users=8, n_items=6, seed=1, prefix="t")
    make_lamp2(root, "dev", n_users=12, n_items=4, seed=2, prefix="d")
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "ray_jobs.mta_pipeline",
        "--config",
        "ray_jobs/configs/mta_tiny.yaml",
        "--out",
        str(out),
        f"data.root={root}",
        f"bank_path={out / 'bank'}",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    log = out / "per_user.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(read_jsonl(log)) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_jsonl(log)
    assert 2 <= len(before) < 12, "the kill must land mid-run"
    bank_manifest = (out / "bank" / "manifest.json").read_text()
    head = log.read_text()
    run(_cfg(root, bank_path=out / "bank"), out)
    after = read_jsonl(log)
    assert log.read_text().startswith(head.rsplit("\n", 1)[0])  # finished users untouched
    assert sorted(r["user_id"] for r in after) == sorted({r["user_id"] for r in after}) and len(after) == 12
    assert (out / "bank" / "manifest.json").read_text() == bank_manifest  # no anchor retrained


def test_changed_config_recomputes_instead_of_reusing_stale_records(lamp_root, tmp_path):
    out = tmp_path / "run"
    run(_cfg(lamp_root, **{"eval.methods": "[prior, rag]"}), out)
    first = read_jsonl(out / "per_user.jsonl")
    run(_cfg(lamp_root, **{"eval.methods": "[prior, rag]", "eval.rag_k": 3}), out)
    recs = read_jsonl(out / "per_user.jsonl")
    assert len(recs) == 8 and len({r["key"] for r in recs}) == 2  # all four users redone under the new key
    # switching back reuses the first records (same key), nothing is appended
    s = run(_cfg(lamp_root, **{"eval.methods": "[prior, rag]"}), out)
    assert len(read_jsonl(out / "per_user.jsonl")) == 8 and s["mta"]["LaMP_2"]["record_key"] == first[0]["key"]


def test_content_free_calibration_does_not_depend_on_the_other_evaluated_users(lamp_root, tmp_path):
    """With content-free calibration a user's prediction is the same whether 2 or 4 users are evaluated."""
    preds = {}
    for n in (2, 4):
        out = tmp_path / f"run{n}"
        run(_cfg(lamp_root, **{"eval.methods": "[rag, fusion]", "data.max_eval_users": n, "data.select_users": 0}), out)
        preds[n] = json.loads((out / "predictions" / "LaMP_2" / "rag.json").read_text())["golds"]
    assert preds[4][:2] == preds[2]


def test_runs_asking_for_the_same_bank_share_it(lamp_root, tmp_path):
    """The bank is one-off work: a second run (another OUT) with the same bank settings trains nothing;
    a different anchor recipe gets a bank of its own."""
    s1 = run(_cfg(lamp_root, **{"eval.methods": "[prior]"}), tmp_path / "a")["mta"]["LaMP_2"]["bank"]
    manifest = (lamp_root.parent / "banks").glob("LaMP_2-*/manifest.json")
    before = {p: p.stat().st_mtime_ns for p in manifest}
    s2 = run(_cfg(lamp_root, **{"eval.methods": "[prior]", "eval.rag_k": 2}), tmp_path / "b")["mta"]["LaMP_2"]["bank"]
    assert s1["path"] == s2["path"] and {p: p.stat().st_mtime_ns for p in before} == before
    s3 = run(_cfg(lamp_root, **{"eval.methods": "[prior]", "anchor_train.lr": 0.001}), tmp_path / "c")["mta"]["LaMP_2"][
        "bank"
    ]
    assert s3["path"] != s1["path"] and s3["signature"] != s1["signature"]


def test_resummarize_rebuilds_the_summary_from_the_logged_records(lamp_root, tmp_path):
    from mta.recipe import resummarize

    out = tmp_path / "run"
    first = run(_cfg(lamp_root, **{"eval.methods": "[prior, prior_recency, mta]", "data.select_users": 0}), out)
    res = first["mta"]["LaMP_2"]
    again = resummarize(out)["mta"]["LaMP_2"]
    assert again["methods"] == res["methods"] and again["vs_mta"] == res["vs_mta"]
    assert again["bytes_per_user"].get("bank_amortised") == res["bytes_per_user"].get("bank_amortised")
    assert set(again["vs_prior_recency"]) == {"mta"} and again["vs_prior_recency"] == res["vs_prior_recency"]


def test_record_key_covers_dtype_code_and_golds(lamp_root, edited_code):
    """A resume on another dtype (fp32 records must not mix with bf16 ones), with other golds or
    after an edit of the method code recomputes: the record key changes. Mutations caught: leaving
    the code (or the runtime, or the golds' checksum) out of the key."""
    from mta.per_user import record_key, split_digest

    q = lamp_root / "LaMP_2" / "dev_questions.json"
    base = record_key(_cfg(lamp_root), split_digest(q), "bank")
    assert record_key(_cfg(lamp_root, **{"model.dtype": "bfloat16"}), split_digest(q), "bank") != base
    edited_code("mta/merge.py")
    after = record_key(_cfg(lamp_root), split_digest(q), "bank")
    assert after != base
    edited_code("memgas/router.py")  # another method's code leaves MTA's records valid
    assert record_key(_cfg(lamp_root), split_digest(q), "bank") == after
    golds = q.with_name("dev_outputs.json")
    before = split_digest(q)
    golds.write_text(golds.read_text().replace('"output": "comedy"', '"output": "action"', 1))
    assert split_digest(q) != before


def test_mta_swept_is_the_sweeps_choice_evaluated_beside_the_default(lamp_root, tmp_path):
    """`eval.swept` evaluates a best_config.yaml's fusion and stacking as `mta_swept`: its predictions
    are those of running that file's settings as `mta`, on the same users, and differ from the
    default's. Catches: the swept row built with the run's own fusion/stacking (it would equal
    `mta`), or the file's settings ignored; and a best_config from another bank accepted."""
    import yaml

    from suite.config import ConfigError

    base = _cfg(lamp_root, **{"eval.methods": "[mta, prior]"})
    best = yaml.safe_load(yaml.safe_dump(__import__("dataclasses").asdict(base)))
    best["fusion"].update({"top_k": 1, "merge": "ref_avg", "weighting": "uniform"})
    best["stacking"].update({"max_steps": 3, "lr": 3.0e-3})
    f = tmp_path / "best_config.yaml"
    f.write_text("# python -m ray_jobs.mta_pipeline ...\n# selected by t on the train users\n" + yaml.safe_dump(best))
    both = run(_cfg(lamp_root, **{"eval.methods": "[mta, prior]", "eval.swept": f}), tmp_path / "both")["mta"]["LaMP_2"]
    alone = run(
        _cfg(lamp_root, **{"eval.methods": "[mta, prior]", "fusion.top_k": 1, "fusion.merge": "ref_avg",
                           "fusion.weighting": "uniform", "stacking.max_steps": 3, "stacking.lr": 3.0e-3}),
        tmp_path / "alone",
    )["mta"]["LaMP_2"]  # fmt: skip
    assert set(both["methods"]) == {"mta", "prior", "mta_swept"}
    assert both["swept"]["selected_by"] == "selected by t on the train users" and len(both["swept"]["sha256"]) == 64
    preds = lambda d, m: json.loads((d / "predictions" / "LaMP_2" / f"{m}.json").read_text())  # noqa: E731
    assert preds(tmp_path / "both", "mta_swept") == preds(tmp_path / "alone", "mta")
    assert both["methods"]["mta_swept"] == alone["methods"]["mta"]
    recs = list(read_jsonl(tmp_path / "both" / "per_user.jsonl"))
    outs = lambda m: [r["out"][m] for r in recs]  # noqa: E731
    assert outs("mta_swept") != outs("mta")  # the raw label scores differ: another adapter answered
    assert all(len(r["anchors_swept"]["anchors"]) == 1 for r in recs)
    # the sweep's choice against every row, its own Holm family; costs beside mta's
    assert set(both["vs_mta_swept"]) == {"mta", "prior"} and "mta_swept" in both["vs_mta"]
    assert both["adapt_s_per_user"]["mta_swept"] > 0 and both["provenance"]["files"]["swept_config"]
    from reporting.mta import render_mta

    md = "\n".join(render_mta("t", "LaMP_2", both, tmp_path))
    assert "| MTA (swept) |" in md and "MTA (swept): the fusion and stacking of" in md and "top_k 1" in md
    # a best_config chosen on another bank is refused when the config is read
    best["anchors"]["n_clusters"] += 1
    f.write_text(yaml.safe_dump(best))
    with pytest.raises(ConfigError, match="anchors is .* the sweep chose on another task or bank"):
        _cfg(lamp_root, **{"eval.swept": f})
    with pytest.raises(ConfigError, match="mta_swept needs eval.swept"):
        _cfg(lamp_root, **{"eval.methods": "[mta, mta_swept]"})


def test_a_selection_made_by_one_run_is_applied_by_another_and_refused_for_another_configuration(lamp_root, tmp_path):
    """`eval.stop_after: select` writes the choices and runs no evaluated user; `eval.selection_from`
    applies them without choosing again: the evaluation equals one with the chosen settings fixed
    by hand. A selection made with another grid is refused. Mutations caught (each seen failing):
    the reused stack choice not applied (the base stacking evaluated); the fingerprint without the
    grids (the other grid's selection accepted)."""
    from suite.config import ConfigError

    # the base settings are none of the candidates: a choice not applied would show
    base = {"stacking.max_steps": 5, "oppu.lr": 5.0e-4}
    grids = {**EQUAL_GRIDS, **base, "eval.methods": "[oppu, mta, mta_prior]", "eval.adapter_twin": "false"}
    only = run(_cfg(lamp_root, **grids, **{"eval.stop_after": "select"}), tmp_path / "sel")
    sel_file = tmp_path / "sel" / "selection.json"
    assert set(only["selection"]["selection"]) == {"oppu", "stack", "mta_prior_lambda"}
    assert not (tmp_path / "sel" / "summary.json").exists() and not (tmp_path / "sel" / "per_user.jsonl").exists()
    sel = json.loads(sel_file.read_text())
    two = run(_cfg(lamp_root, **grids, **{"eval.selection_from": sel_file}), tmp_path / "two")["mta"]["LaMP_2"]
    assert not (tmp_path / "two" / "select_user.jsonl").exists()  # nothing chosen again
    assert two["selection"] == sel["selection"] and two["selection_from"]["same_code"] is True
    assert two["provenance"]["files"]["selection_from"]["sha256"] == two["selection_from"]["sha256"]
    stack, oppu = sel["selection"]["stack"]["choice"], sel["selection"]["oppu"]["choice"]
    fixed = {f"stacking.{k}": v for k, v in stack.items()} | {f"oppu.{k}": v for k, v in oppu.items()}
    lam = sel["selection"]["mta_prior_lambda"]["choice"]
    by_hand = _cfg(lamp_root, **{"eval.methods": "[oppu, mta, mta_prior]", "data.select_users": 0,
                                "eval.prior_lambda": lam, "eval.purpose": "pipeline_check", **fixed})  # fmt: skip
    hand = run(by_hand, tmp_path / "hand")["mta"]["LaMP_2"]
    assert two["methods"] == hand["methods"] and two["mta_prior_lambda"] == lam
    raw = lambda d: [(r["user_id"], r["out"]) for r in read_jsonl(tmp_path / d / "per_user.jsonl")]  # noqa: E731
    assert raw("two") == raw("hand")  # every method's raw output: the same adapters answered
    assert two["stacking"]["max_steps"] == stack["max_steps"] != 5
    from reporting.mta import render_mta

    assert "These choices were made by an earlier job" in "\n".join(render_mta("t", "LaMP_2", two, tmp_path))
    other = {**grids, "eval.stacking_grid": "[{max_steps: 1}, {max_steps: 3}]", "eval.selection_from": sel_file}
    with pytest.raises(ConfigError, match="made for another configuration .*eval"):
        run(_cfg(lamp_root, **other), tmp_path / "other")


def test_a_selection_stopped_midway_keeps_what_it_finished_and_a_later_run_makes_only_the_rest(
    lamp_root, tmp_path, monkeypatch
):
    """A run stopped after the stack, λ and OPPU's first candidate leaves them in
    OUT/selection.json; a later run given that file (`eval.selection_from`) applies the choices,
    runs only OPPU's other candidate, and ends with the choices of one uninterrupted run.
    Mutations caught (each seen failing): selection.json written only at the end (nothing
    survives the stop); the held choices chosen again (their records then name the later run);
    the finished candidate run again (no `reused_candidates`)."""
    import mta.recipe as recipe

    grids = {**EQUAL_GRIDS, "eval.methods": "[oppu, mta, mta_prior]", "eval.stop_after": "select"}
    whole = run(_cfg(lamp_root, **grids), tmp_path / "whole")["selection"]["selection"]
    real = recipe.select_setting

    def stop_after_one_oppu_candidate(cfg, ev, ids, sig, what, **kw):
        if what == "oppu":
            save = kw["on_candidate"]

            def once(i, row):
                save(i, row)
                raise KeyboardInterrupt  # the session ends here

            kw["on_candidate"] = once
        return real(cfg, ev, ids, sig, what, **kw)

    monkeypatch.setattr(recipe, "select_setting", stop_after_one_oppu_candidate)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(lamp_root, **grids), tmp_path / "first")
    monkeypatch.setattr(recipe, "select_setting", real)
    kept = json.loads((tmp_path / "first" / "selection.json").read_text())
    assert set(kept["selection"]) == {"stack", "mta_prior_lambda"} and list(kept["in_progress"]["oppu"]) == ["0"]
    again = _cfg(lamp_root, **grids, **{"eval.selection_from": tmp_path / "first" / "selection.json"})
    sel = run(again, tmp_path / "rest")["selection"]
    assert sel["selection_from"]["reused"] == ["stack", "mta_prior_lambda"]
    assert sel["selection_from"]["same_bank_content"] is True and sel["selection_from"]["same_code"] is True
    made = {w: r["made_by"]["run"] for w, r in sel["selection"].items()}
    first, later = str(tmp_path / "first"), str(tmp_path / "rest")
    assert made == {"stack": first, "mta_prior_lambda": first, "oppu": later}
    assert sel["selection"]["oppu"]["reused_candidates"] == [0]
    drop = ("made_by", "reused_candidates")
    strip = lambda s: {w: {k: v for k, v in r.items() if k not in drop} for w, r in s.items()}  # noqa: E731
    assert strip(sel["selection"]) == strip(whole)
    on_disk = json.loads((tmp_path / "rest" / "selection.json").read_text())
    assert set(on_disk["selection"]) == {"stack", "mta_prior_lambda", "oppu"} and "in_progress" not in on_disk
