import numpy as np
import torch

from mta.stacking import StackConfig, adapter_bytes, stack_user
from mta.training import Sample
from tests.mta.test_fusion import _bank


def test_stack_trains_only_the_new_lora_on_top_of_frozen_fused():
    from mta.fusion import FusionConfig, fuse
    from suite.models import ModelConfig, load_base

    model, codec = load_base(ModelConfig(name="tiny"))
    host, bank = _bank(model)
    fused = fuse(bank, np.array([1, 0, 0, 0], dtype=np.float32), FusionConfig(top_k=2))
    before = {n: p.clone() for n, p in host.model.named_parameters()}
    cfg = StackConfig(r=1, alpha=2, lr=1e-2, max_steps=3, batch_size=2, target_modules=["q_proj", "up_proj"])
    info = stack_user(host, fused, [Sample("a", "comedy"), Sample("b", "action")], cfg, codec)
    assert info["steps"] == 3 and host.model.active_adapters == ["fused", "stack"]
    params = dict(host.model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in before.items())  # base and fused frozen
    stack_B = [p for n, p in params.items() if ".stack." in n and "lora_B" in n]
    assert stack_B and any(p.abs().sum() > 0 for p in stack_B)  # lora_B starts at 0: it trained
    # stored per user: the rank-1 stacked LoRA + anchor ids/weights, far below one r=8 LoRA
    assert info["bytes"] == adapter_bytes(host.state_dict("stack"), fused.record())
    r1 = sum(v.numel() for v in host.state_dict("stack").values())
    assert r1 == 2 * (32 + 32) + 2 * (32 + 64)  # q_proj 32→32, up_proj 32→64, two layers, r=1
