"""The bank job through DeepSpeed ZeRO-2 on 2 local gloo workers: a worker killed mid-anchor is
restarted and the anchor resumes from its checkpoint; a rerun skips finished anchors."""

import json

import numpy as np

from mta.bank import Bank
from mta.bank_trainer import BankTrainConfig, train_bank
from mta.data import load_task_split
from suite.models import ModelConfig
from tests.conftest import tiny_lora


def test_deepspeed_zero2_kill_resume_and_skip(ray_local, lamp_root, tmp_path):
    users = load_task_split("LaMP_2", "train", str(lamp_root))[:2]
    profiles = {u.user_id: u.profile for u in users}
    bank = Bank.create(tmp_path / "bank", list(profiles), np.eye(2, 4), {"task": "LaMP_2"})
    tcfg = tiny_lora(max_samples=6)
    marker = tmp_path / "killed"
    cfg = BankTrainConfig(
        strategy="deepspeed",
        num_workers=2,
        checkpoint_every=1,
        progress=False,
        max_failures=2,
        fail_at={"anchor": 0, "step": 2, "rank": 1, "marker": str(marker)},
    )
    stats = train_bank(bank, profiles, "LaMP_2", ModelConfig(name="tiny", max_length=256), tcfg, cfg, tmp_path / "out")
    assert marker.exists()  # the worker really was killed at step 2 of the first anchor
    by = {s["anchor"]: s for s in stats}
    first = users[0].user_id
    assert by[first]["steps"] == 3 and by[first]["resumed_from_step"] == 1  # continued, not restarted
    loaded = Bank(bank.path).load()
    assert loaded.ids == list(profiles)  # every anchor exactly once
    for sd in loaded.adapters:
        assert all(v.numel() > 0 for v in sd.values())
        assert any(v.abs().sum() > 0 for k, v in sd.items() if "lora_B" in k)
    manifest = json.loads((bank.path / "manifest.json").read_text())
    assert [a["id"] for a in manifest["anchors"] if a["done"]] == list(profiles)
    again = train_bank(
        Bank(bank.path),
        profiles,
        "LaMP_2",
        ModelConfig(name="tiny"),
        tcfg,
        BankTrainConfig(strategy="deepspeed", num_workers=2),
        tmp_path / "out",
    )
    assert again == []
