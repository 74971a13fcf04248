"""Ray Train on a local, loopback-only Ray: 2 CPU workers (gloo) train a bank on the tiny model."""

import numpy as np
import torch

from mta.bank import Bank
from mta.bank_trainer import BankTrainConfig, train_bank
from mta.data import load_task_split
from suite.models import ModelConfig
from tests.conftest import tiny_lora


def _plan(lamp_root, path, n=2):
    users = load_task_split("LaMP_2", "train", str(lamp_root))[:n]
    bank = Bank.create(path, [u.user_id for u in users], np.eye(n, 4), {"task": "LaMP_2"})
    return bank, {u.user_id: u.profile for u in users}


def test_two_workers_match_single_process_and_stay_on_loopback(ray_local, lamp_root, tmp_path):
    import ray.util

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    mcfg = ModelConfig(name="tiny", max_length=256)
    tcfg = tiny_lora(batch_size=4)
    ray_bank, profiles = _plan(lamp_root, tmp_path / "ray_bank")
    stats = train_bank(
        ray_bank,
        profiles,
        "LaMP_2",
        mcfg,
        tcfg,
        BankTrainConfig(backend="ray", num_workers=2, progress=False),
        tmp_path / "out",
    )
    assert sorted(s["anchor"] for s in stats) == sorted(profiles)
    assert Bank(ray_bank.path).missing_ids() == []
    local_bank, _ = _plan(lamp_root, tmp_path / "local_bank")
    train_bank(local_bank, profiles, "LaMP_2", mcfg, tcfg, BankTrainConfig(backend="local", progress=False), tmp_path)
    a, b = Bank(ray_bank.path).load(), Bank(local_bank.path).load()
    assert a.ids == b.ids
    for sa, sb in zip(a.adapters, b.adapters):
        assert any(v.abs().sum() > 0 for k, v in sa.items() if "lora_B" in k)  # trained, not empty
        for k in sa:  # data-parallel gradients summed across workers = the single-process update
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-5)
    # rerun: every anchor is in the bank, nothing is trained again
    assert (
        train_bank(
            Bank(ray_bank.path),
            profiles,
            "LaMP_2",
            mcfg,
            tcfg,
            BankTrainConfig(backend="ray", num_workers=2),
            tmp_path / "out",
        )
        == []
    )
