"""Per-user records and `adapt`: the record holds what a user needs beyond the bank, keyed by a hash
of its content; the exported folder equals the adapter rebuilt from the bank and the record."""

from __future__ import annotations

import json

import pytest
import torch

from mta.adapters import AdapterHost
from mta.bank import Bank
from mta.fusion import fuse_chosen
from mta.users import latest_record, load_record, write_record
from suite.config import load_config
from suite.io import DataError


def _sd(seed: float) -> dict:
    return {"m.lora_A.weight": torch.full((1, 4), seed), "m.lora_B.weight": torch.full((3, 1), seed)}


def test_records_are_keyed_by_content_verified_and_the_newest_wins(tmp_path):
    a = write_record(tmp_path, "u 1/x", "bank-1", ["a1", "a2"], [0.6, 0.4], _sd(1.0), 1, 2.0)
    same = write_record(tmp_path, "u 1/x", "bank-1", ["a1", "a2"], [0.6, 0.4], _sd(1.0), 1, 2.0)
    assert same.path == a.path and a.stack_scale == 2.0 and a.anchors == ["a1", "a2"]
    b = write_record(tmp_path, "u 1/x", "bank-1", ["a1", "a2"], [0.6, 0.4], _sd(2.0), 1, 2.0)  # retrained stack
    assert b.content_hash != a.content_hash and b.path != a.path
    assert latest_record(tmp_path, "u 1/x").content_hash == b.content_hash
    assert latest_record(tmp_path, "nobody") is None
    rec = json.loads((b.path / "record.json").read_text())
    (b.path / "record.json").write_text(json.dumps({**rec, "weights": [0.9, 0.1]}))
    with pytest.raises(DataError, match="content_hash"):
        load_record(b.path)
    (a.path / "stack.safetensors").write_bytes(b"torn")
    with pytest.raises(DataError, match="checksum mismatch"):
        load_record(a.path)


def test_adapt_exports_what_the_bank_and_the_record_rebuild(lamp_root, tmp_path):
    from peft import PeftModel

    from mta.recipe import MTAJobConfig, adapt, bank_path_for
    from suite.models import load_base

    ov = [f"data.root={lamp_root}", f"bank_cache={tmp_path / 'banks'}", f"users_dir={tmp_path / 'users'}"]
    cfg = load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov)
    res = adapt(cfg, tmp_path / "adapter", user_id="d0")
    rec = latest_record(tmp_path / "users", "d0")
    assert res["record"] == str(rec.path) and rec.anchors == res["anchors"] and res["padded_rank"] >= res["rank"]
    # rebuild the user's adapter from the bank and the record alone, in memory
    bank = Bank(bank_path_for(cfg)).load()
    fused = fuse_chosen(bank, rec.anchors, rec.weights, cfg.fusion)
    model, codec = load_base(cfg.model)
    host = AdapterHost(model, cfg.anchor_train.target_modules)
    host.load_fused(fused)
    host.add("stack", rec.stack_r, rec.stack_alpha, state_dict=rec.stack)
    host.activate(["fused", "stack"])
    x = torch.tensor([codec.ids("Which tag? description: a film about robots")])
    with torch.inference_mode():
        want = host.model(input_ids=x).logits
    fresh, _ = load_base(cfg.model)
    with torch.inference_mode():
        got = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()(input_ids=x).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    cfgj = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfgj["task_type"] == "CAUSAL_LM" and cfgj["base_model_name_or_path"] == "tiny"
    with pytest.raises(DataError, match="no such user"):
        adapt(cfg, tmp_path / "other", user_id="nobody")


def test_the_pipeline_writes_records_with_save_users(lamp_root, tmp_path):
    from mta.recipe import MTAJobConfig, run

    ov = [
        f"data.root={lamp_root}",
        f"bank_cache={tmp_path / 'banks'}",
        f"users_dir={tmp_path / 'users'}",
        "eval.methods=[mta]",
        "eval.save_users=true",
        "data.max_eval_users=2",
    ]
    run(load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov), tmp_path / "run")
    recs = [latest_record(tmp_path / "users", u) for u in ("d0", "d1")]
    assert all(r is not None and len(r.anchors) == 2 and r.stack for r in recs)


def test_bank_anchors_are_standard_peft_folders_with_base_and_task(lamp_root, tmp_path):
    from mta.bank import Bank
    from mta.recipe import MTAJobConfig, bank_path_for, build_bank
    from suite.encoders import load_encoder

    cfg = load_config(
        MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", [f"data.root={lamp_root}", f"bank_cache={tmp_path}"]
    )
    build_bank(cfg, tmp_path, load_encoder(cfg.encoder), log=lambda *a: None)
    bank = Bank(bank_path_for(cfg))
    for a in bank.manifest["anchors"]:
        conf = json.loads((bank.path / a["dir"] / "adapter_config.json").read_text())
        assert conf["task_type"] == "CAUSAL_LM" and conf["base_model_name_or_path"] == "tiny"


def test_re_adapting_back_to_an_earlier_record_serves_it(tmp_path):
    """Records by version, not by file time: A, then B, then A again (an identical record, whose
    folder already exists and is not rewritten) makes A current. Mutation caught: `latest_record`
    picking the newest folder by mtime (it returns B)."""
    import torch

    from mta.users import latest_record, write_record

    def rec(w):
        sd = {"m.lora_A.weight": torch.full((1, 4), w), "m.lora_B.weight": torch.full((4, 1), w)}
        return write_record(tmp_path, "u/1", "bank", ["a0", "a1"], [w, 1 - w], sd, 1, 2.0)

    a = rec(0.25)
    b = rec(0.75)
    assert latest_record(tmp_path, "u/1").content_hash == b.content_hash
    again = rec(0.25)
    assert again.content_hash == a.content_hash and again.path == a.path
    assert latest_record(tmp_path, "u/1").content_hash == a.content_hash
    # another user whose id slugs alike keeps a pointer of their own
    sd = {"m.lora_A.weight": torch.ones(1, 4), "m.lora_B.weight": torch.ones(4, 1)}
    other = write_record(tmp_path, "u_1", "bank", ["a0"], [1.0], sd, 1, 2.0)
    assert latest_record(tmp_path, "u_1").content_hash == other.content_hash
    assert latest_record(tmp_path, "u/1").content_hash == a.content_hash
