"""Start a local Ray that talks to loopback only (SPEC §3).

By default Ray binds the machine's external address and its dashboard probes cloud metadata
addresses. `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` plus `$HOME/ray_bootstrap_config.yaml` holding
`{}` were seen to stop both; we set them only for a local Ray that this process starts itself.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from pathlib import Path

from suite.logs import quiet, reapply

LOOPBACK = "127.0.0.1"


def loopback_env() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray's runtime-env agent logs every runtime env at INFO, env_vars included, and Tune copies
    # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the driver into each trial's: at WARNING
    # (read by the processes Ray starts) no credential is written to the session's logs
    os.environ.setdefault("RAY_LOGGER_LEVEL", "warning")
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
        # workers' stdout/stderr reach the terminal unless the run sends library output to its log
        log_to_driver=not quiet(),
        logging_level=logging.WARNING if quiet() else logging.INFO,
        runtime_env={
            "env_vars": {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false"},
            "worker_process_setup_hook": "suite.ray_local.loopback_worker_setup",
        },
    )
    reapply()  # Ray reconfigures its loggers at init
    return ray


def started_locally() -> bool:
    """True when this process runs the loopback-only Ray that `init_ray` started (not a cluster)."""
    import ray

    if not ray.is_initialized():
        return False
    ctx = ray.get_runtime_context()
    return ctx.gcs_address.startswith(f"{LOOPBACK}:")


def torch_config(backend: str, rendezvous_dir: str | Path | None = None):
    """Ray Train's TorchConfig for `backend`; on a loopback-only local Ray, a variant whose process
    group meets through a file (torch FileStore) instead of a TCPStore: torch's TCPStore server
    listens on every interface and has no bind-address option, so a local run would otherwise
    open a port beyond loopback for the whole training. Gloo's own pair sockets are pinned to `lo`
    (GLOO_SOCKET_IFNAME, set in the workers' env)."""
    from ray.train.torch import TorchConfig

    if rendezvous_dir is None or not started_locally():
        return TorchConfig(backend=backend)
    return _file_rendezvous_config(backend, str(rendezvous_dir))


def _file_rendezvous_config(backend: str, rendezvous_dir: str):
    import ray
    from ray.train.torch import TorchConfig
    from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

    class FileRendezvousBackend(_TorchBackend):
        def on_start(self, worker_group, backend_config):
            Path(backend_config.rendezvous_dir).mkdir(parents=True, exist_ok=True)
            url = f"file://{Path(backend_config.rendezvous_dir).resolve()}/pg-{uuid.uuid4().hex}"
            worker_group.execute(_set_torch_distributed_env_vars)  # LOCAL_RANK etc., as Ray Train does
            ray.get(
                [
                    worker_group.execute_single_async(
                        i,
                        _setup_torch_process_group,
                        backend=backend_config.backend,
                        world_rank=i,
                        world_size=len(worker_group),
                        init_method=url,
                        timeout_s=backend_config.timeout_s,
                    )
                    for i in range(len(worker_group))
                ]
            )

    @dataclasses.dataclass
    class FileRendezvousTorchConfig(TorchConfig):
        rendezvous_dir: str = ""

        @property
        def backend_cls(self):
            return FileRendezvousBackend

    return FileRendezvousTorchConfig(backend=backend, rendezvous_dir=rendezvous_dir)


PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def _no_state_api_warning(record: logging.LogRecord) -> bool:
    return "Failed to query Ray Train Controller actor state" not in record.getMessage()


def loopback_worker_setup() -> None:
    """Runs in every worker of a local Ray before any task or actor: Serve replicas open their
    inter-deployment gRPC server on `[::]:0` (every interface); in local mode every peer is on this
    machine, so the wildcard is narrowed to loopback. (Patched where the replica module imports it
    from, before the replica module is imported.)"""
    import ray._common.tls_utils as tls

    # A local Ray runs without the dashboard, so the state API that Ray Train's placement-group
    # cleaner polls never answers: its warning would repeat every second for the whole run.
    logging.getLogger(PG_CLEANER_LOGGER).addFilter(_no_state_api_warning)
    if getattr(tls.add_port_to_grpc_server, "_loopback", False):
        return
    original = tls.add_port_to_grpc_server

    def add_port(server, address: str):
        if address.startswith("[::]:") or address.startswith("0.0.0.0:"):
            address = LOOPBACK + ":" + address.rsplit(":", 1)[1]
        return original(server, address)

    add_port._loopback = True
    tls.add_port_to_grpc_server = add_port
