import numpy as np
import torch

from mta.adapters import AdapterHost
from mta.bank import LoadedBank
from mta.fusion import FusionConfig, fuse, retrieve
from mta.merge import delta

TARGETS = ["q_proj", "up_proj"]


def _bank(model, k=3, r=2):
    host = AdapterHost(model, TARGETS)
    adapters, configs = [], []
    for i in range(k):
        host.add("anc", r, 2 * r + i, target_modules=TARGETS, seed=i)
        host.activate(["anc"], trainable="anc")
        with torch.no_grad():
            for n, p in host.model.named_parameters():
                if ".anc." in n and "lora_B" in n:
                    p.normal_(0, 0.1)
        adapters.append({k_: v.clone() for k_, v in host.state_dict("anc").items()})
        configs.append({**host.lora_config("anc")})
        host.remove("anc")
    emb = np.eye(k, 4, dtype=np.float32) + 0.1
    return host, LoadedBank([f"anc{i}" for i in range(k)], emb, adapters, configs, {})


def test_retrieve_orders_by_cosine():
    emb = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    idx, sims = retrieve(emb, np.array([0.1, 1.0]), 2)
    assert list(idx) == [2, 1] and sims[0] > sims[1]


def test_fused_adapter_in_peft_equals_weighted_sum_of_updates():
    """The merged update inside a real peft model equals Σ w_i · scale_i · B_i A_i (cat, svd)."""
    from suite.models import ModelConfig, load_base

    model, _ = load_base(ModelConfig(name="tiny"))
    host, bank = _bank(model)
    user = np.array([1.0, 0.9, 0.0, 0.1], dtype=np.float32)
    for merge_name in ("cat", "svd"):
        cfg = FusionConfig(top_k=2, weighting="softmax", temperature=0.5, merge=merge_name, svd_rank=4)
        f = fuse(bank, user, cfg)
        assert f.anchor_ids == ["anc0", "anc1"] and abs(sum(f.weights) - 1) < 1e-9
        host.load_fused(f)
        host.activate(["fused"])
        layer = host.model.base_model.model.model.layers[0].self_attn.q_proj
        got = delta(layer.lora_A["fused"].weight, layer.lora_B["fused"].weight, layer.scaling["fused"])
        key = "base_model.model.model.layers.0.self_attn.q_proj"
        want = sum(
            w
            * bank.scales[i]
            * (bank.adapters[i][f"{key}.lora_B.weight"].double() @ bank.adapters[i][f"{key}.lora_A.weight"].double())
            for i, w in zip([0, 1], f.weights)
        )
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        host.remove("fused")


def test_fusion_is_deterministic_and_records_what_is_stored():
    from suite.models import ModelConfig, load_base

    model, _ = load_base(ModelConfig(name="tiny"))
    _, bank = _bank(model)
    u = np.array([0.2, 1.0, 0.1, 0.0], dtype=np.float32)
    a, b = fuse(bank, u, FusionConfig()), fuse(bank, u, FusionConfig())
    assert a.record() == b.record() and a.record()["anchors"][0] == "anc1"
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
