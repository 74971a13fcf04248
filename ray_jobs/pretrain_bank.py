"""Pretrain every anchor of a meta-LoRA bank on Ray Train, as many anchors at once as the cluster
holds, each trainer's workers data parallel under DeepSpeed (ZeRO-2 default, ZeRO-3 for big models).

    python -m ray_jobs.pretrain_bank --config ray_jobs/configs/pretrain_bank_lamp2_cpu.yaml --out runs/bank
    python -m ray_jobs.pretrain_bank --config ray_jobs/configs/pretrain_bank_llama8b_gpu.yaml --out runs/plan --dry-run
    ray job submit --working-dir . -- python -m ray_jobs.pretrain_bank \\
        --config ray_jobs/configs/pretrain_bank_llama8b_gpu.yaml --out /mnt/shared/bank

Checkpoints go to `bank.storage_path` (local, NFS or s3://); a failed worker group restarts and
resumes from its last checkpoint; anchors already in the bank are skipped on rerun. The result is the
bank the MTA pipeline reads (`bank_path=...`). Writes OUT/summary.json {"bank": {...}}.
`--dry-run` chooses the anchors, prints the placement plan (trainers, anchors per trainer, workers,
GPUs, expected checkpoints) and writes it to OUT/plan.json without training or loading the LLM.
"""

from __future__ import annotations

from mta.recipe import MTAJobConfig, dry_run, pretrain
from ray_jobs.cli import entry, parse


@entry
def main(argv=None) -> None:
    args, cfg = parse(MTAJobConfig, __doc__, argv, flags={"dry-run": "print the placement plan, train nothing"})
    if args.dry_run:
        dry_run(cfg, args.out)
        return
    pretrain(cfg, args.out)


if __name__ == "__main__":
    main()
