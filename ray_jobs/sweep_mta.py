"""Ray Tune over MTA's fusion and stacking: top-k, weighting and its temperature, merge method,
stacked rank, steps and learning rate. Each trial evaluates MTA on the train users that are not
anchors, cut to few-shot profiles (`job.data.eval_split` must be the train split: a sweep on dev is
refused when the config is read), and best_config.yaml is written to be reported on dev. Trials
report the running metric after every user (ASHA stops weak trials early). The bank is built
once, before the sweep (or reused from the bank cache).

    python -m ray_jobs.sweep_mta --config ray_jobs/configs/sweep_mta_lamp2_cpu.yaml --out runs/sweep_mta
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from mta.bank import Bank, bank_content_id
from mta.evaluate import primary_metric
from mta.pipeline import Evaluator, _uses_labels, golds_file, load_users, split_digest, summarize
from mta.recipe import MTAJobConfig, bank_path_for, build_bank
from ray_jobs.cli import entry, parse
from ray_jobs.sweeps import (
    SweepConfig,
    apply_params,
    finish_trial_tracker,
    report_sweep,
    run_sweep,
    trial_tracker,
)
from suite.config import ConfigError
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import atomic_write_text, claim_run_dir
from suite.models import load_base


def _train_job() -> MTAJobConfig:
    job = MTAJobConfig()
    job.data.eval_split = job.data.train_split
    return job


@dataclass
class SweepMTAConfig:
    job: MTAJobConfig = field(default_factory=_train_job)
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig(name="sweep_mta", metric="accuracy", mode="max"))

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
        records = []
        for i, u in enumerate(users):
            records.append(ev.user_record(u, ["mta"]))
            m = summarize(d.task, records, ["mta"], label_mode, cfg.eval.calibration)["methods"]["mta"]
            tracker.log({**m, "users": i + 1}, step=i + 1)
            tune.report({**m, "users": i + 1})
        tracker.summary({"final_" + primary_metric(d.task)[0]: m[primary_metric(d.task)[0]]})
    finally:
        finish_trial_tracker(tracker)


def run(cfg: SweepMTAConfig, out: str | Path) -> dict:
    out = Path(out).resolve()
    claim_run_dir(out, "sweep")  # before any work: never write into a folder that is not this suite's
    cfg.job.bank_path = str(bank_path_for(cfg.job).resolve())  # trials run elsewhere: an absolute path
    bank, _ = build_bank(cfg.job, out, load_encoder(cfg.job.encoder))  # trains only what the bank misses
    cfg.job.tracking.group = cfg.job.tracking.group or cfg.sweep.name
    res = run_sweep(trial, cfg.sweep, asdict(cfg.job), out)
    best_cfg = apply_params(MTAJobConfig, asdict(cfg.job), res["summary"]["best"]["config"])
    d = best_cfg.data
    _, qfile = load_users(cfg.job, d.train_split, [])
    sel = f"{d.train_split} users that are not anchors, {split_digest(qfile)} ({qfile})"
    d.eval_split, d.max_eval_users = "dev", 0  # chosen on train users, to be reported on dev
    atomic_write_text(
        out / "best_config.yaml",
        f"# python -m ray_jobs.mta_pipeline --config {out / 'best_config.yaml'} --out runs/mta_best\n"
        f"# selected by {cfg.sweep.name} on the {sel}; evaluates dev\n"
        + yaml.safe_dump(asdict(best_cfg), sort_keys=False),
    )
    files = {"train_questions": qfile, "train_golds": golds_file(qfile)}
    extra = {"bank": {"id": bank_content_id(bank.manifest), "path": str(bank.path)}}
    return report_sweep(res, cfg.sweep, cfg.job.tracking, out, files, extra)


@entry
def main(argv=None) -> None:
    args, cfg = parse(SweepMTAConfig, __doc__, argv)
    run(cfg, args.out)


if __name__ == "__main__":
    main()
