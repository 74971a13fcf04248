"""Typed choices: every example of a silently accepted typo now fails at parse time, before any
work, naming the allowed values; `--help` prints the defaults actually used."""

import dataclasses
import re

import pytest

from memgas.recipe import MemGASJobConfig
from mta.recipe import MTAJobConfig
from ray_jobs.sweep_memgas import SweepMemGASConfig
from ray_jobs.sweep_mta import SweepMTAConfig
from serving.composer import ServeConfig
from suite.config import ConfigError, describe, load_config


@pytest.mark.parametrize(
    "cls,override,names",
    [
        (MTAJobConfig, "bank.strategy=deepspd", ["ddp", "deepspeed"]),
        (MTAJobConfig, "anchor_train.scheduler=constnt", ["cosine", "constant"]),
        (MTAJobConfig, "eval.inference=labels", ["auto", "label", "generate"]),
        (MTAJobConfig, "eval.methods=[prior, mtaa]", ["mtaa"]),
        (MTAJobConfig, "fusion.merge=cta", ["cat", "svd", "ref_avg"]),
        (MTAJobConfig, "fusion.weighting=simlarity", ["similarity"]),
        (MTAJobConfig, "eval.calibration=contentfree", ["base_content_free"]),
        (MTAJobConfig, "bank.backend=rey", ["ray", "local"]),
        (SweepMTAConfig, "sweep.scheduler=ASHA", ["asha", "fifo"]),
        (SweepMTAConfig, "sweep.search=bayes", ["optuna", "grid", "random"]),
        (SweepMTAConfig, "sweep.metric=acc", ["accuracy"]),
        (SweepMTAConfig, "sweep.space={fusion.topk: {values: [1, 2]}}", ["topk", "top_k"]),
        (SweepMemGASConfig, "sweep.space={best.rooter: {values: [corrected]}}", ["rooter", "router"]),
        (SweepMemGASConfig, "sweep.metric=recal@5", ["recall_all"]),
        (MemGASJobConfig, "best.router=corected", ["corrected", "reference", "uniform"]),
        (MemGASJobConfig, "benchmark=locomo10", ["locomo", "longmemeval"]),
        (MemGASJobConfig, "tracking.mode=ofline", ["offline"]),
    ],
)
def test_a_bad_choice_fails_at_parse_time_naming_the_allowed_values(cls, override, names):
    with pytest.raises(ConfigError) as e:
        load_config(cls, None, [override])
    for n in names:
        assert n in str(e.value), (n, str(e.value))


def _help_defaults(cls) -> dict[str, str]:
    out = {}
    for line in describe(cls):
        m = re.match(r"\s+([\w.]+) = (.*?)(?: \[[^\]]*\])?  # ", line)
        out[m.group(1)] = m.group(2)
    return out


def _flat(obj, prefix=""):
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _flat(v, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", repr(v)


@pytest.mark.parametrize("cls", [MTAJobConfig, MemGASJobConfig, SweepMTAConfig, SweepMemGASConfig])
def test_help_defaults_equal_the_defaults_used(cls):
    shown, used = _help_defaults(cls), dict(_flat(load_config(cls)))
    assert shown == used
    if cls is SweepMemGASConfig:  # the nested defaults the old --help got wrong
        assert shown["sweep.metric"] == "'recall_all@5'" and shown["job.best.router"] == repr(
            load_config(cls).job.best.router
        )


JOBS = {
    "mta_": MTAJobConfig,
    "pretrain_bank_": MTAJobConfig,
    "memgas_": MemGASJobConfig,
    "sweep_mta_": SweepMTAConfig,
    "sweep_memgas_": SweepMemGASConfig,
    "serve_": ServeConfig,
    "serve_memory": None,  # filled below: serving.memory_service.MemoryServiceConfig
    "demo": None,  # filled below: ray_jobs.demo.DemoConfig
}


def test_every_shipped_config_parses_and_starts_with_its_command():
    from pathlib import Path

    from ray_jobs.demo import DemoConfig
    from serving.memory_service import MemoryServiceConfig

    JOBS["demo"], JOBS["serve_memory"] = DemoConfig, MemoryServiceConfig
    files = sorted(Path("ray_jobs/configs").glob("*.yaml"))
    assert len(files) >= 15
    for f in files:
        cls = next(c for p, c in sorted(JOBS.items(), key=lambda kv: -len(kv[0])) if f.name.startswith(p))
        load_config(cls, f)
        first = f.read_text().splitlines()[0]
        assert first.startswith("# ") and "python -m ray_jobs." in first and f.name in first, f
