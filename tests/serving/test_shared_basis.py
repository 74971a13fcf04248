"""The shared-basis forward against the exported peft adapters: one mixed batch of 8 users and the
base model, every row equal to that user's own peft adapter."""

from __future__ import annotations

import pytest
import torch

from mta.export import save_peft, user_adapter
from mta.fusion import FusionConfig, fuse_chosen
from mta.recipe import MTAJobConfig, build_bank
from serving.shared_basis import SharedBasis, row_from_record
from suite.config import load_config
from suite.encoders import load_encoder
from suite.models import ModelConfig, load_base


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    from mta.bank import Bank
    from mta.bank_build import bank_path_for
    from tests.conftest import make_lamp2

    tmp = tmp_path_factory.mktemp("basis")
    make_lamp2(tmp / "lamp", "train", n_users=12, n_items=6, seed=1, prefix="t")
    ov = [f"data.root={tmp / 'lamp'}", f"bank_cache={tmp / 'banks'}", "anchors.n_clusters=4"]
    job = load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov)
    build_bank(job, tmp, load_encoder(job.encoder), log=lambda *a: None)
    return Bank(bank_path_for(job)).load(), tmp


def _user(bank, g: torch.Generator, k: int, rank: int | None):
    idx = torch.randperm(len(bank.ids), generator=g)[:k].tolist()
    w = torch.rand(k, generator=g) + 0.1
    w = (w / w.sum()).tolist()
    keys = sorted(x[: -len(".lora_A.weight")] for x in bank.adapters[0] if x.endswith(".lora_A.weight"))
    stack = None
    if rank:
        stack = {}
        for m in keys:
            a, b = bank.adapters[0][f"{m}.lora_A.weight"], bank.adapters[0][f"{m}.lora_B.weight"]
            stack[f"{m}.lora_A.weight"] = 0.05 * torch.randn(rank, a.shape[1], generator=g)
            stack[f"{m}.lora_B.weight"] = 0.05 * torch.randn(b.shape[0], rank, generator=g)
    return [bank.ids[i] for i in idx], w, stack


def _peft_logits(bank, user, folder, x):
    from peft import PeftModel

    anchors, w, stack = user
    fused = fuse_chosen(bank, anchors, w, FusionConfig(merge="cat"))
    sd, _, padded = user_adapter(fused.state_dict, fused.alpha / fused.r, stack, 2.0)
    save_peft(folder, sd, padded, fused.target_modules, "tiny")
    base, _ = load_base(ModelConfig(name="tiny"))
    m = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.inference_mode():
        return m(input_ids=x).logits


def test_a_mixed_batch_of_eight_users_and_the_base_equals_each_exported_peft_adapter(bank, tmp_path):
    """Mutations caught: one row's coefficients applied to every row (c without its batch axis),
    an anchor's scale left out of B, the stack's scale left out, a stack given to the wrong row."""
    loaded, _ = bank
    g = torch.Generator().manual_seed(0)
    users = [_user(loaded, g, k=1 + i % 3, rank=(None if i == 3 else 1 + i % 2)) for i in range(8)]
    x = torch.randint(3, 60, (1, 12), generator=g)
    want = [_peft_logits(loaded, u, tmp_path / f"u{i}", x) for i, u in enumerate(users)]
    model, _ = load_base(ModelConfig(name="tiny"))
    model.eval()
    with torch.inference_mode():
        base_want = model(input_ids=x).logits
    basis = SharedBasis(model, loaded.adapters, loaded.scales)
    rows = [row_from_record(loaded.ids, a, w, st or {}, 2.0) for a, w, st in users] + [None]
    batch = x.repeat(len(rows), 1)
    with torch.inference_mode(), basis.rows(rows):
        got = model(input_ids=batch).logits
    for i in range(8):
        assert torch.allclose(got[i], want[i][0], atol=1e-5), f"row {i}"
    assert torch.allclose(got[8], base_want[0], atol=1e-5)  # the base row is the base model
    assert not torch.allclose(want[0], want[1], atol=1e-3)  # the users really differ
    with torch.inference_mode():  # outside the context the model is the base model again
        assert torch.allclose(model(input_ids=x).logits, base_want, atol=1e-6)


def test_only_the_anchors_some_row_chose_are_gathered(bank):
    """Mutation caught: every anchor's columns multiplied whatever the rows chose (the product's
    width would be K·r, not the chosen anchor's r), or a copy of the whole bank per batch when
    every anchor is in use and no row has a stack."""
    loaded, _ = bank
    model, _ = load_base(ModelConfig(name="tiny"))
    basis = SharedBasis(model, loaded.adapters, loaded.scales)
    rows = [row_from_record(loaded.ids, [loaded.ids[1]], [1.0], {}, 1.0)] * 3
    with basis.rows(rows):
        for path, (At, Bt, c) in basis._ctx.v["ab"].items():
            assert At.shape[1] == Bt.shape[0] == c.shape[-1] == basis.r[1]
    with basis.rows([row_from_record(loaded.ids, loaded.ids, [1 / len(loaded.ids)] * len(loaded.ids), {}, 1.0)]):
        for path, (At, Bt, _) in basis._ctx.v["ab"].items():
            assert At is basis.At[path] and Bt is basis.Bt[path]  # every anchor in use: no gather, no copy
