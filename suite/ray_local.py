"""Start a local Ray that talks to loopback only (SPEC §3).

By default Ray binds the machine's external address and its dashboard probes cloud metadata
addresses. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` plus `$HOME/ray_bootstrap_config.yaml` holding
`{}` were seen to stop both; we set them only for a local Ray that this process starts itself.
"""
from __future__ import annotations

import os
from pathlib import Path

LOOPBACK = "127.0.0.1"


def loopback_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    boot = Path.home() / "ray_bootstrap_config.yaml"
    if not boot.exists():
        boot.write_text("{}\n")


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None):
    """Join `address` (or RAY_ADDRESS, e.g. under `ray job submit`) or start a loopback-only Ray."""
    address = address or os.environ.get("RAY_ADDRESS")
    local = not address or address == "local"
    if local:
        loopback_env()  # before `import ray`: Ray reads these at import time
    import ray
    import ray._private.ray_constants as rc

    if ray.is_initialized():
        return ray
    if not local:
        ray.init(address=address, log_to_driver=True)
        return ray
    # If Ray was imported before the variables were set, its constant is stale: without this the
    # node (and gloo's rendezvous) would bind the machine's external address, not loopback.
    rc.ENABLE_RAY_CLUSTER = False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        log_to_driver=True,
        runtime_env={"env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false"}},
    )
    return ray
