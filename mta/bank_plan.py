"""The bank's training configuration and placement plan: how many anchor trainers run at once,
what each asks of Ray, which process-group backend they use, and the checkpoints each anchor
reports (`pretrain_bank --dry-run` prints it without training or loading the LLM;
`bank_trainer.train_bank` follows it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from suite.config import opt


@dataclass
class BankTrainConfig:
    backend: Literal["ray", "local"] = opt("ray", "ray (Ray Train TorchTrainer) | local (same loop in this process)")
    strategy: Literal["ddp", "deepspeed"] = opt("ddp", "ddp (gradients summed with torch.distributed) | deepspeed")
    deepspeed_config: str = opt(
        "ray_jobs/configs/deepspeed/zero2.json", "DeepSpeed JSON (zero2.json; zero3.json for big models)"
    )
    num_workers: int = opt(1, "Ray Train workers per anchor trainer (data parallel)", lo=1)
    parallel: int = opt(1, "anchor trainers run at once (0 = as many as the cluster holds)", lo=0)
    cpus_per_worker: float = opt(1.0, "CPUs reserved per worker", lo=0, lo_open=True)
    gpus_per_worker: float = opt(0.0, "GPUs per worker (0 on CPU machines)")
    storage_path: str = opt("", "Ray Train storage (local folder, s3://, NFS); empty = OUT/ray_results")
    max_failures: int = opt(2, "worker-group restarts before the run fails")
    checkpoint_every: int = opt(0, "also checkpoint inside an anchor every N steps (0 = per anchor only)")
    name: str = opt("", "Ray Train run name (reusing it resumes the run); empty = derived from the bank")
    progress: bool = opt(True, "progress bar per anchor on rank 0")
    plan_resources: dict = opt(
        help="--dry-run only: cluster resources to plan for, e.g. {GPU: 16, CPU: 128} (empty = this machine's)",
        factory=dict,
    )
    fail_at: dict = opt(
        help="fault injection for tests: {anchor: i, step: s, rank: r, marker: path} kills that worker once",
        factory=dict,
    )


def process_group_backend(cfg: BankTrainConfig, device: str | None) -> str:
    """NCCL when the workers reserve GPUs and the model goes on them, gloo otherwise: with
    `model.device=cpu` a worker that reserved a GPU (a fake one in the cluster simulation, or a GPU
    held only for scheduling) trains on CPU, where NCCL cannot run."""
    return "nccl" if cfg.gpus_per_worker > 0 and device != "cpu" else "gloo"


def trainers_at_once(cfg: BankTrainConfig, n_anchors: int, resources: dict) -> int:
    """How many anchor trainers run concurrently: `parallel`, or (0) as many as `resources` hold."""
    n_par = cfg.parallel
    if n_par <= 0:
        per = cfg.gpus_per_worker if cfg.gpus_per_worker > 0 else cfg.cpus_per_worker
        have = resources.get("GPU", 0) if cfg.gpus_per_worker > 0 else resources.get("CPU", 1)
        n_par = max(1, int(have // (per * cfg.num_workers)))
    return max(1, min(n_par, n_anchors))


def placement_plan(cfg: BankTrainConfig, anchors: list[dict], steps: dict[str, int], resources: dict) -> dict:
    """What `train_bank` would do, without doing it: trainers, their anchors and workers, resources
    asked of Ray, and the checkpoints each anchor reports (partial every `checkpoint_every` steps, one
    final). `steps` maps anchor id -> optimiser steps."""
    n_par = trainers_at_once(cfg, len(anchors), resources)
    shards = [anchors[i::n_par] for i in range(n_par)]
    per_worker = {"CPU": cfg.cpus_per_worker, **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}
    ckpts = {
        a["id"]: 1 + ((steps[a["id"]] - 1) // cfg.checkpoint_every if cfg.checkpoint_every else 0) for a in anchors
    }
    trainers = [
        {
            "trainer": i,
            "workers": cfg.num_workers,
            "per_worker": per_worker,
            "anchors": [a["id"] for a in sh],
            "steps": sum(steps[a["id"]] for a in sh),
            "checkpoints": sum(ckpts[a["id"]] for a in sh),
        }
        for i, sh in enumerate(shards)
    ]
    return {
        "strategy": cfg.strategy,
        "deepspeed_config": cfg.deepspeed_config if cfg.strategy == "deepspeed" else None,
        "backend": process_group_backend(cfg, None),
        "trainers_at_once": n_par,
        "workers_total": n_par * cfg.num_workers,
        "gpus_needed": n_par * cfg.num_workers * cfg.gpus_per_worker,
        "cpus_needed": n_par * cfg.num_workers * cfg.cpus_per_worker,
        "resources_planned_for": resources,
        "anchors": len(anchors),
        "checkpoints_expected": sum(ckpts.values()),
        "trainers": trainers,
    }
