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

import time
from dataclasses import asdict
from pathlib import Path

from mta.recipe import MTAJobConfig, build_bank, plan_bank
from ray_jobs.cli import parse
from suite.encoders import load_encoder
from suite.io import atomic_write_json
from suite.tracking import Tracker


def run(cfg: MTAJobConfig, out: str | Path) -> dict:

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(cfg.tracking, "pretrain_bank", asdict(cfg), out, name=f"bank-{cfg.data.task}")
    try:
        t0 = time.perf_counter()
        bank, stats = build_bank(cfg, out, load_encoder(cfg.encoder))
        wall = time.perf_counter() - t0
        for s in stats:
            tracker.log(
                {
                    "anchor_seconds": s["seconds"],
                    "anchor_steps": s["steps"],
                    "anchor_final_loss": (s.get("losses") or [None])[-1],
                }
            )
        summary = {
            "bank": {
                "path": str(bank.path),
                "anchors": len(bank.done_ids()),
                "trained_now": len(stats),
                "missing": bank.missing_ids(),
                "wall_s": wall,
                "anchors_per_hour": len(stats) / wall * 3600 if stats else 0.0,
                "strategy": cfg.bank.strategy,
                "num_workers": cfg.bank.num_workers,
                "parallel": cfg.bank.parallel,
                "per_anchor": stats,
            }
        }
        atomic_write_json(out / "summary.json", summary)
        tracker.artifact(f"bank-{cfg.data.task}", "model", bank.path, {"anchors": len(bank.done_ids())})
        print(f"bank: {len(bank.done_ids())} anchors at {bank.path} ({len(stats)} trained now, {wall:.0f}s)")
        return summary
    finally:
        tracker.finish()


def dry_run(cfg: MTAJobConfig, out: str | Path) -> dict:
    import json

    plan = plan_bank(cfg, load_encoder(cfg.encoder, device="cpu"))
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out) / "plan.json", plan)
    print(json.dumps({k: v for k, v in plan.items() if k != "trainers"}, indent=1))
    for t in plan["trainers"]:
        print(
            f"trainer {t['trainer']}: {t['workers']} worker(s) x {t['per_worker']}, {len(t['anchors'])} anchor(s), "
            f"{t['steps']} steps, {t['checkpoints']} checkpoints: {', '.join(t['anchors'])}"
        )
    return plan


def main(argv=None) -> None:

    args, cfg = parse(MTAJobConfig, __doc__, argv, flags={"dry-run": "print the placement plan, train nothing"})
    if args.dry_run:
        dry_run(cfg, args.out)
        return
    run(cfg, args.out)


if __name__ == "__main__":
    main()
