import json

import numpy as np
import pytest
import torch

from mta.bank import Bank, BankError, save_adapter


def _sd(seed, r=2):
    g = torch.Generator().manual_seed(seed)
    return {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.randn(r, 32, generator=g),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.randn(32, r, generator=g),
    }


CONF = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "peft_type": "LORA"}


def _bank(tmp_path, ids=("a", "b b/c")):
    return Bank.create(tmp_path / "bank", list(ids), np.eye(len(ids), 3), {"task": "LaMP_2"}, [11, 12])


def test_round_trip_and_resume_plan(tmp_path):
    bank = _bank(tmp_path)
    assert bank.missing_ids() == ["a", "b b/c"]
    bank.add_anchor("a", state_dict=_sd(0), lora_config=CONF)
    with pytest.raises(BankError, match="not trained yet"):
        Bank(bank.path).load()
    bank.add_anchor("b b/c", state_dict=_sd(1), lora_config=CONF)
    again = Bank.create(tmp_path / "bank", ["a", "b b/c"], np.eye(2, 3), {})  # same plan: reopens
    loaded = again.load()
    assert loaded.ids == ["a", "b b/c"] and loaded.scales == [2.0, 2.0]
    for k, v in _sd(1).items():
        torch.testing.assert_close(loaded.adapters[1][k], v)
    np.testing.assert_allclose(loaded.emb, np.eye(2, 3))
    with pytest.raises(BankError, match="different anchor plan"):
        Bank.create(tmp_path / "bank", ["a"], np.eye(1, 3), {})


def test_corruption_is_detected_and_named(tmp_path):
    bank = _bank(tmp_path)
    for i, a in enumerate(["a", "b b/c"]):
        bank.add_anchor(a, state_dict=_sd(i), lora_config=CONF)
    f = bank.path / bank.manifest["anchors"][1]["dir"] / "adapter_model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(BankError, match=r"adapter_model.safetensors: checksum mismatch for anchor 'b b/c'"):
        Bank(bank.path).load()
    f.unlink()
    with pytest.raises(BankError, match="missing file"):
        Bank(bank.path).load()
    (bank.path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(BankError, match="format"):
        Bank(bank.path)


def test_empty_adapter_refused(tmp_path):
    with pytest.raises(BankError, match="empty adapter"):
        save_adapter(tmp_path / "x", {"k": torch.zeros(0, 3)}, CONF)


def test_bank_adapters_are_standard_peft(tmp_path, tiny):
    """A bank adapter folder loads with plain `PeftModel.from_pretrained`."""
    from peft import PeftModel

    from mta.adapters import AdapterHost

    model, codec = tiny
    host = AdapterHost(model, ["q_proj"])
    host.add("x", 2, 4, target_modules=["q_proj"], seed=3)
    host.activate(["x"], trainable="x")
    with torch.no_grad():
        for n, p in host.model.named_parameters():
            if ".x." in n:
                p.add_(0.1)
    sd, conf = host.state_dict("x"), host.lora_config("x")
    host.remove("x")
    bank = _bank(tmp_path, ["a"])
    bank.add_anchor("a", state_dict=sd, lora_config=conf)
    from suite.models import ModelConfig, load_base

    fresh, _ = load_base(ModelConfig(name="tiny"))
    pm = PeftModel.from_pretrained(fresh, str(bank.path / bank.manifest["anchors"][0]["dir"]))
    got = {k: v for k, v in pm.state_dict().items() if "lora_A" in k}
    assert got and all(torch.allclose(v, sd[k.replace(".default", "")]) for k, v in got.items())


# ------------------------------------------------------------------ reliability round 2
def test_a_folder_that_is_not_a_bank_is_refused(tmp_path):
    d = tmp_path / "bank"
    d.mkdir()
    (d / "results.csv").write_text("keep me")
    with pytest.raises(BankError, match="is not a bank"):
        Bank.create(d, ["a"], np.eye(1, 3), {})
    assert [p.name for p in d.iterdir()] == ["results.csv"]


@pytest.mark.parametrize("bad_dir", ["../elsewhere", "/tmp/elsewhere", "anchors/../../elsewhere", "other/x"])
def test_a_manifest_path_outside_the_bank_is_refused_and_nothing_outside_is_deleted(tmp_path, bad_dir):
    from suite.io import seal

    bank = _bank(tmp_path)
    bank.add_anchor("a", state_dict=_sd(0), lora_config=CONF)
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "data.txt").write_text("not the bank's")
    man = json.loads((bank.path / "manifest.json").read_text())
    man["anchors"][0]["dir"] = bad_dir
    (bank.path / "manifest.json").write_text(json.dumps(seal(man)))  # even a validly sealed one
    with pytest.raises(BankError, match="dir"):
        Bank(bank.path).add_anchor("a", state_dict=_sd(5), lora_config=CONF)
    assert (victim / "data.txt").read_text() == "not the bank's"


def test_an_edited_bank_manifest_is_refused(tmp_path):
    bank = _bank(tmp_path)
    bank.add_anchor("a", state_dict=_sd(0), lora_config=CONF)
    man = json.loads((bank.path / "manifest.json").read_text())
    man["anchors"][0]["files"] = {}  # checksums emptied
    (bank.path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BankError, match="manifest_sha256"):
        Bank(bank.path)


def test_a_bank_made_under_other_settings_is_never_reused(tmp_path):
    """Same anchor ids, another task / model / LoRA recipe: reopening must refuse, naming the
    settings that differ (an explicit bank_path= with a changed anchor_train.* would otherwise reuse
    anchors trained with the old recipe as the new one's)."""
    inputs = {"task": "LaMP_2", "model": {"name": "tiny"}, "lora": {"r": 4, "lr": 1e-4}}
    meta = {"signature": "s1", "signature_inputs": inputs}
    Bank.create(tmp_path / "bank", ["a"], np.eye(1, 3), meta)
    assert Bank.create(tmp_path / "bank", ["a"], np.eye(1, 3), meta).manifest["signature"] == "s1"
    changed = {"signature": "s2", "signature_inputs": {**inputs, "lora": {"r": 4, "lr": 1e-3}, "task": "LaMP_3"}}
    with pytest.raises(BankError, match=r"other settings \(lora.lr, task\)"):
        Bank.create(tmp_path / "bank", ["a"], np.eye(1, 3), changed)
    # a bank recorded before signature inputs existed: its recorded settings are compared
    Bank.create(tmp_path / "old", ["a"], np.eye(1, 3), {"task": "LaMP_2", "lora": {"r": 8}})
    with pytest.raises(BankError, match=r"other settings \(lora.r\)"):
        Bank.create(tmp_path / "old", ["a"], np.eye(1, 3), {"task": "LaMP_2", "lora": {"r": 4}})


def test_a_changed_anchor_recipe_with_an_explicit_bank_path_is_refused(lamp_root, tmp_path):
    from mta.recipe import MTAJobConfig, build_bank
    from suite.config import load_config
    from suite.encoders import load_encoder

    ov = [f"data.root={lamp_root}", f"bank_path={tmp_path / 'bank'}", "eval.methods=[prior]"]
    cfg = load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov)
    enc = load_encoder(cfg.encoder)
    build_bank(cfg, tmp_path, enc, log=lambda *a: None)
    cfg2 = load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml", ov + ["anchor_train.lr=0.001"])
    with pytest.raises(BankError, match=r"other settings \(lora.lr\)"):
        build_bank(cfg2, tmp_path, enc, log=lambda *a: None)
