"""Ray Tune over MTA's fusion and stacking: top-k, weighting and its temperature, merge method,
stacked rank, steps and learning rate. Each trial evaluates MTA on the train users that are not
anchors, cut to few-shot profiles (`job.data.eval_split` must be the train split: a sweep on dev is
refused when the config is read), and best_config.yaml is written to be reported on dev. Trials
report the running metric after every user (ASHA stops weak trials early), with a checkpoint of
the records so far: a trial whose worker, node or driver died resumes at its next user. The bank is
built once, before the sweep (or reused from the bank cache).

    python -m ray_jobs.sweep_mta --config ray_jobs/configs/sweep_mta_lamp2_cpu.yaml --out runs/sweep_mta
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from mta.bank import Bank, bank_content_id
from mta.calibration import predictions
from mta.config import _uses_labels, resolve_calibration
from mta.evaluate import per_query_scores, primary_metric
from mta.per_user import Evaluator, golds_file, load_users, split_digest
from mta.recipe import MTAJobConfig, bank_path_for, build_bank
from mta.verdicts import summarize
from ray_jobs.cli import entry, parse
from ray_jobs.sweeps import (
    SweepConfig,
    apply_params,
    experiment_path,
    finish_trial_tracker,
    report_sweep,
    run_sweep,
    trial_tracker,
)
from suite.config import ConfigError, opt
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import atomic_write_json, atomic_write_text, claim_run_dir, read_json
from suite.models import load_base
from suite.stats import compare

RECORDS = "records.json"  # in a trial checkpoint: the per-user records scored so far


def _train_job() -> MTAJobConfig:
    job = MTAJobConfig()
    job.data.eval_split = job.data.train_split
    return job


@dataclass
class SweepMTAConfig:
    job: MTAJobConfig = field(default_factory=_train_job)
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig(name="sweep_mta", metric="accuracy", mode="max"))
    compare_default: bool = opt(
        True,
        "after the sweep, evaluate the base configuration (job.fusion, job.stacking) on the same train "
        "users and report the best trial's paired difference to it",
    )

    def __post_init__(self):
        self.sweep.check(MTAJobConfig, {"accuracy", "f1", "mae", "rmse", "rouge1", "rougeL"})
        d = self.job.data
        if d.eval_split != d.train_split:  # a sweep scored on dev (or test) would choose on the reported users
            raise ConfigError(
                f"job.data.eval_split={d.eval_split!r}: a sweep chooses on the train users that are not "
                f"anchors; set job.data.eval_split={d.train_split!r} (best_config.yaml is written for dev)"
            )


def trial(config: dict) -> None:
    """One Tune trial (runs in a Tune worker)."""
    from ray import tune

    cfg = apply_params(MTAJobConfig, config["base"], config["params"])
    use_device(cfg.model.device)  # the GPU this trial reserved (sweep.gpus_per_trial), if any
    trial_dir = Path(tune.get_context().get_trial_dir())
    tracker = trial_tracker(cfg, config["params"], "sweep_mta", config["base"]["tracking"])
    try:
        d = cfg.data
        bank = Bank(cfg.bank_path).load()
        users, _ = load_users(cfg, d.eval_split, bank.ids)
        users = users[: d.max_eval_users] if d.max_eval_users else users
        model, codec = load_base(cfg.model)
        ev = Evaluator(cfg, bank, model, codec, load_encoder(cfg.encoder), trial_dir)
        label_mode = _uses_labels(d.task, cfg.eval.inference)
        records = restored_records(tune.get_checkpoint(), [u.user_id for u in users])
        for i, u in enumerate(users):
            if i < len(records):  # scored before this trial's worker, node or driver died
                continue
            records.append(ev.user_record(u, ["mta"]))
            m = summarize(d.task, records, ["mta"], label_mode, cfg.eval.calibration)["methods"]["mta"]
            save_scores(trial_dir, d.task, records, label_mode, cfg.eval.calibration)
            tracker.log({**m, "users": i + 1}, step=i + 1)
            # the records so far travel with the result to the sweep's storage (shared on a cluster):
            # a restarted trial resumes at the next user instead of scoring every user again
            with tempfile.TemporaryDirectory() as ckpt:
                atomic_write_json(Path(ckpt) / RECORDS, records)
                tune.report({**m, "users": i + 1}, checkpoint=tune.Checkpoint.from_directory(ckpt))
        tracker.summary({"final_" + primary_metric(d.task)[0]: m[primary_metric(d.task)[0]]})
    finally:
        finish_trial_tracker(tracker)


def restored_records(checkpoint, user_ids: list[str]) -> list[dict]:
    """The per-user records in the trial's last checkpoint ([] when it has none), checked to be
    the first users of `user_ids` in order (a checkpoint of other users is an error, not a resume)."""
    if checkpoint is None:
        return []
    with checkpoint.as_directory() as d:
        records = read_json(Path(d) / RECORDS)
    got = [r["user_id"] for r in records]
    if got != user_ids[: len(got)]:
        raise RuntimeError(f"{checkpoint.path}/{RECORDS}: records of users {got[:3]}..., not this trial's first users")
    return records


def query_scores(task: str, records: list[dict], label_mode: bool, calibration: str) -> dict:
    """{"users": one id per query, "scores": the per-query main metric} of MTA in `records`."""
    cal = resolve_calibration(task, calibration)
    preds = predictions(task, records, ["mta"], label_mode, cal)["mta"]
    scores, binary, higher = per_query_scores(task, preds, [g for r in records for g in r["golds"]])
    return {"users": [r["user_id"] for r in records for _ in r["queries"]], "scores": scores, "binary": binary,
            "higher": higher}  # fmt: skip


def save_scores(trial_dir: Path, task: str, records: list[dict], label_mode: bool, calibration: str) -> None:
    """The trial's per-query scores so far (the driver pairs the best trial's with the default's)."""
    atomic_write_json(trial_dir / "scores.json", query_scores(task, records, label_mode, calibration))


def default_vs_best(cfg: SweepMTAConfig, exp_dir: Path, best_trial: str) -> dict | None:
    """The best trial against the sweep's base configuration on the same train users: the base is
    evaluated here (one model load), the best trial's per-query scores are read from its folder.
    Paired interval and test at the user level (suite.stats.compare)."""
    best_file = exp_dir / best_trial / "scores.json"
    if not best_file.is_file():
        return None
    best = read_json(best_file)
    job, d = cfg.job, cfg.job.data
    bank = Bank(job.bank_path).load()
    users, _ = load_users(job, d.eval_split, bank.ids)
    users = users[: d.max_eval_users] if d.max_eval_users else users
    model, codec = load_base(job.model)
    ev = Evaluator(job, bank, model, codec, load_encoder(job.encoder), exp_dir.parent / "default_run")
    recs = [
        ev.user_record(u, ["mta"]) for u in tqdm(users, desc="default configuration", disable=not job.eval.progress)
    ]
    dflt = query_scores(d.task, recs, _uses_labels(d.task, job.eval.inference), job.eval.calibration)
    if dflt["users"] != best["users"]:
        raise RuntimeError(f"{best_file}: the best trial scored other users than the default configuration")
    row = compare({"default": dflt["scores"], "best": best["scores"]}, "default", dflt["binary"], dflt["higher"],
                  clusters=dflt["users"])["best"]  # fmt: skip
    return {
        "metric": primary_metric(d.task)[0],
        "best": float(np.mean(best["scores"])),
        "default": float(np.mean(dflt["scores"])),
        "default_config": {k: _get(asdict(job), k) for k in cfg.sweep.space},
        "row": row,
        "n_clusters": len(set(dflt["users"])),
        "unit": "train users",
    }


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def run(cfg: SweepMTAConfig, out: str | Path) -> dict:
    given, out = Path(out), Path(out).resolve()
    claim_run_dir(out, "sweep")  # before any work: never write into a folder that is not this suite's
    bank_path = cfg.job.bank_path  # as given ("" = the bank cache's): best_config.yaml keeps it
    cfg.job.bank_path = str(bank_path_for(cfg.job).resolve())  # trials run elsewhere: an absolute path
    bank, _ = build_bank(cfg.job, out, load_encoder(cfg.job.encoder))  # trains only what the bank misses
    cfg.job.tracking.group = cfg.job.tracking.group or cfg.sweep.name
    res = run_sweep(trial, cfg.sweep, asdict(cfg.job), out, code_dirs=("mta", "suite"))
    best_cfg = apply_params(MTAJobConfig, asdict(cfg.job), res["summary"]["best"]["config"])
    best_cfg.bank_path = bank_path  # not this machine's absolute path: the file runs in any checkout
    d = best_cfg.data
    _, qfile = load_users(cfg.job, d.train_split, [])
    sel = f"{d.train_split} users that are not anchors, {split_digest(qfile)} ({qfile})"
    d.eval_split, d.max_eval_users = "dev", 0  # chosen on train users, to be reported on dev
    atomic_write_text(
        out / "best_config.yaml",
        f"# python -m ray_jobs.mta_pipeline --config {given / 'best_config.yaml'} --out runs/mta_best\n"
        f"# selected by {cfg.sweep.name} on the {sel}; evaluates dev\n"
        + yaml.safe_dump(asdict(best_cfg), sort_keys=False),
    )
    exp_dir = Path(experiment_path(cfg.sweep, out))
    best_row = next(r for r in res["summary"]["all_trials"] if r["params"] == res["summary"]["best"]["config"])
    if cfg.compare_default:
        res["summary"]["vs_default"] = default_vs_best(cfg, exp_dir, best_row["trial"])
    files = {"train_questions": qfile, "train_golds": golds_file(qfile)}
    extra = {"bank": {"id": bank_content_id(bank.manifest), "path": str(bank.path)}}
    return report_sweep(res, cfg.sweep, cfg.job.tracking, out, files, extra)


@entry
def main(argv=None) -> None:
    args, cfg = parse(SweepMTAConfig, __doc__, argv)
    run(cfg, args.out)


if __name__ == "__main__":
    main()
