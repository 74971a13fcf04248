"""Ray Tune over MemGAS on the dev split only (`job.split.name` is forced to `dev`): every retrieval
knob (granularities, lexical granularities and how they enter, router and its formula,
temperature, score normalisation, session aggregation, graph on/off, damping, seeds) and the
association knobs (GMM components, mem_threshold, pool). Each trial reports recall after every dev
conversation; ingested memories are cached per memory setting (in the Tune experiment folder), so
trials that differ only in retrieval do not re-ingest. `mechanisms: graph_and_router` keeps the
graph on and the router non-uniform in every trial (MemGAS proper; its best_config.yaml is
`memgas_eval best_from=`); `mechanisms: any` may find a baseline (`memgas_eval hybrid_from=`).
best_config.yaml records the ids and data checksum it was selected on; memgas_eval refuses to
report on any of them.

    python -m ray_jobs.sweep_memgas --config ray_jobs/configs/sweep_memgas_locomo_cpu.yaml --out runs/sweep_memgas
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from memgas.attribution import qualifies
from memgas.data import load_benchmark
from memgas.encoders import CachedEncoder
from memgas.evaluate import evaluate, summarize
from memgas.recipe import MemGASJobConfig, exercises_mechanisms, resolve_data, split_conversations
from memgas.store import MemoryStore
from ray_jobs.cli import entry, parse
from ray_jobs.sweeps import (
    SweepConfig,
    apply_params,
    finish_trial_tracker,
    report_sweep,
    run_sweep,
    trial_tracker,
)
from suite.config import ConfigError, opt
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import atomic_write_text, claim_run_dir, json_digest, sha256_file
from suite.redact import redact_config


@dataclass
class SweepMemGASConfig:
    job: MemGASJobConfig = field(default_factory=MemGASJobConfig)
    sweep: SweepConfig = field(
        default_factory=lambda: SweepConfig(name="sweep_memgas", metric="recall_all@5", mode="max")
    )
    mechanisms: Literal["any", "graph_and_router"] = opt(
        "any",
        "any (the winner may switch the graph and router off: report it as a baseline, hybrid_from) | "
        "graph_and_router (every trial keeps the association graph on and a non-uniform router: the "
        "winner is MemGAS proper, best_from)",
    )

    def __post_init__(self):
        self.sweep.check(MemGASJobConfig, set(), r"(recall_any|recall_all|ndcg_any)@\d+")
        if self.mechanisms == "graph_and_router":
            sp = self.sweep.space
            if any(v is not True for v in sp.get("best.use_graph", {}).get("values", [True])):
                raise ConfigError("mechanisms=graph_and_router: sweep.space best.use_graph may only hold true")
            if "uniform" in sp.get("best.router", {}).get("values", []):
                raise ConfigError("mechanisms=graph_and_router: sweep.space best.router may not hold uniform")
            if not exercises_mechanisms(self.job.best):
                raise ConfigError("mechanisms=graph_and_router: job.best must use the graph and a routed mix")


def memory_cache_dir(experiment_dir: str | Path, cfg: MemGASJobConfig) -> Path:
    """Where the trials of one Tune experiment keep the memories ingested under `cfg.memgas` (one
    folder per memory setting and data file; `ray_jobs.prefill_memories` fills the same folders)."""
    return Path(experiment_dir) / "memories" / json_digest([asdict(cfg.memgas), str(resolve_data(cfg))], 12)


def sweep_conversations(cfg: MemGASJobConfig) -> list:
    """The conversations a trial scores: the configured split, capped by `eval.max_conversations`."""
    convs, _ = split_conversations(load_benchmark(cfg.benchmark, resolve_data(cfg)), cfg)
    return convs[: cfg.eval.max_conversations] if cfg.eval.max_conversations else convs


def experiment_dir() -> Path:
    """The experiment folder in Tune's storage when that is a local or shared file system: memories
    saved there survive a restore and are visible to `prefill_memories`. Tune's own trial folder is
    a per-session staging copy (synced to storage, never read back), so a cache kept there was
    re-ingested after every restore. With cloud storage: the node-local staging folder."""
    import pyarrow.fs
    from ray import tune

    ctx = tune.get_context()
    storage = ctx.get_storage()
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return Path(storage.experiment_fs_path)
    return Path(ctx.get_trial_dir()).parent


def trial(config: dict) -> None:
    from ray import tune

    cfg = apply_params(MemGASJobConfig, config["base"], config["params"])
    use_device(cfg.device)
    trial_dir = Path(tune.get_context().get_trial_dir())
    tracker = trial_tracker(cfg, config["params"], "sweep_memgas", config["base"]["tracking"])
    try:
        convs = sweep_conversations(cfg)
        cache = memory_cache_dir(experiment_dir(), cfg)  # shared by the experiment's trials
        enc = CachedEncoder(load_encoder(cfg.memgas.encoder))  # shared by this trial's conversations
        cfg.eval.progress = False
        records = []
        for i, c in enumerate(convs):
            records += evaluate(
                [c],
                lambda: MemoryStore(cfg.memgas, encoder=enc),
                {"memgas": cfg.best},
                cfg.eval,
                trial_dir / "per_question.jsonl",
                memory_cache=cache,
            )
            summ = summarize(records, ["memgas"], cfg.eval.ks)
            m = {k: v for k, v in summ["methods"].get("memgas", {}).items() if k != "n_scored"}
            att = summ.get("attribution", {}).get("memgas", {})  # what the graph and the router decide
            m.update(
                {"graph_share": att.get("graph_share", 0.0), "router_sd_max": att.get("router_weight_sd_max", 0.0)}
            )
            tracker.log({**m, "conversations": i + 1}, step=i + 1)
            tune.report({**m, "conversations": i + 1})
    finally:
        finish_trial_tracker(tracker)


def run(cfg: SweepMemGASConfig, out: str | Path) -> dict:
    out = Path(out).resolve()
    claim_run_dir(out, "sweep")  # before any work: never write into a folder that is not this suite's
    cfg.job.split.name = "dev"  # choices are made on dev only; memgas_eval reports them on test
    cfg.job.tracking.group = cfg.job.tracking.group or cfg.sweep.name
    res = run_sweep(
        trial,
        cfg.sweep,
        asdict(cfg.job),
        out,
        accept_for(cfg.mechanisms),
        ("graph_share", "router_sd_max"),
        ("memgas", "suite"),
    )
    data = resolve_data(cfg.job)
    if not res["summary"]["best"]["found"]:  # no trial's mechanisms measurably act: nothing to call MemGAS
        (out / "best_config.yaml").unlink(missing_ok=True)
        res["summary"]["best"]["note"] = (
            f"no trial qualifies as MemGAS proper on dev: none has the graph deciding >= {MIN_GRAPH_SHARE:.0%} "
            f"of the top-5 places with a router weight varying by sd >= {MIN_ROUTER_SD}; no best_config.yaml written"
        )
        return report_sweep(res, cfg.sweep, cfg.job.tracking, out, {"data": data})
    best = apply_params(MemGASJobConfig, asdict(cfg.job), res["summary"]["best"]["config"])
    if cfg.mechanisms == "graph_and_router" and not exercises_mechanisms(best.best):
        raise ConfigError(f"the best trial {res['summary']['best']['config']} does not exercise graph and router")
    convs = sweep_conversations(cfg.job)
    best.selected_on = {
        "benchmark": cfg.job.benchmark,
        "data": str(data),
        "data_sha256": sha256_file(data),
        "split": "dev",
        "ids": [c.conv_id for c in convs],  # memgas_eval refuses to report on any of these
        "metric": cfg.sweep.metric,
        "value": res["summary"]["best"]["value"],
        "trials": res["summary"]["trials"],
        "mechanisms": cfg.mechanisms,
        "sweep": str(out),
    }
    best.split.name = "test"
    atomic_write_text(
        out / "best_config.yaml",
        f"# python -m ray_jobs.memgas_eval --config {out / 'best_config.yaml'} --out runs/memgas_best_test\n"
        f"# (or: memgas_eval --config <job yaml> {'best_from' if cfg.mechanisms != 'any' else 'hybrid_from'}="
        "THIS_FILE); selected on the dev split\n" + yaml.safe_dump(redact_config(asdict(best)), sort_keys=False),
    )
    return report_sweep(res, cfg.sweep, cfg.job.tracking, out, {"data": data})


MIN_GRAPH_SHARE = 0.25  # the graph decides at least this share of the dev top-5 places ...
MIN_ROUTER_SD = 0.02  # ... and some granularity's router weight varies across questions at least this much


def accept_for(mechanisms: str):
    """The rule a trial must pass to win: `graph_and_router` accepts a trial only when, on dev, the
    graph path decides >= MIN_GRAPH_SHARE of the top-5 places and some router weight has sd >=
    MIN_ROUTER_SD across questions (measured by memgas.attribution, not read from config flags)."""
    if mechanisms != "graph_and_router":
        return None

    def accept(row: dict) -> tuple[bool, str]:
        att = {"graph_share": row.get("graph_share") or 0.0, "router_weight_sd_max": row.get("router_sd_max") or 0.0}
        return qualifies(att, MIN_GRAPH_SHARE, MIN_ROUTER_SD)

    return accept


@entry
def main(argv=None) -> None:
    args, cfg = parse(SweepMemGASConfig, __doc__, argv)
    run(cfg, args.out)


if __name__ == "__main__":
    main()
