"""The one device rule: spec strings checked at parse time, resolution, and a CUDA request that
fails before any work where there is no CUDA."""

import pytest
import torch

from memgas.recipe import MemGASJobConfig
from mta.recipe import MTAJobConfig
from suite import device
from suite.config import ConfigError, load_config
from suite.models import ModelConfig

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")


@pytest.mark.parametrize("spec", ["auto", "cpu", "cuda", "cuda:0", "cuda:3"])
def test_good_specs(spec):
    assert device.check_spec(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu ", "", "mps", 0])
def test_bad_specs_refused(spec):
    with pytest.raises(ConfigError, match="not a device"):
        device.check_spec(spec)


@pytest.mark.parametrize("cls,key", [(MTAJobConfig, "model.device"), (MemGASJobConfig, "device")])
def test_bad_device_fails_at_config_parse(cls, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(cls, None, [f"{key}=gpu"])
    with pytest.raises(ConfigError, match="dtype"):
        load_config(MTAJobConfig, None, ["model.dtype=bf16"])


def test_cpu_and_dtype_rules():
    assert device.resolve("cpu") == torch.device("cpu")
    assert device.dtype_for(torch.device("cpu")) == torch.float32
    assert device.dtype_for(torch.device("cpu"), "bfloat16") == torch.bfloat16
    assert device.describe(torch.device("cpu")) == {"device": "cpu", "dtype": "float32"}


@no_cuda
def test_auto_is_cpu_without_cuda_and_cuda_is_refused():
    assert device.resolve("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        device.resolve("cuda")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        device.use("cuda:1")


def test_models_land_on_the_resolved_device():
    from suite.models import load_base

    model, _ = load_base(ModelConfig(name="tiny", device="cpu"))
    assert {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()} == {"cpu"}
    assert device.model_device(model) == torch.device("cpu")


@no_cuda
def test_asking_for_cuda_fails_before_any_training(lamp_root, tmp_path):
    from mta.recipe import run

    cfg = load_config(
        MTAJobConfig,
        "ray_jobs/configs/mta_tiny.yaml",
        [f"data.root={lamp_root}", "model.device=cuda", f"bank_cache={tmp_path / 'banks'}"],
    )
    with pytest.raises(ConfigError, match="CUDA is not available"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "banks").exists() and not (tmp_path / "run").exists()


@no_cuda
def test_a_config_error_at_setup_prints_one_line(lamp_root, tmp_path, capsys):
    """The launcher turns a ConfigError raised at set-up into one "Config error:" line, like the
    parse-time ones, with exit status 2 (no traceback)."""
    from ray_jobs.mta_pipeline import main

    with pytest.raises(SystemExit) as e:
        main(
            [
                "--config",
                "ray_jobs/configs/mta_tiny.yaml",
                "--out",
                str(tmp_path / "run"),
                f"data.root={lamp_root}",
                "model.device=cuda",
                f"bank_cache={tmp_path / 'banks'}",
            ]
        )
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Config error: device='cuda'")


def test_dry_run_plans_without_training(lamp_root, tmp_path):
    from mta.recipe import dry_run

    cfg = load_config(
        MTAJobConfig,
        "ray_jobs/configs/mta_tiny.yaml",
        [
            f"data.root={lamp_root}",
            f"bank_cache={tmp_path / 'banks'}",
            "anchors.n_clusters=3",
            "bank.num_workers=2",
            "bank.gpus_per_worker=1",
            "bank.parallel=0",
            "bank.checkpoint_every=1",
            "bank.strategy=deepspeed",
            "bank.plan_resources={GPU: 4, CPU: 32}",
        ],
    )
    plan = dry_run(cfg, tmp_path / "plan")
    assert plan["trainers_at_once"] == 2 and plan["gpus_needed"] == 4 and plan["backend"] == "nccl"
    assert sorted(a for t in plan["trainers"] for a in t["anchors"]) == sorted(
        set(a for t in plan["trainers"] for a in t["anchors"])
    )
    assert plan["anchors"] == 3 and sum(len(t["anchors"]) for t in plan["trainers"]) == 3
    # checkpoint_every=1: one report per step (the last step's is the final one)
    assert plan["checkpoints_expected"] == sum(t["steps"] for t in plan["trainers"])
    assert (tmp_path / "plan" / "plan.json").exists() and not (tmp_path / "banks").exists()
