"""MTA end to end on one LaMP task: anchors → bank (Ray Train) → fusion → stacking → evaluation.

    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/mta_lamp2
    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/x fusion.top_k=3

Writes OUT/summary.json ({"mta": {task: {...}}}), OUT/predictions/<task>/<method>.json (LaMP outputs
format), OUT/per_user.jsonl (resume log), OUT/bank/ (unless bank_path is set) and prints a table.
Rerunning with the same OUT resumes: finished anchors and users are not redone.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mta.pipeline import MTAConfig
from ray_jobs.bank_trainer import BankTrainConfig
from ray_jobs.tracking import TrackingConfig
from suite.config import opt


@dataclass
class MTAJobConfig(MTAConfig):
    bank_path: str = opt("", "bank folder (reused across runs if its anchor plan matches); empty = OUT/bank")
    bank: BankTrainConfig = field(default_factory=BankTrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def build_bank(cfg: MTAJobConfig, out: Path, encoder, log=print):
    """Stage 1a + 1b: choose anchors among train users, train the missing ones, return the bank."""
    from mta.anchors import select_anchors, user_embeddings
    from mta.bank import Bank
    from mta.data import load_task_split
    from ray_jobs.bank_trainer import train_bank

    d = cfg.data
    train = load_task_split(d.task, d.train_split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url)
    if d.max_train_users:
        train = train[: d.max_train_users]
    emb = user_embeddings(train, d.task, encoder, cfg.anchors.max_items_embedded)
    idx = select_anchors(train, emb, cfg.anchors)
    ids = [train[i].user_id for i in idx]
    log(f"[bank] {len(ids)} anchors chosen among {len(train)} candidate users")
    meta = {"task": d.task, "base_model": cfg.model.name, "encoder": cfg.encoder,
            "lora": asdict(cfg.anchor_train), "anchors_config": asdict(cfg.anchors)}
    bank = Bank.create(cfg.bank_path or out / "bank", ids, emb[idx], meta, [len(train[i].profile) for i in idx])
    t0 = time.perf_counter()
    stats = train_bank(bank, {train[i].user_id: train[i].profile for i in idx}, d.task, cfg.model,
                       cfg.anchor_train, cfg.bank, out)
    log(f"[bank] trained {len(stats)} anchor(s) in {time.perf_counter() - t0:.0f}s; "
        f"{len(bank.done_ids())}/{len(ids)} in the bank at {bank.path}")
    return bank, stats


def print_table(task: str, res: dict, file=sys.stdout) -> None:
    methods = res["methods"]
    if not methods:
        return
    metrics = list(next(iter(methods.values())))
    print(f"\n{task} — {res['n_users']} users, {res['inference']}", file=file)
    print(f"{'method':<10}" + "".join(f"{m:>10}" for m in metrics), file=file)
    for name, vals in methods.items():
        print(f"{name:<10}" + "".join(f"{vals[m]:>10.4f}" for m in metrics), file=file)
    for k in ("bytes_per_user", "adapt_s_per_user"):
        if res.get(k):
            print(f"{k}: " + ", ".join(f"{m}={v:,.2f}" for m, v in res[k].items()), file=file)
    if "fusion_ms_per_user" in res:
        print(f"fusion_ms_per_user: {res['fusion_ms_per_user']:.2f}", file=file)


def run(cfg: MTAJobConfig, out: str | Path) -> dict:
    from mta.data import load_task_split
    from mta.models import load_base
    from mta.pipeline import Evaluator, _uses_labels, summarize
    from ray_jobs.tracking import Tracker
    from suite.encoders import load_encoder
    from suite.io import atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", asdict(cfg))
    tracker = Tracker(cfg.tracking, "mta_pipeline", asdict(cfg), out, name=f"mta-{cfg.data.task}")
    try:
        encoder = load_encoder(cfg.encoder)
        bank, stats = build_bank(cfg, out, encoder)
        for s in stats:
            tracker.log({"bank/anchor_seconds": s["seconds"], "bank/steps": s["steps"]})
        loaded = bank.load()
        d = cfg.data
        users = load_task_split(d.task, d.eval_split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url)
        if d.max_eval_users:
            users = users[: d.max_eval_users]
        if cfg.eval.backend == "ray":
            records = evaluate_on_ray(cfg, out, bank.path, users)
        elif cfg.eval.backend == "local":
            model, tok = load_base(cfg.model)
            records = Evaluator(cfg, loaded, model, tok, encoder, out).run(users)
        else:
            raise ValueError(f"eval.backend={cfg.eval.backend!r}: local | ray")
        res = summarize(d.task, records, cfg.eval.methods, _uses_labels(d.task, cfg.eval.inference),
                        cfg.eval.calibration, out)
        res["bank"] = {"anchors": len(loaded.ids), "bytes": bank.bytes_on_disk(), "path": str(bank.path)}
        summary_path = out / "summary.json"
        prev = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        prev.setdefault("mta", {})[d.task] = res
        atomic_write_json(summary_path, prev)
        print_table(d.task, res)
        tracker.summary({f"{d.task}/{m}/{k}": v for m, vals in res["methods"].items() for k, v in vals.items()})
        tracker.table("anchors_per_user", ["user_id", "anchors", "weights"],
                      [[r["user_id"], json.dumps(r["anchors"]["anchors"]), json.dumps(r["anchors"]["weights"])]
                       for r in records if "anchors" in r])
        tracker.artifact(f"bank-{d.task}", "model", bank.path, {"anchors": len(loaded.ids)})
        return prev
    finally:
        tracker.finish()


def _evaluate_task(cfg_dict: dict, out: str, bank_path: str, users: list) -> list[dict]:
    """The per-user stage (fusion, stacking, baselines) as a Ray task. If its worker dies, Ray runs
    it again; the new attempt skips the users already in per_user.jsonl."""
    import os
    import signal

    from mta.bank import Bank
    from mta.models import load_base
    from mta.pipeline import Evaluator
    from suite.config import from_dict
    from suite.encoders import load_encoder

    cfg = from_dict(MTAJobConfig, cfg_dict, "mta_pipeline task")
    model, tok = load_base(cfg.model)
    fail = cfg.eval.fail_at

    def on_user(n: int) -> None:
        if fail and n == int(fail["after_users"]) and not Path(fail["marker"]).exists():
            Path(fail["marker"]).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)  # what an OOM kill or a lost node does

    ev = Evaluator(cfg, Bank(bank_path).load(), model, tok, load_encoder(cfg.encoder), Path(out))
    return ev.run(users, on_user=on_user)


def evaluate_on_ray(cfg: MTAJobConfig, out: Path, bank_path, users: list) -> list[dict]:
    import ray

    from suite.ray_local import init_ray

    init_ray()
    task = ray.remote(num_cpus=cfg.eval.cpus, num_gpus=cfg.eval.gpus, max_retries=cfg.eval.max_retries)(_evaluate_task)
    return ray.get(task.remote(asdict(cfg), str(Path(out).resolve()), str(Path(bank_path).resolve()), users))


def main(argv: list[str] | None = None) -> None:
    from ray_jobs.cli import parse

    args, cfg = parse(MTAJobConfig, __doc__, argv)
    run(cfg, args.out)


if __name__ == "__main__":
    main()
