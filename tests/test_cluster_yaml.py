"""cluster.yaml passes Ray's own cluster-config validation and keeps every port but SSH closed."""

import copy
from pathlib import Path

import pytest
import yaml


def _cfg():
    return yaml.safe_load(Path("cluster.yaml").read_text())


def test_ray_validates_the_cluster_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(_cfg())  # merges the AWS provider defaults, as `ray up` does
    validate_config(cfg)  # Ray's JSON schema + node-type checks; raises on any error
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = [n for n in cfg["available_node_types"] if "gpu" in n]
    assert gpu and all(
        cfg["available_node_types"][n]["min_workers"] <= cfg["available_node_types"][n]["max_workers"] for n in gpu
    )


def test_validation_rejects_a_broken_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    bad = copy.deepcopy(_cfg())
    bad["head_node_type"] = "nope"
    with pytest.raises(ValueError):
        validate_config(prepare_config(bad))


def test_only_ssh_is_open_and_dashboard_is_local():
    cfg = _cfg()
    perms = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(p["FromPort"], p["ToPort"]) for p in perms] == [(22, 22)]
    assert all(r["CidrIp"] != "0.0.0.0/0" for p in perms for r in p["IpRanges"])
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    assert "py311-gpu" in cfg["docker"]["image"] and "2.60.0" in cfg["docker"]["image"]
    setup = " ".join(cfg["setup_commands"])
    assert "requirements.txt" in setup and "-e /home/ray/personalized-llm-suite" in setup


def test_token_auth_on_every_node_and_no_token_in_the_file():
    cfg = _cfg()
    for cmds in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[cmds] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), cmds
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]  # job drivers in the container too
    # Ray's runtime-env agent logs env_vars (WANDB_API_KEY, Tune's copy of AWS keys) at INFO
    assert "--env RAY_LOGGER_LEVEL=warning" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    text = Path("cluster.yaml").read_text()
    assert "RAY_AUTH_TOKEN=" not in text and "auth_token:" not in text.replace("/home/ray/.ray/auth_token:", "")
