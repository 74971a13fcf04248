"""A user's adapter exported as one standard peft folder equals, exactly, the fused anchors plus the
stacked LoRA held in memory (the `cat` combination), padded to a rank vLLM accepts."""

from __future__ import annotations

import json

import pytest
import torch

from mta.adapters import AdapterHost
from mta.export import VLLM_RANKS, combine_exact, pad_rank, save_peft, user_adapter, vllm_rank
from suite.models import ModelConfig, load_base

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _random_adapter(host: AdapterHost, name: str, r: int, alpha: float, seed: int) -> dict:
    host.add(name, r, alpha)
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in host.state_dict(name).items()}
    host.add(name, r, alpha, state_dict=sd)
    return sd


def test_combination_is_exact_and_padding_keeps_the_update():
    g = torch.Generator().manual_seed(0)
    A1, B1, A2, B2 = (torch.randn(s, generator=g) for s in ((4, 6), (5, 4), (1, 6), (5, 1)))
    sd1 = {"m.lora_A.weight": A1, "m.lora_B.weight": B1}
    sd2 = {"m.lora_A.weight": A2, "m.lora_B.weight": B2}
    sd, rank = combine_exact([(sd1, 2.0), (sd2, 0.5)])
    want = 2.0 * B1 @ A1 + 0.5 * B2 @ A2
    torch.testing.assert_close(sd["m.lora_B.weight"] @ sd["m.lora_A.weight"], want)
    assert rank == 5 and vllm_rank(5) == 8 and vllm_rank(1) == 1 and vllm_rank(9) == 16
    padded = pad_rank(sd, 8)
    assert padded["m.lora_A.weight"].shape == (8, 6)
    torch.testing.assert_close(padded["m.lora_B.weight"] @ padded["m.lora_A.weight"], want)
    with pytest.raises(ValueError):
        vllm_rank(VLLM_RANKS[-1] + 1)


def test_exported_folder_loads_in_peft_and_its_logits_equal_the_in_memory_adapter(tmp_path):
    from peft import AutoPeftModelForCausalLM, PeftModel

    model, codec = load_base(ModelConfig(name="tiny", device="cpu"))
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir)  # a base model folder that AutoPeftModel can find by name
    codec.tok.save_pretrained(base_dir)
    host = AdapterHost(model, TARGETS)
    fused = _random_adapter(host, "fused", 4, 8, seed=1)  # e.g. two rank-2 anchors concatenated
    stack = _random_adapter(host, "stack", 1, 2, seed=2)
    host.activate(["fused", "stack"])
    x = torch.tensor([codec.ids("hello there, how are you")])
    with torch.inference_mode():
        want = host.model(input_ids=x).logits

    sd, rank, padded = user_adapter(fused, 8 / 4, stack, 2 / 1)
    assert (rank, padded) == (5, 8)
    out = save_peft(tmp_path / "user", sd, padded, TARGETS, str(base_dir))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["base_model_name_or_path"] == str(base_dir)
    assert cfg["r"] == cfg["lora_alpha"] == 8 and cfg["peft_type"] == "LORA"

    fresh, _ = load_base(ModelConfig(name="tiny", device="cpu"))
    with torch.inference_mode():
        got = PeftModel.from_pretrained(fresh, out).eval()(input_ids=x).logits
        auto = AutoPeftModelForCausalLM.from_pretrained(out).eval()(input_ids=x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(auto, want, atol=1e-5, rtol=1e-5)
    # the adapter moves the logits at all (the comparison is not vacuous)
    with torch.inference_mode(), host.model.disable_adapter():
        assert (host.model(input_ids=x).logits - want).abs().max() > 1e-3
