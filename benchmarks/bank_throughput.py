"""Anchors trained per hour against the number of Ray Train workers on this machine, and Ray's
overhead per anchor against the same loop run sequentially in one process (backend=local).

    python benchmarks/bank_throughput.py --out runs/bench_bank [--anchors 4] [--model smollm2]

Prints a table and writes OUT/bank_throughput.json. Also states the paper estimate for 50 anchors
of an 8B model on 8 GPUs (see README).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from mta.recipe import MTAJobConfig
from mta.recipe import pretrain as run
from suite.config import load_config
from suite.io import atomic_write_json
from suite.provenance import provenance, start_stamp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--anchors", type=int, default=4)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--samples", type=int, default=16)
    a = ap.parse_args()
    start_stamp()  # the commit and code hash the numbers are claimed for (compared again at the end)

    out = Path(a.out)
    rows = []
    setups = [("local", 1, "ddp"), ("ray", 1, "ddp"), ("ray", 2, "ddp"), ("ray", 2, "deepspeed")]
    for backend, workers, strategy in setups:
        d = out / f"{backend}-{workers}w-{strategy}"
        shutil.rmtree(d, ignore_errors=True)
        cfg = load_config(
            MTAJobConfig,
            "ray_jobs/configs/pretrain_bank_lamp2_cpu.yaml",
            [
                f"model.name={a.model}",
                f"anchors.n_clusters={a.anchors}",
                f"anchor_train.max_samples={a.samples}",
                f"bank.backend={backend}",
                f"bank.num_workers={workers}",
                f"bank.strategy={strategy}",
                "bank.checkpoint_every=0",
                "bank.progress=false",
                "tracking.enabled=false",
                # a bank cache of its own per setup: the bank's signature leaves out how it is trained,
                # so a shared cache would hand the later setups the first one's bank (0 anchors trained)
                f"bank_cache={d / 'banks'}",
            ],
        )
        t0 = time.perf_counter()
        s = run(cfg, d)["bank"]
        wall = time.perf_counter() - t0
        if s["trained_now"] != a.anchors:
            raise SystemExit(f"{d}: {s['trained_now']} anchors trained, expected {a.anchors}")
        train_s = sum(x["seconds"] for x in s["per_anchor"])
        rows.append(
            {
                "backend": backend,
                "workers": workers,
                "strategy": strategy,
                "anchors": s["trained_now"],
                "wall_s": wall,
                "anchors_per_hour": s["trained_now"] / wall * 3600,
                "train_s_per_anchor": train_s / max(1, s["trained_now"]),
                "overhead_s_per_anchor": (wall - train_s) / max(1, s["trained_now"]),
            }
        )
    base = rows[0]["wall_s"] / rows[0]["anchors"]
    for r in rows:
        r["ray_overhead_vs_local_s_per_anchor"] = r["wall_s"] / r["anchors"] - base
    atomic_write_json(
        out / "bank_throughput.json",
        {"rows": rows, "model": a.model, "samples_per_anchor": a.samples, "provenance": provenance(vars(a), {})},
    )
    print(
        f"{'backend':<8}{'workers':>8}{'strategy':>11}{'anchors/h':>11}{'train s/anc':>13}{'wall s/anc':>12}{'vs local':>10}"  # noqa: E501
    )
    for r in rows:
        print(
            f"{r['backend']:<8}{r['workers']:>8}{r['strategy']:>11}{r['anchors_per_hour']:>11.1f}"
            f"{r['train_s_per_anchor']:>13.1f}{r['wall_s'] / r['anchors']:>12.1f}{r['ray_overhead_vs_local_s_per_anchor']:>10.1f}"  # noqa: E501
        )


if __name__ == "__main__":
    main()
