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

Scenarios (`--run`, the fake cluster of `benchmarks/fake_cluster.py`, marker `cluster` for the test
that runs them; every scenario's result is compared with the uninterrupted run of the same job):

    python benchmarks/cluster_sim.py --run --out runs/cluster_sim     # bank: autoscale, node kill, driver kill

- `autoscale`: `pretrain_bank` with the tiny model, 4 anchors, 2 workers per anchor and 1 fake GPU
  per worker, submitted with `ray job submit` (token auth; the working dir in place, see RUNTIME_ENV) to a cluster
  with zero workers: the autoscaler adds the nodes, the anchors train in parallel across them, and
  the nodes are released when idle (idle timeout shortened for the simulation). The placement
  (anchor -> node) comes from the bank's own per-anchor record.
- `node_kill`: the same job; once the first partial checkpoint exists, the worker node training that
  checkpointed anchor is killed (every process of it, SIGKILL); Ray Train restores the lost trainers
  from their last checkpoint on a node the autoscaler adds; the bank's tensors are compared with
  `autoscale`'s.
- `s3_node_kill`: `node_kill` with the checkpoints in S3 (`bank.storage_path=s3://...`) on moto's
  S3-compatible server on loopback: the restore reads the bucket. The credentials are set in the
  environment before the cluster starts (every node inherits them, as `cluster.yaml`'s nodes get theirs
  from the instance profile); afterwards every file of the run and of the cluster's temp folder is
  searched for the secret key.
- `driver_kill`: the same job; its driver is killed once a checkpoint exists, the same command is
  submitted again, and it resumes: installed anchors are skipped, the rest restore from their
  checkpoints; the bank is compared again.

- `sweep`, `sweep_node_kill`: `sweep_memgas` on the LoCoMo dev conversations, 4 seeded trials at once;
  the busiest worker node is killed while trials run; Tune retries the lost trials
  (`sweep.max_failures`); the best configuration and every trial's metric are compared.
- `mta_eval`, `mta_eval_node_kill`: `mta_pipeline` (tiny model) with `eval.backend=ray`, one task per
  user; `memgas_eval`, `memgas_eval_node_kill`: `memgas_eval` on LoCoMo (hashing encoder) with
  `eval.backend=ray`, one task per conversation. A node dies while tasks run; Ray re-executes the lost
  tasks (`eval.max_retries`); scores and records (none duplicated or lost) are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml

if __package__ in (None, ""):  # `python benchmarks/cluster_sim.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.cluster_work import log_fields, work_fields  # noqa: E402
from benchmarks.fake_s3 import BUCKET, S3, files_holding, redacted_contexts, registered_under  # noqa: E402

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
        "logger_level": (re.findall(r"--env RAY_LOGGER_LEVEL=(\w+)", opts) or [None])[-1],
        "not_carried": sorted(k for k in NOT_CARRIED if k in c) + ["node_config (instance details: disks, markets)"],
    }


# the job runs in Ray's copy of the working dir, so data beside the project is named by absolute path
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "lamp_like"
# The README's runtime_env uploads the working dir and every node unpacks it into its own temp folder.
# Fake nodes share one temp folder, and a node joining later unpacks with overwrite (Ray's working_dir
# plugin: rmtree, then unzip), deleting the folder the running driver and controllers have as their cwd
# (seen: node_kill and driver_kill jobs failing with FileNotFoundError). So the simulation names the
# project in place (`local://`, present on every fake node), which every node uses without unpacking.
# The upload path itself is tested on one node by tests/ray_jobs/test_job_submit.py.
SCENARIOS = {  # name -> (job, failure)
    "autoscale": ("bank", None), "node_kill": ("bank", "node"), "driver_kill": ("bank", "driver"),
    "s3_node_kill": ("bank_s3", "node"),
    "sweep": ("sweep", None), "sweep_node_kill": ("sweep", "node"),
    "mta_eval": ("mta_eval", None), "mta_eval_node_kill": ("mta_eval", "node"),
    "memgas_eval": ("memgas_eval", None), "memgas_eval_node_kill": ("memgas_eval", "node"),
}  # fmt: skip
RUNTIME_ENV = {"working_dir": "local://" + str(Path(__file__).resolve().parents[1])}
BANK_OVERRIDES = [  # tiny model, 4 anchors, 2 workers per anchor, 1 fake GPU each, models on CPU
    "anchors.n_clusters=4", "anchor_train.max_samples=24", "model.device=cpu", "tracking.enabled=false",
    "bank.backend=ray", "bank.num_workers=2", "bank.gpus_per_worker=1", "bank.cpus_per_worker=0.25",
    "bank.parallel=4", "bank.checkpoint_every=2", "bank.max_failures=3", "bank.progress=false",
]  # fmt: skip


def bank_job(out: Path, storage: str | None = None) -> list[str]:
    return [
        "python", "-m", "ray_jobs.pretrain_bank", "--config", "ray_jobs/configs/mta_tiny.yaml", "--out",
        str(out / "job"), f"data.root={DATA_ROOT}", f"bank_path={out / 'bank'}",
        f"bank.storage_path={storage or out / 'storage'}", "bank.name=simbank",
        *BANK_OVERRIDES,
    ]  # fmt: skip


def sweep_job(out: Path) -> list[str]:
    """`sweep_memgas` on the LoCoMo dev conversations, 4 seeded trials at once (hashing encoder: minutes)."""
    return [
        "python", "-m", "ray_jobs.sweep_memgas", "--config", "ray_jobs/configs/sweep_memgas_locomo_cpu.yaml",
        "--out", str(out / "job"), "job.memgas.encoder=hashing", "job.tracking.enabled=false",
        "sweep.num_samples=4", "sweep.max_concurrent=4", "sweep.max_failures=2",
    ]  # fmt: skip


def mta_eval_job(out: Path) -> list[str]:
    """`mta_pipeline` (tiny model) with its per-user evaluation as Ray tasks on the workers."""
    return [
        "python", "-m", "ray_jobs.mta_pipeline", "--config", "ray_jobs/configs/mta_tiny.yaml", "--out",
        str(out / "job"), f"data.root={DATA_ROOT}", f"bank_cache={out / 'banks'}", "eval.backend=ray",
        "data.max_eval_users=16", "model.device=cpu", "eval.cpus=1",  # a task fits a fake node (1 CPU)
    ]  # fmt: skip


def memgas_eval_job(out: Path) -> list[str]:
    """`memgas_eval` on LoCoMo (10 conversations, hashing encoder) with one Ray task per conversation."""
    return [
        "python", "-m", "ray_jobs.memgas_eval", "--config", "ray_jobs/configs/memgas_locomo_cpu.yaml", "--out",
        str(out / "job"), "memgas.encoder=hashing", "eval.backend=ray", "eval.cpus=1", "tracking.enabled=false",
    ]  # fmt: skip


class Watch:
    """Samples the cluster every second while a job runs: worker nodes alive, the cluster's RSS, and
    the checkpoints Ray Train has registered so far (the signal for a kill: a checkpoint on disk but
    not yet registered is not what a restarted trainer restores, so killing then redoes its steps)."""

    def __init__(self, cluster, storage: Path, s3: S3 | None = None):
        self.c, self.storage, self.s3, self.t0 = cluster, storage, s3, time.time()
        self.timeline: list[dict] = []
        self.peak_rss_mb = 0.0

    def checkpoints(self) -> list[str]:
        if self.s3 is not None:
            return self.s3.checkpoints(str(self.storage))
        return registered_under(self.storage)

    def __call__(self) -> None:
        workers = [n for n in self.c.nodes() if not n["is_head"]]
        rss = 0
        for p in self.c.processes():
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        self.peak_rss_mb = max(self.peak_rss_mb, rss / 2**20)
        self.timeline.append(
            {"t": round(time.time() - self.t0, 1), "workers": len(workers), "checkpoints": len(self.checkpoints())}
        )


def bank_tensors(bank: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for p in sorted((bank / "anchors").glob("*/*.safetensors")):  # folder: <anchor slug>-<id hash>-<content hash>
        anchor = p.parent.name.rsplit("-", 1)[0]
        out.update({f"{anchor}/{k}": v for k, v in load_file(p).items()})
    return out


def max_diff(a: dict, b: dict) -> float:
    if set(a) != set(b):
        return float("inf")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if a else 0.0


def node_to_kill(nodes: list[str], checkpoints: list[str], logs: str) -> str:
    """The worker node training an anchor that has a partial checkpoint and is not finished (so
    that its restore reads a checkpoint), from the trainers' start lines; else the newest node."""
    partial = {m.group(1) for n in checkpoints if (m := re.match(r"anchor-\d+-(.+)-[0-9a-f]{8}-step\d+$", n))}
    finished = {m.group(1) for n in checkpoints if (m := re.match(r"anchor-\d+-(.+)-[0-9a-f]{8}$", n))}
    where: dict[str, str] = {}
    for node, anchors in re.findall(r"\[bank\] trainer \d+ started on node (\S+): anchors (\[[^\]]*\])", logs):
        for a in re.findall(r"'([^']+)'", anchors):
            where[a] = node  # the newest start line wins
    for a in sorted(partial - finished):
        if where.get(a) in nodes:
            return where[a]
    return nodes[-1]


def run_bank(c, out: Path, kill: str | None, s3: S3 | None = None, timeout_s: float = 900) -> dict:
    """One `pretrain_bank` job on the fake cluster; `kill` = None | "node" | "driver"; with `s3`,
    its checkpoints go to the S3 server's bucket."""
    storage = s3.uri(out.name) if s3 else None
    w = Watch(c, Path(out.name) if s3 else out / "storage", s3)
    events: list[dict] = []
    t0 = time.time()
    job = c.submit(bank_job(out, storage), RUNTIME_ENV)
    killed = threading.Event()

    def poll():
        w()
        if kill and not killed.is_set() and w.checkpoints():
            ck = w.checkpoints()
            if kill == "node":
                nodes = [n["node_id"] for n in c.nodes() if not n["is_head"]]
                node = node_to_kill(nodes, ck, c.logs(job))
                n = c.kill_node(node)  # the registered checkpoints are read again after it: more may have come
                events.append({"t": round(time.time() - t0, 1), "killed": "node", "node": node,
                               "processes": n, "checkpoints_then": w.checkpoints()})  # fmt: skip
            else:
                drivers = c.processes(cmd="ray_jobs.pretrain_bank")
                for p in drivers:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        p.kill()
                events.append({"t": round(time.time() - t0, 1), "killed": "driver", "processes": len(drivers),
                               "checkpoints_then": w.checkpoints()})  # fmt: skip
            killed.set()

    status = c.wait_job(job, timeout_s, poll)
    logs = c.logs(job)
    jobs = [{"job": job, "status": status.get("status")}]
    if kill == "driver":  # the user resubmits the same command
        job2 = c.submit(bank_job(out, storage), RUNTIME_ENV)
        status = c.wait_job(job2, timeout_s, w)
        logs += c.logs(job2)
        jobs.append({"job": job2, "status": status.get("status")})
    (out / "job_logs.txt").write_text(logs)
    summary = json.loads((out / "job" / "summary.json").read_text()) if (out / "job" / "summary.json").exists() else {}
    per = (summary.get("bank") or {}).get("per_anchor") or []
    first_worker = next((e["t"] for e in w.timeline if e["workers"] > 0), None)
    return {
        "kill": kill,
        "storage": "s3" if s3 else "local",
        "jobs": jobs,
        "wall_s": round(time.time() - t0, 1),
        "scale_up_s": first_worker,
        "max_worker_nodes": max((e["workers"] for e in w.timeline), default=0),
        "placement": {a["anchor"]: a.get("node_id") for a in per},
        "events": events,
        **log_fields(events, logs),
        "peak_rss_mb": round(w.peak_rss_mb),
        "timeline": w.timeline,
    }


def run_other(c, out: Path, kind: str, kill: str | None, kill_after_s: float = 3, timeout_s: float = 900) -> dict:
    """A sweep or an evaluation on the fake cluster; with `kill="node"`, a worker node is killed
    `kill_after_s` seconds after the first worker node is up (trials or tasks are then running)."""
    entry = {"sweep": sweep_job, "mta_eval": mta_eval_job, "memgas_eval": memgas_eval_job}[kind](out)
    w = Watch(c, out / "none")
    events: list[dict] = []
    t0 = time.time()
    job = c.submit(entry, RUNTIME_ENV)

    def poll():
        w()
        first = next((e["t"] for e in w.timeline if e["workers"] > 0), None)
        if kill and not events and first is not None and time.time() - t0 > first + kill_after_s:
            # the worker node running the most processes: one whose trials or tasks are under way
            busy = sorted((len(c.processes(n["node_id"])), n["node_id"]) for n in c.nodes() if not n["is_head"])
            if busy and busy[-1][0] > 1:  # more than its raylet alone
                node = busy[-1][1]
                n = c.kill_node(node)
                events.append({"t": round(time.time() - t0, 1), "killed": "node", "node": node, "processes": n,
                               "checkpoints_then": []})  # fmt: skip

    status = c.wait_job(job, timeout_s, poll)
    logs = c.logs(job)
    (out / "job_logs.txt").write_text(logs)
    return {
        "kill": kill,
        "jobs": [{"job": job, "status": status.get("status")}],
        "wall_s": round(time.time() - t0, 1),
        "scale_up_s": next((e["t"] for e in w.timeline if e["workers"] > 0), None),
        "max_worker_nodes": max((e["workers"] for e in w.timeline), default=0),
        "events": events,
        "peak_rss_mb": round(w.peak_rss_mb),
        "outcome": outcome(kind, out / "job"),
        **work_fields(kind, out / "job", events),
        "timeline": w.timeline,
    }


def outcome(kind: str, job_out: Path) -> dict:
    """What must equal the uninterrupted run's: the sweep's best configuration and every trial's
    metric by configuration; the evaluation's scores, and its records (none duplicated or lost)."""
    p = job_out / "summary.json"
    if not p.exists():
        return {}
    s = json.loads(p.read_text())
    if kind == "sweep":
        trials = sorted((json.dumps(t["params"], sort_keys=True), t.get("value")) for t in s.get("all_trials", []))
        best = s.get("best") or {}
        return {"best": best.get("config"), "trials": trials, "errors": s.get("errors")}
    if kind == "memgas_eval":  # a record is one question's under one resume key
        ((bench, r),) = s["memgas"].items()
        recs = [json.loads(line) for line in (job_out / "per_question.jsonl").read_text().splitlines() if line.strip()]
        keys = [(x["qid"], x["key"]) for x in recs]
    else:  # a record is one user's under one resume key
        ((task, r),) = s["mta"].items()
        recs = [json.loads(line) for line in (job_out / "per_user.jsonl").read_text().splitlines() if line.strip()]
        keys = [(x["user_id"], x["key"]) for x in recs]
    return {
        "scores": {m: v for m, v in sorted(r["methods"].items())},
        "records": len(keys),
        "duplicate_records": len(keys) - len(set(keys)),
    }


def wait_released(c, timeout_s: float) -> float | None:
    """Seconds until every worker node is released (idle timeout), or None."""
    t0 = time.time()
    while time.time() - t0 < timeout_s:
        if not [n for n in c.nodes() if not n["is_head"]]:
            return round(time.time() - t0, 1)
        time.sleep(2)
    return None


def rescore(out: Path) -> dict:
    """Recompute the work each failure cost, with this code, from what the runs left (the runs
    themselves are not redone): the bank's from its saved `job_logs.txt` (`trainer_starts`,
    `restores`, `redone_steps`), a sweep's and an evaluation's from `benchmarks.cluster_work`."""
    from suite.io import atomic_write_json, read_json

    res = read_json(out / "cluster_sim.json")
    for name, r in res["scenarios"].items():
        kind, events = SCENARIOS[name][0], r.get("events") or []
        if kind in ("bank", "bank_s3"):
            r.update(log_fields(events, (out / name / "job_logs.txt").read_text()))
        else:
            r.update(work_fields(kind, out / name / "job", events))
    res["rescored_with"] = start_stamp_now()
    atomic_write_json(out / "cluster_sim.json", res)
    return res


def start_stamp_now() -> dict:
    from suite.provenance import code_hash_now, git_state

    return {**git_state(), "code_version": code_hash_now()}


def simulate(out: Path, scenarios: list[str], cluster_yaml: str = "cluster.yaml", idle_minutes: float = 0.25) -> dict:
    """Bring the fake cluster up, run the scenarios, bring it down; OUT/cluster_sim.json."""
    from benchmarks.fake_cluster import FakeCluster
    from suite.io import atomic_write_json
    from suite.provenance import provenance, start_stamp

    start_stamp()
    out.mkdir(parents=True, exist_ok=True)
    derived = derive(cluster_yaml)
    res: dict = {"benchmark": "cluster_sim", "derived": derived, "idle_timeout_minutes": idle_minutes, "scenarios": {}}
    # the S3 server and its credentials come first: the cluster's processes inherit the environment
    s3 = S3() if any(SCENARIOS[n][0] == "bank_s3" for n in scenarios) else None
    c = FakeCluster(derived, idle_timeout_minutes=idle_minutes, log_dir=out / "logs")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `finally` below stops the cluster on SIGTERM too
    try:
        t = time.time()
        c.start()
        res["head_up_s"] = round(time.time() - t, 1)
        ref, refs = None, {}
        for name in scenarios:
            kind, kill = SCENARIOS[name]
            if kind in ("bank", "bank_s3"):
                r = run_bank(c, out / name, kill, s3 if kind == "bank_s3" else None)
                tensors = bank_tensors(out / name / "bank")
                r["anchors"] = len({k.split("/")[0] for k in tensors})
                if kill is None:
                    ref = tensors
                elif ref is not None:
                    r["max_abs_diff_vs_uninterrupted"] = max_diff(ref, tensors)
            else:
                r = run_other(c, out / name, kind, kill)
                if kill is None:
                    refs[kind] = r["outcome"]
                elif kind in refs:
                    r["equal_to_uninterrupted"] = r["outcome"] == refs[kind] and bool(r["outcome"])
            r["released_after_s"] = wait_released(c, 300)
            res["scenarios"][name] = r
            print(name, json.dumps({k: v for k, v in r.items() if k != "timeline"}), flush=True)
            atomic_write_json(out / "cluster_sim.json", res)
        if s3 is not None:  # the run's files and the cluster's (logs, job records) before they are removed
            found = files_holding(s3.secret, out, c.tmp)
            res["s3"] = {"secret_found_in": found, "bucket": BUCKET,
                         "where": redacted_contexts(s3.secret, found[:5])}  # fmt: skip
    finally:
        res["teardown"] = c.stop()
        if s3 is not None:
            s3.stop()
        res["provenance"] = provenance(
            {"scenarios": scenarios, "cluster_yaml": cluster_yaml}, {"cluster_yaml": cluster_yaml}
        )
        atomic_write_json(out / "cluster_sim.json", res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cluster-yaml", default="cluster.yaml")
    ap.add_argument("--print", action="store_true", help="print the derived configuration")
    ap.add_argument("--run", action="store_true", help="run the scenarios on a fake cluster")
    ap.add_argument("--rescore", action="store_true", help="recompute OUT's log-derived fields from its saved logs")
    ap.add_argument("--out", default="runs/cluster_sim")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--idle-minutes", type=float, default=0.25, help="idle timeout (cluster.yaml's is for real nodes)")
    a = ap.parse_args()
    if a.rescore:
        rescore(Path(a.out))
        return
    if a.run:
        simulate(Path(a.out).resolve(), a.scenarios, a.cluster_yaml, a.idle_minutes)
        return
    print(json.dumps(derive(a.cluster_yaml), indent=1))


if __name__ == "__main__":
    main()
