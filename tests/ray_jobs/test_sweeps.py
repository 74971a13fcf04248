"""Both sweeps on tiny configs with W&B offline: trials run, the best config is saved, W&B run folders
exist, plots are written; rerunning restores the experiment instead of repeating trials."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mta.recipe import MTAJobConfig
from ray_jobs.sweep_memgas import SweepMemGASConfig
from ray_jobs.sweep_memgas import run as run_memgas
from ray_jobs.sweep_mta import SweepMTAConfig
from ray_jobs.sweep_mta import run as run_mta
from ray_jobs.sweeps import pick_best
from reporting.sweeps import launch_number
from suite.config import ConfigError, load_config
from tests.conftest import make_locomo


def _tiny_mta(lamp_root, tmp_path) -> list[str]:
    """A sweep_mta on the tiny model, 2 anchors and the 6 train users that are not anchors."""
    return [
        "job.data.task=LaMP_2",
        f"job.data.root={lamp_root}",
        "job.data.download=false",
        "job.model.name=tiny",
        "job.encoder=hashing",
        "job.anchors.n_clusters=2",
        "job.anchors.min_items=3",
        "job.bank.backend=local",
        "job.anchor_train.max_samples=4",
        "job.anchor_train.epochs=1",
        "job.eval.progress=false",
        f"job.bank_cache={tmp_path / 'banks'}",
        "job.data.eval_split=train",
        "job.data.select_profile_cap=4",
    ]


def test_sweep_mta_tiny(ray_local, lamp_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = _tiny_mta(lamp_root, tmp_path) + [
        "job.stacking.max_steps=1",
        "job.tracking.enabled=true",
        "job.tracking.mode=offline",
        "sweep.name=t_mta",
        "sweep.search=grid",
        "sweep.scheduler=fifo",
        "sweep.space={fusion.top_k: {values: [1, 2]}, fusion.merge: {values: [cat, ref_avg]}}",
    ]
    cfg = load_config(SweepMTAConfig, None, overrides)
    out = tmp_path / "sw"
    s = run_mta(cfg, out)
    assert s["trials"] == 4 and s["metric"] == "accuracy" and s["errors"] == 0
    # trials scored the train users that are not anchors (8 train users, 2 anchors), not dev
    trial_logs = list((out / "tune" / "t_mta").glob("trial*/result.json"))
    assert trial_logs and max(json.loads(l)["users"] for t in trial_logs for l in t.read_text().splitlines()) == 6
    assert set(s["best"]["config"]) == {"fusion.top_k", "fusion.merge"} and 0 <= s["best"]["value"] <= 1
    assert json.loads((out / "summary.json").read_text()) == s and s["provenance"]["code_version"]
    best = (out / "best_config.yaml").read_text()
    assert best.startswith("# python -m ray_jobs.mta_pipeline") and "selected by t_mta on the train users" in best
    assert load_config(MTAJobConfig, out / "best_config.yaml").data.eval_split == "dev"
    # the bank as the config gave it (the cache), not this machine's absolute path: it runs in another checkout
    assert load_config(MTAJobConfig, out / "best_config.yaml").bank_path == ""
    # best_config.yaml runs unchanged on dev
    from mta.recipe import run as run_pipeline

    dev = run_pipeline(load_config(MTAJobConfig, out / "best_config.yaml"), tmp_path / "dev")["mta"]["LaMP_2"]
    assert dev["split"]["eval"] == "dev" and dev["n_users"] == 4 and "mta" in dev["methods"]
    # every trial is recorded with its parameters and final metric; the report draws the sweep
    assert len(s["all_trials"]) == 4 and all(t["value"] is not None for t in s["all_trials"])
    assert {(t["params"]["fusion.top_k"], t["params"]["fusion.merge"]) for t in s["all_trials"]} == {
        (k, m) for k in (1, 2) for m in ("cat", "ref_avg")
    }
    assert max(t["value"] for t in s["all_trials"]) == s["best"]["value"]
    # the best trial against the base configuration, on the same 6 train users, paired by user
    vd = s["vs_default"]
    assert vd["n_clusters"] == 6 and vd["default_config"] == {"fusion.top_k": 2, "fusion.merge": "cat"}
    assert vd["best"] == pytest.approx(s["best"]["value"]) and vd["row"]["diff"] == pytest.approx(
        vd["best"] - vd["default"]
    )
    imp = s["importance"]
    assert imp["trials"] == 4 and (set(imp["importance"]) <= {"fusion.top_k", "fusion.merge"} or imp.get("note"))
    assert (out / "report" / "sw_sweep.png").exists()
    assert "| rank | accuracy |" in (out / "report" / "report.md").read_text()
    trials = [p for p in (out / "tune" / "t_mta").iterdir() if p.is_dir() and p.name.startswith("trial")]
    assert len(trials) == 4 and all(list(t.glob("wandb/offline-run-*")) for t in trials)
    # named by launch number (grid search counts from 0, Optuna from 1) and id, without config keys
    nums = sorted(launch_number(t.name) for t in trials)
    assert all(re.fullmatch(r"trial_\d{3}_[0-9a-f]+_\d{5}", t.name) for t in trials) and nums == [0, 1, 2, 3]
    # rerun: Tune restores the finished experiment, no trial runs again
    again = run_mta(cfg, out)
    assert again["trials"] == 4
    assert len([p for p in (out / "tune" / "t_mta").iterdir() if p.is_dir() and p.name.startswith("trial")]) == 4
    # a rerun under another configuration would restore these trials as its own: it fails first
    changed = load_config(SweepMTAConfig, None, overrides + ["job.fusion.weighting=uniform"])
    with pytest.raises(ConfigError, match=r"another configuration \(differs at base.fusion.weighting\)"):
        run_mta(changed, out)
    assert run_mta(load_config(SweepMTAConfig, None, overrides + ["sweep.max_concurrent=2"]), out)["trials"] == 4


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # ended meanwhile
        return []


def test_a_killed_mta_trial_resumes_at_the_next_user_from_its_checkpoint(ray_local, lamp_root, tmp_path, monkeypatch):
    """Kill the trial's worker process once Tune registered a checkpoint of some users: Tune
    restarts the trial (sweep.max_failures) from that checkpoint and it scores only the users it had
    not, so the users it reports keep rising (1, 2, ..., 6) and it finishes with every user. Catches:
    the trial ignoring tune.get_checkpoint() (it would report 1, 2, ... again), or reporting without a
    checkpoint (nothing to restore).

    The kill waits for the driver's registration (TuneController._process_trial_save), not for the
    checkpoint folder: Tune writes the result line first and registers the checkpoint a step later,
    so a kill in between restarts one user early (seen in CI as users 1, 1, 2, ...). A real kill can
    land there too; then the one user in flight is scored again."""
    import threading
    import time

    import psutil

    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = _tiny_mta(lamp_root, tmp_path) + [
        "job.stacking.max_steps=40",  # a few seconds per user: the kill lands mid-trial
        "job.stacking.r=2",
        "job.tracking.enabled=false",
        "sweep.name=t_resume",
        "sweep.search=grid",
        "sweep.scheduler=fifo",
        "sweep.max_failures=1",
        "sweep.max_concurrent=1",
        "compare_default=false",
        "sweep.space={fusion.top_k: {values: [2]}}",
    ]
    from ray.tune.execution.tune_controller import TuneController

    registered: list[int] = []  # users in each checkpoint the driver (this process) registered
    save = TuneController._process_trial_save

    def _registering(self, trial, checkpoint_value):
        save(self, trial, checkpoint_value)
        if checkpoint_value.checkpoint is not None:
            registered.append(len(json.loads((Path(checkpoint_value.checkpoint.path) / "records.json").read_text())))

    monkeypatch.setattr(TuneController, "_process_trial_save", _registering)
    cfg = load_config(SweepMTAConfig, None, overrides)
    out = tmp_path / "sw"
    exp = out / "tune" / "t_resume"
    result: dict = {}
    run = threading.Thread(target=lambda: result.update(run_mta(cfg, out)))
    run.start()
    killed = None
    deadline = time.time() + 600
    while run.is_alive() and time.time() < deadline and killed is None:
        if registered:
            for proc in psutil.Process().children(recursive=True):  # this test's Ray only
                if any("ImplicitFunc" in a for a in _cmdline(proc)):
                    killed = registered[-1]
                    proc.kill()
                    break
        time.sleep(0.05)
    run.join(timeout=900)
    assert killed is not None and 1 <= killed < 6, "the trial must die after a checkpoint, before its last user"
    users = [json.loads(line)["users"] for t in exp.glob("trial*/result.json") for line in t.read_text().splitlines()]
    assert users == sorted(set(users)) and users[-1] == 6, users
    assert result["trials"] == 1 and result["all_trials"][0]["steps"] == 6 and result["errors"] == 0


def test_sweep_mta_on_dev_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="eval_split='dev'"):
        load_config(SweepMTAConfig, None, ["job.data.eval_split=dev"])
    assert load_config(SweepMTAConfig, "ray_jobs/configs/sweep_mta_lamp2_cpu.yaml").job.data.eval_split == "train"


def test_sweep_memgas_tiny(ray_local, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    data = make_locomo(tmp_path / "locomo.json", n_sessions=8, n_questions=6)
    cfg = load_config(
        SweepMemGASConfig,
        None,
        [
            f"job.data={data}",
            "job.memgas.encoder=hashing",
            "job.memgas.association.start_session=1",
            "job.tracking.mode=offline",
            "sweep.name=t_mem",
            "sweep.search=optuna",
            "sweep.num_samples=3",
            "sweep.scheduler=asha",
            "sweep.grace_period=1",
            "sweep.space={best.temperature: {low: 0.05, high: 1.0, log: true}, best.router: {values: [corrected, reference]}, "  # noqa: E501
            "memgas.association.n_components: {values: [2, 3]}}",
        ],
    )
    s = run_memgas(cfg, tmp_path / "sw")
    assert s["trials"] == 3 and s["metric"] == "recall_all@5" and s["errors"] == 0
    assert set(s["best"]["config"]) == {"best.temperature", "best.router", "memgas.association.n_components"}
    assert Path(tmp_path / "sw" / "report" / "sw_sweep.png").exists() and len(s["all_trials"]) == 3
    for t in s["all_trials"]:  # each trial's measured mechanism attribution on dev
        assert 0.0 <= t["graph_share"] <= 1.0 and t["router_sd_max"] >= 0.0
    prov = s["provenance"]
    assert prov["files"]["data"]["sha256"] and prov["code_version"] == prov["code_version_end"]
    # the dev-selected configuration round-trips into the eval job, which reports it on test
    from memgas.recipe import MemGASJobConfig
    from memgas.recipe import run as run_eval

    best_yaml = tmp_path / "sw" / "best_config.yaml"

    def evaluate_on(path):
        ov = [f"data={path}", "memgas.encoder=hashing", "tracking.enabled=false", "ablations=false"]
        cfg = load_config(MemGASJobConfig, None, [*ov, f"best_from={best_yaml}", "eval.progress=false"])
        return run_eval(cfg, tmp_path / "ev")["memgas"]["locomo"]

    # the conversation the sweep chose on cannot be reported on
    with pytest.raises(ConfigError, match="shares 1 of them"):
        evaluate_on(data)
    held_out = tmp_path / "held_out.json"
    held_out.write_text(data.read_text().replace('"conv-x"', '"conv-t"'))
    ev = evaluate_on(held_out)
    sel = ev["configs"]["selected_on"]
    assert sel["split"] == "dev" and sel["metric"] == "recall_all@5" and sel["value"] == s["best"]["value"]
    assert sel["ids"] == ["conv-x"] and len(sel["data_sha256"]) == 64
    assert ev["configs"]["memgas"]["router"] == s["best"]["config"]["best.router"]
    assert ev["configs"]["memgas"]["temperature"] == s["best"]["config"]["best.temperature"]
    mem = ev["configs"]["memories"]["memgas"]["association"]
    assert mem["n_components"] == s["best"]["config"]["memgas.association.n_components"]


def test_sweep_driver_killed_then_rerun_restores_without_repeating_trials(tmp_path):
    """Ctrl-C (SIGINT) to the sweep driver after one of six trials finished: it exits 130 and writes
    no summary or best_config.yaml, whether the signal lands mid-trial or between two trials
    (mutation caught: dropping run_sweep's interrupted check, which wrote a summary ranking an
    incomplete sweep as complete, exit 0; where the signal lands is not controlled, so the
    between-trials half also has its own test: test_planned_trials_counts_what_a_sweep_creates). Then SIGKILL the driver
    (and its local Ray) after two finished; the same command again restores the experiment
    (Tuner.restore): finished trials are not run again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_locomo(tmp_path / "locomo.json", n_sessions=6, n_questions=4)
    out = tmp_path / "sw"
    cmd = [
        sys.executable,
        "-m",
        "ray_jobs.sweep_memgas",
        "--out",
        str(out),
        f"job.data={data}",
        "job.memgas.encoder=hashing",
        "job.tracking.mode=offline",
        "sweep.name=t_kill",
        "sweep.search=grid",
        "sweep.scheduler=fifo",
        "sweep.max_concurrent=1",
        "sweep.space={best.num_seeds: {values: [1, 2, 3, 4, 5, 6]}}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "RAY_ADDRESS": ""}
    exp = out / "tune" / "t_kill"

    def finished():  # trials the experiment checkpoint (what restore reads) records as finished
        states = sorted(exp.glob("experiment_state-*.json"))
        try:
            trials = [json.loads(t[0]) for t in json.loads(states[-1].read_text())["trial_data"]] if states else []
        except (json.JSONDecodeError, OSError):
            return []
        return sorted(t["relative_logdir"] for t in trials if t["status"] == "TERMINATED")

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(finished()) < 1:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGINT)  # the driver only, as a terminal's Ctrl-C reaches it first
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert re.search(r"Interrupted: sweep t_kill: [1-5] of 6 trial\(s\) finished", err.decode()), err.decode()[-2000:]
    assert not (out / "summary.json").exists() and not (out / "best_config.yaml").exists()
    assert 1 <= len(finished()) < 6

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(finished()) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = finished()
    assert 2 <= len(done_before) < 6, "the driver must die mid-sweep"
    # a trial the first Ctrl-C interrupted and the second driver finished already holds two W&B runs
    runs = lambda t: len(list((exp / t).glob("wandb/offline-run-*")))  # noqa: E731
    results_before = {t: ((exp / t / "result.json").read_text(), runs(t)) for t in done_before}
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["trials"] == 6 and s["errors"] == 0
    for t, (text, n_runs) in results_before.items():  # a finished trial neither reran nor reported again
        assert (exp / t / "result.json").read_text() == text
        assert runs(t) == n_runs >= 1
    assert len(finished()) == 6


def test_planned_trials_counts_what_a_sweep_creates():
    """A Ctrl-C between two trials leaves a saved state of finished trials only: the driver sees it
    as interrupted because fewer trials exist than planned (mutation caught: a grid counted as
    num_samples, which let 1-of-6 pass as complete)."""
    from ray_jobs.sweeps import SweepConfig, planned_trials

    space = {"a": {"values": [1, 2, 3]}, "b": {"values": ["x", "y"]}, "lr": {"low": 1e-4, "high": 1e-2, "log": True}}
    assert planned_trials(SweepConfig(search="grid", num_samples=1, space=space)) == 6
    assert planned_trials(SweepConfig(search="optuna", num_samples=16, space=space)) == 16
    assert planned_trials(SweepConfig(search="random", num_samples=3, space=space)) == 3


def test_importance_ranks_first_the_key_that_decides_everything():
    """Mutation caught: importances computed over the wrong values (e.g. the trial index) or
    unnormalised; the deciding key must come first with most of the variance."""
    from ray_jobs.sweeps import param_importance

    rng = np.random.default_rng(0)
    space = {"k": {"values": [1, 2, 3, 4]}, "lr": {"low": 1e-4, "high": 1e-2, "log": True}, "m": {"values": ["a", "b"]}}
    rows = []
    for _ in range(24):
        p = {"k": int(rng.integers(1, 5)), "lr": float(10 ** rng.uniform(-4, -2)), "m": str(rng.choice(["a", "b"]))}
        rows.append({"params": p, "value": 0.1 * p["k"] + 0.001 * rng.normal(), "steps": 4, "error": False})
    rows.append({"params": {"k": 1, "lr": 1e-3, "m": "a"}, "value": 9.9, "steps": 1, "error": False})  # ASHA-stopped
    imp = param_importance(rows, space, "max")
    assert imp["trials"] == 24 and "fanova" in imp["method"]
    order = list(imp["importance"])
    assert order[0] == "k" and imp["importance"]["k"] > 0.8 and sum(imp["importance"].values()) == pytest.approx(1)
    assert param_importance(rows[:3], space, "max")["importance"] == {}  # too few trials: said, not guessed


def test_trials_are_listed_in_launch_order_not_folder_order():
    """Optuna's trial ids are random, so folders sort by hash; the summary (and the search-progress
    plot) must follow the launch number. Catches: ordering rows by folder name (the LoCoMo and MTA
    sweeps' summaries were in hash order), or a folder name without its launch number."""
    from types import SimpleNamespace

    from ray_jobs.sweeps import trial_dirname, trial_rows

    names = ["trial_3844c3f3_11_alpha=16", "trial_7b6e3f9e_2_alpha=16", "trial_a14d33e9_15_alpha=16"]
    grid = [
        SimpleNamespace(path=f"/x/{n}", metrics={"accuracy": 0.1 * i, "training_iteration": 3}, error=None,
                        config={"params": {"k": i}})
        for i, n in enumerate(names)
    ]  # fmt: skip
    assert [r["trial"] for r in trial_rows(grid, "accuracy")] == [names[1], names[0], names[2]]
    mine = trial_dirname(SimpleNamespace(trial_id="7b6e3f9e", experiment_tag="14_fusion.top_k=3"))
    assert mine == "trial_014_7b6e3f9e" and launch_number(mine) == 14
    assert launch_number(trial_dirname(SimpleNamespace(trial_id="fa718_00003", experiment_tag="3"))) == 3


def test_best_is_the_best_final_metric_of_complete_trials():
    """Tune's get_best_result(scope="all") ranks a trial by the best value it reported at any step:
    a trial lucky on its first user beat the trial with the best final metric. pick_best does not."""
    rows = [
        {"params": {"t": "lucky_start"}, "value": 0.789, "steps": 4, "error": False},  # 0.843 after step 1
        {"params": {"t": "best_final"}, "value": 0.810, "steps": 4, "error": False},
        {"params": {"t": "stopped_early"}, "value": 0.950, "steps": 1, "error": False},  # ASHA: 1 user only
        {"params": {"t": "failed"}, "value": None, "steps": 0, "error": True},
    ]
    best = pick_best(rows, "max")
    assert best["config"] == {"t": "best_final"} and best["value"] == 0.810
    assert best["steps"] == 4 and best["complete_trials"] == 2
    assert pick_best(rows, "min")["config"] == {"t": "lucky_start"}
    with pytest.raises(RuntimeError, match="no trial reported"):
        pick_best(rows[3:], "max")


def test_a_memgas_proper_sweep_accepts_only_trials_whose_graph_and_router_act():
    """The winner of a graph_and_router sweep is the best trial whose graph decides >= 25% of the
    dev top-5 places and whose router weights vary (sd >= 0.02), measured, not read from flags; when
    none qualifies the sweep says "not found". Mutation caught: `accept_for` returning None (the
    flag-only gate) lets the BM25-bypass trial win."""
    from ray_jobs.sweep_memgas import accept_for

    rows = [
        {"params": {"t": "bm25_bypass"}, "value": 0.82, "steps": 4, "error": False, "graph_share": 0.02,
         "router_sd_max": 0.003},
        {"params": {"t": "graph_acts"}, "value": 0.70, "steps": 4, "error": False, "graph_share": 0.31,
         "router_sd_max": 0.05},
        {"params": {"t": "router_frozen"}, "value": 0.75, "steps": 4, "error": False, "graph_share": 0.40,
         "router_sd_max": 0.01},
    ]  # fmt: skip
    best = pick_best([dict(r) for r in rows], "max", accept_for("graph_and_router"))
    assert best["found"] and best["config"] == {"t": "graph_acts"} and best["accepted_trials"] == 1
    assert pick_best([dict(r) for r in rows], "max", accept_for("any"))["config"] == {"t": "bm25_bypass"}
    none = pick_best([dict(r) for r in rows[:1] + rows[2:]], "max", accept_for("graph_and_router"))
    assert none["found"] is False and none["config"] is None and none["accepted_trials"] == 0


def test_a_memgas_proper_sweep_cannot_switch_its_mechanisms_off():
    """The config-level guard (the measured gate is tested above)."""
    from ray_jobs.sweep_memgas import SweepMemGASConfig

    with pytest.raises(ConfigError, match="best.router may not hold uniform"):
        load_config(
            SweepMemGASConfig,
            None,
            ["mechanisms=graph_and_router", "sweep.space={best.router: {values: [corrected, uniform]}}"],
        )
    with pytest.raises(ConfigError, match="best.use_graph may only hold true"):
        load_config(
            SweepMemGASConfig,
            None,
            ["mechanisms=graph_and_router", "sweep.space={best.use_graph: {values: [true, false]}}"],
        )


_WORKER_EXIT = """
import sys, psutil
from ray_jobs.sweeps import finish_trial_tracker
from suite.tracking import Tracker, TrackingConfig
t = Tracker(TrackingConfig(mode="offline"), "trial", {"x": 1}, sys.argv[2], name="t")
t.log({"a": 1}, step=1)
finish_trial_tracker(t) if sys.argv[1] == "trial" else t.finish()
for c in psutil.Process().children(recursive=True):  # what Ray does to a trial's children
    c.kill()
"""


@pytest.mark.parametrize("how", ["trial", "plain"])
def test_a_trial_closes_its_wandb_service_connection_before_ray_stops_the_service(tmp_path, how):
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("WANDB_")}
    p = subprocess.run(
        [sys.executable, "-c", _WORKER_EXIT, how, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        env={**env, "WANDB_SILENT": "true"},
    )
    assert p.returncode == 0, p.stderr
    assert list(tmp_path.glob("wandb/offline-run-*"))
    # the plain finish shows the traceback the trials printed (its last line varies with the race:
    # "Connection lost" or "Connection reset by peer"); the trial helper does not
    noisy = any(s in p.stderr for s in ("teardown_atexit", "Connection lost", "Connection reset"))
    assert noisy == (how == "plain"), p.stderr
