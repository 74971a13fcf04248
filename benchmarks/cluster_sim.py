"""The cluster as its users run it, simulated on one machine (issue #33, first part): the fake
multi-node autoscaling cluster's configuration derived from `cluster.yaml`, so a change to
`cluster.yaml` is what a simulation tests.

    python benchmarks/cluster_sim.py --print            # the derived fake-cluster config and what did not carry over

What carries over: every node type with its min/max workers, the head's zero CPUs (no work on the
head), the cluster's `max_workers`, `upscaling_speed` and `idle_timeout_minutes`, and the GPUs each
worker type declares through its instance type (`INSTANCE_RESOURCES`; the fake GPUs are resources
only: models run on CPU with `model.device=cpu`), and token authentication (`RAY_AUTH_MODE=token`
from the docker run options). What cannot (listed by `derive`): the provider (swapped for Ray's
fake multi-node provider), docker, SSH auth, file mounts, instance details (disks, spot markets)
and the AWS security group. Worker CPUs are scaled down (`cpus_per_worker`) to fit a 2-core machine.

Not built yet (issue #33): the scenarios (autoscaling bank, node failures during the bank, a sweep
and an evaluation, a killed driver, checkpoints on an S3-compatible server) and their `cluster`
marker. `ray.cluster_utils.AutoscalingCluster.start` runs `ray stop --force`, which stops every Ray
on the machine: the scenarios must run alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

# GPUs and vCPUs of the instance types cluster.yaml names (AWS's published figures)
INSTANCE_RESOURCES = {
    "m6i.2xlarge": {"CPU": 8, "GPU": 0},
    "g5.12xlarge": {"CPU": 48, "GPU": 4},
    "p4d.24xlarge": {"CPU": 96, "GPU": 8},
}
NOT_CARRIED = (
    "provider",
    "docker",
    "auth",
    "file_mounts",
    "head_setup_commands",
    "setup_commands",
    "initialization_commands",
)


def derive(cluster_yaml: str | Path = "cluster.yaml", cpus_per_worker: int = 1) -> dict:
    """{"head_resources", "worker_node_types", "config", "auth_mode", "not_carried"}: the arguments
    of `ray.cluster_utils.AutoscalingCluster` derived from `cluster_yaml`."""
    c = yaml.safe_load(Path(cluster_yaml).read_text())
    head = c["head_node_type"]
    types = c["available_node_types"]
    workers = {}
    for name, t in types.items():
        if name == head:
            continue
        itype = t.get("node_config", {}).get("InstanceType")
        if itype not in INSTANCE_RESOURCES:
            raise ValueError(f"{cluster_yaml}: node type {name}: instance type {itype!r} has no resources here")
        res = {"CPU": cpus_per_worker, "GPU": INSTANCE_RESOURCES[itype]["GPU"], **(t.get("resources") or {})}
        workers[name] = {
            "resources": {k: v for k, v in res.items() if v},
            "node_config": {},
            "min_workers": int(t.get("min_workers", 0)),
            "max_workers": int(t.get("max_workers", 0)),
        }
    head_res = dict(types[head].get("resources") or {})
    opts = " ".join((c.get("docker") or {}).get("run_options") or [])
    return {
        "head_resources": {"CPU": int(head_res.get("CPU", 0))},
        "worker_node_types": workers,
        "config": {
            "max_workers": int(c.get("max_workers", sum(w["max_workers"] for w in workers.values()))),
            "upscaling_speed": float(c.get("upscaling_speed", 1.0)),
            "idle_timeout_minutes": float(c.get("idle_timeout_minutes", 5)),
        },
        "auth_mode": "token" if "RAY_AUTH_MODE=token" in opts else None,
        "not_carried": sorted(k for k in NOT_CARRIED if k in c) + ["node_config (instance details: disks, markets)"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster-yaml", default="cluster.yaml")
    ap.add_argument("--print", action="store_true", help="print the derived configuration")
    a = ap.parse_args()
    print(json.dumps(derive(a.cluster_yaml), indent=1))


if __name__ == "__main__":
    main()
