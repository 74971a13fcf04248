"""The Ray Tune driver shared by `sweep_mta` and `sweep_memgas`.

A sweep is a base job config (the same YAML the job reads) plus a search space over dotted config
keys. Each trial applies its values as `key=value` overrides, runs the job's evaluation on dev data
and reports the metric after every step (user or conversation), so ASHA can stop weak trials early.
Rerunning a sweep with the same OUT restores it (`Tuner.restore`): finished trials are not repeated,
and an unfinished trial restarts from its last checkpoint (sweep_mta's hold the users scored so far);
a rerun under another configuration fails before any trial (OUT/<name>.config.json records the first).
Writes OUT/summary.json {"trials", "metric", "mode", "best": {"config", "value"}, "all_trials": [{"params",
"value", "error"}, ...] in launch order}, OUT/best_config.yaml (the base YAML with the best values
applied), and through `ray_jobs.report` OUT/report/: report.md and the sweep's plot (the metric
against each swept key, and the running best against trials).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow.fs as pafs
import yaml

from reporting.render import render_report
from reporting.sweeps import launch_number
from suite.config import ConfigError, field_type, from_dict, opt
from suite.io import atomic_write_json
from suite.provenance import CODE_DIRS, provenance, start_stamp
from suite.ray_local import init_ray
from suite.redact import redact_config
from suite.tracking import Tracker


@dataclass
class SweepConfig:
    name: str = opt("sweep", "Tune experiment name (also the W&B group)")
    metric: str = opt("accuracy", "metric the trials report")
    mode: Literal["max", "min"] = opt("max", "max | min")
    search: Literal["optuna", "grid", "random"] = opt(
        "optuna", "optuna | grid (full product of `values` lists) | random"
    )
    num_samples: int = opt(8, "trials (optuna/random; grid runs the whole product)", lo=1)
    scheduler: Literal["asha", "fifo"] = opt("asha", "asha (early stopping on per-step reports) | fifo")
    grace_period: int = opt(2, "ASHA: steps before a trial may be stopped", lo=1)
    max_t: int = opt(1000, "ASHA: most steps a trial reports", lo=1)
    max_concurrent: int = opt(2, "trials run at once", lo=1)
    cpus_per_trial: float = opt(1.0, "CPUs reserved per trial", lo=0, lo_open=True)
    gpus_per_trial: float = opt(0.0, "GPUs reserved per trial")
    storage_path: str = opt("", "Tune storage (local, s3://, NFS); empty = OUT/tune")
    max_failures: int = opt(2, "re-runs of a trial whose worker or node died (same configuration)", lo=0)
    seed: int = opt(0, "search seed")
    space: dict = opt(
        help="dotted key → {values: [...]} | {low, high, log: bool, int: bool}; a list-valued "
        "choice is written as a YAML string, e.g. '[session, turn]'",
        factory=dict,
    )

    def check(self, job_cls: type, metrics: set[str] | None = None, metric_pattern: str = "") -> None:
        """Parse-time checks against the job the sweep drives: every space key addresses a real field,
        every spec is well formed, and the metric is one the trials report."""

        for key, spec in self.space.items():
            field_type(job_cls, key, "sweep.space")
            ok = isinstance(spec, dict) and (
                ("values" in spec and isinstance(spec["values"], list) and spec["values"])
                or ("low" in spec and "high" in spec and spec["low"] <= spec["high"])
            )
            if not ok:
                raise ConfigError(
                    f"sweep.space.{key}: expected {{values: [non-empty list]}} or {{low, high}} with low <= high"
                )
        if (
            metrics is not None
            and self.metric not in metrics
            and not (metric_pattern and re.fullmatch(metric_pattern, self.metric))
        ):
            raise ConfigError(
                f"sweep.metric: {self.metric!r} is not reported by the trials; expected one of {sorted(metrics)}"
                + (f" or {metric_pattern}" if metric_pattern else "")
            )


def _tune_space(space: dict, search: str) -> dict:
    from ray import tune

    out = {}
    for key, spec in space.items():
        if "values" in spec:
            out[key] = tune.grid_search(spec["values"]) if search == "grid" else tune.choice(spec["values"])
        elif spec.get("int"):
            out[key] = tune.randint(spec["low"], spec["high"] + 1)
        elif spec.get("log"):
            out[key] = tune.loguniform(spec["low"], spec["high"])
        else:
            out[key] = tune.uniform(spec["low"], spec["high"])
    return out


# Settings that change where or how fast trials run, not what they compute.
_RUNTIME_ONLY = {
    "sweep": {"max_concurrent", "cpus_per_trial", "gpus_per_trial", "storage_path", "max_failures"},
    "base": {"tracking"},
}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_same_sweep(stamp: Path, sweep: SweepConfig, base: dict, restoring: bool) -> None:
    """A sweep folder holds one configuration. The first run records it in OUT;
    a rerun that would restore the experiment under another configuration fails before any trial,
    naming the keys that differ (restoring would report the old trials as the new sweep's)."""
    ident = {
        "sweep": {k: v for k, v in asdict(sweep).items() if k not in _RUNTIME_ONLY["sweep"]},
        "base": {k: v for k, v in redact_config(base).items() if k not in _RUNTIME_ONLY["base"]},
    }
    ident = json.loads(json.dumps(ident, default=str))  # what the file will hold, for a like-for-like compare
    if restoring and stamp.exists():
        old = json.loads(stamp.read_text())
        if old != ident:
            a, b = _flat(old), _flat(ident)
            diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            raise ConfigError(
                f"{stamp}: sweep {sweep.name!r} in this folder was run with another configuration (differs at "
                f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); use another --out or sweep.name "
                "(restoring would mix its trials with this configuration's)"
            )
    else:  # a new experiment (or one from before these stamps) records its own
        stamp.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(stamp, ident)


def experiment_path(sweep: SweepConfig, out: str | Path) -> str:
    """The Tune experiment folder of a sweep run into OUT (under `sweep.storage_path` when set)."""
    return str(Path(sweep.storage_path or str(Path(out) / "tune")) / sweep.name)


class SweepInterrupted(KeyboardInterrupt):
    """The sweep was stopped before every trial finished (its state is saved; rerun to resume)."""


def planned_trials(sweep: SweepConfig) -> int:
    """How many trials the sweep creates when it runs to the end: the product of the listed values
    for a grid (ranges are sampled once per grid point), num_samples otherwise."""
    if sweep.search == "grid":
        return math.prod(len(s["values"]) for s in sweep.space.values() if "values" in s)
    return sweep.num_samples


def run_sweep(
    trainable: Callable[[dict], None],
    sweep: SweepConfig,
    base: dict,
    out: str | Path,
    accept: Callable[[dict], tuple[bool, str]] | None = None,
    extras: tuple[str, ...] = (),
    code_dirs: tuple[str, ...] = CODE_DIRS,
) -> dict:
    """Run (or restore) the Tune experiment; `trainable(config)` gets {"base": ..., "params": {...}}.
    `extras`: more final metrics kept per trial; `accept(row)` -> (ok, why): only accepted trials
    can win (`pick_best`). Raises SweepInterrupted, writing nothing, when fit() returned before
    every planned trial finished (Ctrl-C)."""
    start_stamp(code_dirs)  # the commit and method code the sweep starts at (recorded in its summary)
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    init_ray()
    out = Path(out).resolve()
    storage = sweep.storage_path or str(out / "tune")
    exp_path = experiment_path(sweep, out)
    wrapped = tune.with_resources(trainable, {"cpu": sweep.cpus_per_trial, "gpu": sweep.gpus_per_trial})
    # the stamp lives in OUT, not beside the experiment: storage_path may be a cloud URI
    check_same_sweep(out / f"{sweep.name}.config.json", sweep, base, tune.Tuner.can_restore(exp_path))
    if tune.Tuner.can_restore(exp_path):
        tuner = tune.Tuner.restore(exp_path, wrapped, resume_unfinished=True, resume_errored=True)
    else:
        params = _tune_space(sweep.space, sweep.search)
        search_alg, samples = None, sweep.num_samples
        if sweep.search == "optuna":
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(seed=sweep.seed)
        elif sweep.search == "grid":
            samples = 1  # grid_search expands to the full product
        elif sweep.search != "random":
            raise ValueError(f"sweep.search={sweep.search!r}: optuna | grid | random")
        sched = (
            ASHAScheduler(grace_period=sweep.grace_period, max_t=sweep.max_t)
            if sweep.scheduler == "asha"
            else FIFOScheduler()
        )
        tuner = tune.Tuner(
            wrapped,
            # Tune writes the param space to disk (params.json): URLs go redacted, keys come from the env
            param_space={"base": redact_config(base), "params": params},
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.mode,
                search_alg=search_alg,
                scheduler=sched,
                num_samples=samples,
                max_concurrent_trials=sweep.max_concurrent,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                name=sweep.name,
                storage_path=storage,
                verbose=1,
                # a trial whose node died runs again with its configuration (from its last checkpoint if any)
                failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                # a trial that checkpoints (sweep_mta: its records so far) needs only its latest
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    # Ctrl-C makes fit() return early: a summary then would rank partial trials as complete (and a
    # MemGAS sweep would delete its best_config.yaml), so write nothing and say how to resume
    unfinished, planned = unfinished_trials(grid), planned_trials(sweep)
    finished = len(grid) - len(unfinished)
    if unfinished or len(grid) < planned:
        del tuner, grid
        raise SweepInterrupted(
            f"sweep {sweep.name}: {finished} of {planned} trial(s) finished"
            f"{' (' + ', '.join(unfinished) + ' stopped mid-trial)' if unfinished else ''}; no summary or "
            f"best_config.yaml written; the same command resumes it from {exp_path}"
        )
    rows = trial_rows(grid, sweep.metric, extras)
    summary = {
        "trials": len(grid),
        "metric": sweep.metric,
        "mode": sweep.mode,
        "best": pick_best(rows, sweep.mode, accept),
        "importance": param_importance(rows, sweep.space, sweep.mode, sweep.seed),
        "errors": len(grid.errors),
        "all_trials": rows,
    }
    del tuner, grid  # drop the Tuner before any ray.shutdown() (SPEC §3)
    return {"summary": summary, "base": base, "code_dirs": code_dirs}


def unfinished_trials(grid) -> list[str]:
    """The trials the experiment's saved state (what Tuner.restore reads) holds as not finished.
    After Ctrl-C, Tune terminates the running trials in memory, so ResultGrid's own statuses say
    TERMINATED; the state it saved before that says RUNNING / PENDING / PAUSED. Trials never created
    are not in it: run_sweep compares the count with planned_trials."""
    fs, root = grid.filesystem, grid.experiment_path
    states = sorted(
        i.path for i in fs.get_file_info(pafs.FileSelector(root)) if Path(i.path).name.startswith("experiment_state-")
    )
    if not states:
        return []
    with fs.open_input_stream(states[-1]) as f:
        trials = [json.loads(t[0]) for t in json.loads(f.read())["trial_data"]]
    return [t["relative_logdir"] for t in trials if t["status"] not in ("TERMINATED", "ERROR")]


def trial_dirname(trial) -> str:
    """A trial's folder: its launch number and id only (`trial_014_7b6e3f9e`: sorts in launch
    order). Tune's default puts the random id first and appends the first keys of
    the whole config (the base job's, e.g. the bank's `lr=0.0001`), which read as the trial's own
    settings; the trial's settings are in its params.json and in the summary."""
    m = re.match(r"\d+", str(trial.experiment_tag))  # the tag starts with Tune's launch number
    return f"trial_{int(m.group()):03d}_{trial.trial_id}" if m else f"trial_{trial.trial_id}"


def trial_rows(grid, metric: str, extras: tuple[str, ...] = ()) -> list[dict]:
    """Every trial's parameters, final metric (None when it errored before reporting), the final
    `extras` metrics and number of reported steps, in launch order (Tune numbers trial folders in
    that order)."""
    rows = []
    for r in sorted(grid, key=lambda r: (launch_number(Path(str(r.path)).name) or 0, str(r.path))):
        m = r.metrics or {}
        params = {k: (v.item() if hasattr(v, "item") else v) for k, v in r.config["params"].items()}
        value = m.get(metric)
        rows.append(
            {
                "params": params,
                "value": None if value is None else float(value),
                "steps": int(m.get("training_iteration", 0)),
                "error": r.error is not None,
                "trial": Path(str(r.path)).name,  # the trial's folder in the experiment
                **{k: (None if m.get(k) is None else float(m[k])) for k in extras},
            }
        )
    return rows


def pick_best(rows: list[dict], mode: str, accept: Callable[[dict], tuple[bool, str]] | None = None) -> dict:
    """The trial with the best *final* metric among those that reported every step (all users or
    conversations) and that `accept` accepts (each complete row gets `accepted` and `why`). Not
    Tune's `get_best_result(scope="all")`: that ranks trials by the best value they reported at any
    step, i.e. by a running metric over the first few users, and picked a configuration 2 points
    below the real best in a 24-trial MemGAS sweep. Trials that ASHA stopped early have a final
    metric over fewer steps and are not comparable, so they cannot win. When no complete trial is
    accepted: {"found": False, "config": None, ...}, never a winner that fails the rule."""
    done = [r for r in rows if r["value"] is not None and not r["error"]]
    if not done:
        raise RuntimeError("no trial reported the metric: see the trials' error files under OUT/tune")
    full = max(r["steps"] for r in done)
    complete = [r for r in done if r["steps"] == full]
    if accept is not None:
        for r in complete:
            r["accepted"], r["why"] = accept(r)
    ok = [r for r in complete if r.get("accepted", True)]
    base = {"steps": full, "complete_trials": len(complete), "accepted_trials": len(ok)}
    if not ok:
        return {"config": None, "value": None, "found": False, **base}
    best = (max if mode == "max" else min)(ok, key=lambda r: r["value"])
    return {"config": best["params"], "value": best["value"], "found": True, **base}


def apply_params(cls, base: dict, params: dict[str, Any]):
    """The job config of one trial: base mapping + dotted overrides, validated by the dataclass."""

    data = copy.deepcopy(base)
    for key, val in params.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        val = val.item() if hasattr(val, "item") else val
        if isinstance(val, str) and val.startswith("["):  # list-valued choices travel as YAML text (Optuna
            # categoricals must be scalars)
            val = yaml.safe_load(val)
        node[leaf] = val
    return from_dict(cls, data, "sweep trial")


def report_sweep(
    res: dict, sweep: SweepConfig, tracking, out: Path, files: dict | None = None, extra: dict | None = None
) -> dict:
    """Write OUT/summary.json and OUT/report/ (report.md and the sweep's plot), as a job does; log the
    best values, every trial as a table (W&B charts it natively) and the plot to one W&B summary run;
    print the best and where the run folder and its report are. `files`: the data the trials read
    (name -> path; checksummed into the provenance), `extra`: more provenance (e.g. the bank's id)."""
    summary = res["summary"]
    dirs = res.get("code_dirs", CODE_DIRS)
    summary["provenance"] = {**provenance(redact_config(res.get("base", {})), files or {}, None, dirs), **(extra or {})}
    out = Path(out)
    atomic_write_json(out / "summary.json", summary)
    plots = render_report([out], out / "report")["plots"]
    tr = Tracker(tracking, "sweep", {"sweep": asdict(sweep)}, out, name=f"{sweep.name}-summary")
    best = summary["best"]
    tr.summary({"best_value": best["value"], **{f"best/{k}": v for k, v in (best["config"] or {}).items()}})
    keys = sorted({k for t in summary["all_trials"] for k in t["params"]})
    extra_cols = sorted({k for t in summary["all_trials"] for k in t if k not in ("params", "value", "steps", "error")})
    tr.table(
        "trials",
        ["trial", sweep.metric, "error"] + extra_cols + keys,
        [
            [i, t["value"], t["error"]] + [t.get(k) for k in extra_cols] + [str(t["params"].get(k)) for k in keys]
            for i, t in enumerate(summary["all_trials"])
        ],
    )
    for p in plots:
        tr.image(Path(p).stem, p)
    tr.finish()
    if best.get("found", True):
        print(f"{summary['trials']} trials; best {sweep.metric} = {best['value']:.4f} with {best['config']}")
    else:
        print(f"{summary['trials']} trials; none of the {best['complete_trials']} complete trials is accepted")
    print(f"run folder: {out}  (summary.json, best_config.yaml, tune/)\nreport: {out / 'report' / 'report.md'}")
    return summary


def trial_tracker(cfg, params: dict, default_group: str, base_tracking: dict):
    """The W&B run of one Tune trial, in the sweep's group, named after the trial."""
    from ray import tune

    cfg.tracking.group = base_tracking.get("group") or default_group
    return Tracker(
        cfg.tracking,
        "trial",
        {**asdict(cfg), "params": params},
        Path(tune.get_context().get_trial_dir()),
        name=tune.get_context().get_trial_name(),
    )


def finish_trial_tracker(tracker) -> None:
    """Finish a trial's W&B run and close this worker's connection to the wandb service now. Ray
    stops the service with the trial, so wandb's own atexit teardown would otherwise find the socket
    gone and print a `ConnectionResetError` traceback for every trial (results were unaffected)."""
    import sys

    tracker.finish()
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


def _distribution(spec: dict):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if "values" in spec:
        return CategoricalDistribution(
            [v if isinstance(v, int | float | str | bool) else str(v) for v in spec["values"]]
        )
    if spec.get("int"):
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
    return FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))


def param_importance(rows: list[dict], space: dict, mode: str, seed: int = 0) -> dict:
    """How much each swept key decides the final metric: Optuna's fANOVA importance (Hutter et al.,
    ICML 2014: the share of the metric's variance over the space each key explains, from a random
    forest fitted to the trials), computed on the trials that finished every step (an ASHA-stopped
    trial's value covers fewer users and is not comparable). Keys a trial did not vary are left out.
    Returns {"method", "trials", "importance": {key: share}} (shares sum to 1), or {"note"} when
    fewer than 4 complete trials exist."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [r for r in rows if r.get("value") is not None and not r.get("error")]
    full = max((r["steps"] for r in done), default=0)
    complete = [r for r in done if r["steps"] == full]
    keys = [k for k in space if len({str(r["params"].get(k)) for r in complete}) > 1]
    if len(complete) < 4 or not keys:
        return {"method": "fanova", "trials": len(complete), "importance": {}, "note": "too few complete trials"}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    dists = {k: _distribution(space[k]) for k in keys}
    for r in complete:
        params = {}
        for k in keys:
            v = r["params"][k]
            params[k] = (
                v
                if not isinstance(dists[k], optuna.distributions.CategoricalDistribution)
                else (v if v in dists[k].choices else str(v))
            )
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(r["value"])))
    if len({float(r["value"]) for r in complete}) == 1:  # every trial scored the same: nothing to apportion
        return {"method": "fanova", "trials": len(complete), "importance": {}, "note": "no variance across trials"}
    imp = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed), normalize=True)
    return {
        "method": f"fanova (optuna.importance.FanovaImportanceEvaluator, seed {seed})",
        "trials": len(complete),
        "importance": {k: float(v) for k, v in imp.items()},
    }
