"""Stages 1a and 1b as a job step: choose the anchors among the train users (KMeans over profile
embeddings), train the missing meta-LoRAs on Ray Train into the shared bank cache, report each
anchor's training; the bank alone (`pretrain`) and its placement plan (`dry_run`)."""

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from mta.anchors import select_anchors, user_embeddings
from mta.bank import Bank
from mta.bank_plan import placement_plan
from mta.bank_trainer import train_bank
from mta.data import load_task_split
from mta.diagnostics import mean_relative_update, plain_base_weights
from mta.job_config import MTAJobConfig
from mta.training import for_adapter, loo_samples, total_steps
from suite.encoders import load_encoder
from suite.io import atomic_write_json, claim_run_dir, json_digest
from suite.models import model_identity
from suite.tracking import Tracker

SAMPLES_VERSION = "loo-v2"


def bank_signature_inputs(cfg: MTAJobConfig) -> dict:
    """What a bank's content depends on (not how it is trained: backend, workers)."""
    d = cfg.data
    return {
        "task": d.task,
        "root": d.root,
        "train_split": d.train_split,
        "scheme": d.scheme,
        "max_train_users": d.max_train_users,
        "model": model_identity(cfg.model),
        "encoder": cfg.encoder,
        "anchors": asdict(cfg.anchors),
        "lora": asdict(cfg.anchor_train),
        # how leave-one-out samples are built: v2 retrieves the history with the input content alone
        "samples": SAMPLES_VERSION,
    }


def bank_signature(cfg: MTAJobConfig) -> str:
    return json_digest(bank_signature_inputs(cfg), 12)


def bank_path_for(cfg: MTAJobConfig) -> Path:
    return Path(cfg.bank_path) if cfg.bank_path else Path(cfg.bank_cache) / f"{cfg.data.task}-{bank_signature(cfg)}"


def choose_anchors(cfg: MTAJobConfig, encoder):
    """Stage 1a: (train users, their embeddings, indices of the anchors among them)."""

    d = cfg.data
    train = load_task_split(
        d.task, d.train_split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url
    )
    if d.max_train_users:
        train = train[: d.max_train_users]
    emb = user_embeddings(train, d.task, encoder, cfg.anchors.max_items_embedded)
    return train, emb, select_anchors(train, emb, cfg.anchors)


def plan_bank(cfg: MTAJobConfig, encoder) -> dict:
    """The placement plan of the bank's training (`pretrain_bank --dry-run`): anchors are chosen
    (cheap: encoder + k-means), nothing is trained and the LLM is not loaded."""
    import ray

    train, _, idx = choose_anchors(cfg, encoder)
    path = bank_path_for(cfg)
    done = set(Bank(path).done_ids()) if (path / "manifest.json").exists() else set()
    todo = [train[i] for i in idx if train[i].user_id not in done]
    steps = {}
    for u in todo:
        tc = for_adapter(cfg.anchor_train, "anchor", u.user_id)
        steps[u.user_id] = total_steps(len(loo_samples(cfg.data.task, u.profile, tc.max_samples, tc.seed)), tc)
    resources = dict(cfg.bank.plan_resources) or {"CPU": float(os.cpu_count() or 1), "GPU": float(torch_gpus())}
    plan = placement_plan(cfg.bank, [{"id": u.user_id} for u in todo], steps, resources)
    plan.update(
        {
            "bank": str(path),
            "already_in_bank": sorted(done),
            "model": cfg.model.name,
            "model_dtype": cfg.model.dtype,
            "ray_version": ray.__version__,
        }
    )
    return plan


def torch_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def build_bank(cfg: MTAJobConfig, out: Path, encoder, log=print):
    """Stage 1a + 1b: choose anchors among train users, train the missing ones, return the bank."""

    d = cfg.data
    train, emb, idx = choose_anchors(cfg, encoder)
    ids = [train[i].user_id for i in idx]
    path = bank_path_for(cfg)
    log(f"[bank] {len(ids)} anchors chosen among {len(train)} candidate users; bank at {path}")
    meta = {
        "task": d.task,
        "base_model": cfg.model.name,
        "encoder": cfg.encoder,
        "signature": bank_signature(cfg),
        "signature_inputs": bank_signature_inputs(cfg),
        "lora": asdict(cfg.anchor_train),
        "anchors_config": asdict(cfg.anchors),
    }
    bank = Bank.create(path, ids, emb[idx], meta, [len(train[i].profile) for i in idx])
    t0 = time.perf_counter()
    tracking = {**asdict(cfg.tracking), "group": cfg.tracking.group or f"mta-{d.task}"}
    stats = train_bank(
        bank,
        {train[i].user_id: train[i].profile for i in idx},
        d.task,
        cfg.model,
        cfg.anchor_train,
        cfg.bank,
        out,
        tracking if cfg.tracking.enabled else None,
    )
    log(
        f"[bank] trained {len(stats)} anchor(s) in {time.perf_counter() - t0:.0f}s; "
        f"{len(bank.done_ids())}/{len(ids)} in the bank at {bank.path}"
    )
    return bank, stats


def anchor_report(bank, loaded, model) -> list[dict]:
    """Per anchor: items, steps, training loss first/last (from the manifest) and the mean relative
    update ||dW||/||W|| over its modules, measured against the base model's weights."""

    base = plain_base_weights(model, loaded.adapters[0])
    entries = {a["id"]: a for a in bank.manifest["anchors"]}
    out = []
    for i, aid in enumerate(loaded.ids):
        e = entries[aid]
        out.append(
            {
                "id": aid,
                "n_items": e.get("n_items"),
                **(e.get("train") or {}),
                "rel_update": mean_relative_update(base, loaded.adapters[i], loaded.scales[i]),
            }
        )
    return out


def pretrain(cfg: MTAJobConfig, out: str | Path) -> dict:
    """The bank alone (`ray_jobs.pretrain_bank`): train what it misses; OUT/summary.json {"bank": ...}."""
    out = claim_run_dir(out)
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
    """`pretrain_bank --dry-run`: the placement plan printed and written to OUT/plan.json."""
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
