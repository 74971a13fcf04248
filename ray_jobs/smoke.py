"""A seconds-long job that proves a cluster runs this suite: Ray tasks import the package, merge two
LoRAs exactly on a worker, and the result is written to OUT/summary.json.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python -m ray_jobs.smoke --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mta import merge
from ray_jobs.cli import entry
from suite.io import atomic_write_json
from suite.ray_local import init_ray


def _merge_error() -> float:
    g = torch.Generator().manual_seed(0)
    As = [torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(2)]
    Bs = [torch.randn(5, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    A, B, s = merge.merge_cat(As, Bs, [1.0, 2.0], [0.3, 0.7])
    want = 0.3 * Bs[0] @ As[0] + 0.7 * 2.0 * Bs[1] @ As[1]
    return float((merge.delta(A, B, s) - want).abs().max())


@entry
def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    ray = init_ray()
    err = ray.get(ray.remote(_merge_error).remote())
    res = {
        "smoke": "ok" if err < 1e-9 else "failed",
        "merge_error": err,
        "nodes": len(ray.nodes()),
        "cpus": ray.cluster_resources().get("CPU", 0),
    }
    atomic_write_json(Path(args.out) / "summary.json", res)
    print("SMOKE", json.dumps(res))


if __name__ == "__main__":
    main()
