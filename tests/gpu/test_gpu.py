"""GPU tests: every model on the accelerator, the tiny bank through Ray Train DDP and DeepSpeed
ZeRO-2/3 on one GPU worker, evaluation on GPU equal to CPU.

    .venv/bin/python -m pytest -m gpu tests/gpu -q        # on a machine with CUDA

Without CUDA they are skipped with the reason; `make test` never selects them (`-m 'not slow and not gpu'`).
"""

import numpy as np
import pytest
import torch

from tests.conftest import tiny_lora

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda.is_available() is False)"),
]

TARGETS = ["q_proj", "v_proj"]


def _tiny(device="cuda"):
    from suite.models import ModelConfig, load_base

    return load_base(ModelConfig(name="tiny", device=device, dtype="float32", max_length=256))


def test_every_parameter_and_buffer_on_the_gpu_including_adapters():
    from mta.adapters import AdapterHost

    model, _ = _tiny("cuda")
    host = AdapterHost(model, TARGETS)
    host.add("a", 4, 8, seed=1)
    devs = {p.device.type for p in host.model.parameters()} | {b.device.type for b in host.model.buffers()}
    assert devs == {"cuda"}


def test_label_scores_and_generation_on_gpu_equal_cpu():
    from mta.evaluate import generate, label_logprobs

    (mc, codec), (mg, _) = _tiny("cpu"), _tiny("cuda")
    prompt, labels = "Which tag fits this movie: a heist in space?", ["action", "comedy", "sci-fi"]
    a = label_logprobs(mc, codec, prompt, labels)
    b = label_logprobs(mg, codec, prompt, labels)
    assert np.allclose(a, b, atol=1e-3), (a, b)
    assert generate(mc, codec, prompt, 8) == generate(mg, codec, prompt, 8)


def test_minilm_on_gpu_equals_cpu():
    from suite.encoders import load_encoder

    texts = ["I moved to Lisbon last spring.", "My sister plays the cello."]
    a = load_encoder("minilm", device="cpu").encode(texts)
    b = load_encoder("minilm", device="cuda").encode(texts)
    assert np.allclose(a, b, atol=1e-4)


def test_tiny_pipeline_on_gpu_matches_cpu(lamp_root, tmp_path):
    from mta.recipe import MTAJobConfig, run
    from suite.config import load_config

    def go(dev):
        ov = [
            f"data.root={lamp_root}",
            f"model.device={dev}",
            "model.dtype=float32",
            "data.max_eval_users=3",
            "eval.methods=[base, oppu, fusion, mta]",
            f"bank_cache={tmp_path / dev / 'banks'}",
        ]
        return run(load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov), tmp_path / dev)["mta"]["LaMP_2"]

    g, c = go("cuda"), go("cpu")
    assert g["runtime"]["driver"]["device"] == "cuda:0"
    for m in c["methods"]:
        assert abs(g["methods"][m]["accuracy"] - c["methods"][m]["accuracy"]) <= 1 / 3 + 1e-9, m  # at most one flip


@pytest.mark.parametrize("strategy,ds", [("ddp", ""), ("deepspeed", "zero2.json"), ("deepspeed", "zero3.json")])
def test_tiny_bank_on_one_gpu_worker(strategy, ds, lamp_root, tmp_path):
    from mta.bank import Bank
    from mta.bank_trainer import BankTrainConfig, train_bank
    from mta.data import load_task_split
    from suite.models import ModelConfig
    from suite.ray_local import init_ray

    ray = init_ray(num_cpus=2, num_gpus=1)
    try:
        users = load_task_split("LaMP_2", "train", str(lamp_root))[:1]
        profiles = {u.user_id: u.profile for u in users}
        bank = Bank.create(tmp_path / "bank", list(profiles), np.eye(1, 4), {"task": "LaMP_2"})
        tcfg = tiny_lora(micro_batch=2)
        cfg = BankTrainConfig(
            strategy=strategy,
            num_workers=1,
            gpus_per_worker=1,
            progress=False,
            deepspeed_config=f"ray_jobs/configs/deepspeed/{ds}" if ds else "ray_jobs/configs/deepspeed/zero2.json",
        )
        stats = train_bank(
            bank,
            profiles,
            "LaMP_2",
            ModelConfig(name="tiny", max_length=256, dtype="float32"),
            tcfg,
            cfg,
            tmp_path / "out",
        )
        assert stats and stats[0]["steps"] == 2
        sd = Bank(bank.path).load().adapters[0]
        assert sd and all(v.numel() > 0 for v in sd.values())  # ZeRO-3 without a gather would save empty tensors
        assert any(v.abs().sum() > 0 for k, v in sd.items() if "lora_B" in k)
    finally:
        ray.shutdown()


def test_zero3_saved_adapter_equals_the_gathered_weights(tmp_path):
    """One process on one GPU (NCCL): every LoRA tensor partitioned, gathered before save."""
    from tests.mta.test_deepspeed_zero3 import run_zero3

    r = run_zero3("cuda", tmp_path / "adapter")
    assert r["raw_numel"] == [0] and 0 not in r["gathered_numel"] and r["saved_equal"] and r["b_nonzero"]
