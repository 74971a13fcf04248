"""The work a failure cost a sweep or an evaluation on the simulated cluster, read from what the job
left behind (its Tune experiment state and trial results) and from the kill itself; the bank's is
read from its logs (`redone`)."""

from __future__ import annotations

import json
import re
from pathlib import Path


def sweep_work(job_dir: Path) -> dict:
    """Per trial Tune retried (`num_failures` in the experiment state): its failures and the steps
    it reported twice (a trial restarted without a checkpoint reports its steps again from 1)."""
    states = sorted(Path(job_dir, "tune").glob("*/experiment_state-*.json"))
    if not states:
        return {}
    out = {}
    for trial, meta in json.loads(states[-1].read_text())["trial_data"]:
        tid, fails = json.loads(trial)["trial_id"], json.loads(meta).get("num_failures") or 0
        if fails:
            steps = [json.loads(line).get("training_iteration") for f in states[-1].parent.glob(f"*_{tid}/result.json")
                     for line in f.read_text().splitlines() if line.strip()]  # fmt: skip
            out[tid] = {"failures": fails, "steps_reported": len(steps), "steps_repeated": len(steps) - len(set(steps))}
    return out


def eval_work(events: list[dict]) -> dict:
    """The tasks an evaluation can have redone: those in flight on the dead node, at most one per
    worker process the kill found there (its processes less the raylet)."""
    return {"tasks_in_flight_at_most": max(events[0]["processes"] - 1, 0)} if events else {}


def log_fields(events: list[dict], logs: str) -> dict:
    """What a bank job's logs say: each trainer start (one per worker process), each restore, and
    the work redone after the failure (`redone`)."""
    return {
        "trainer_starts": sorted(set(re.findall(r"pid=\d+\S*\s+\[bank\] trainer \d+ started[^\n]*", logs))),
        "restores": sorted(set(re.findall(r"\[bank\] resuming: [^\n]*", logs))),
        "redone_steps": redone(events, logs),
    }


def redone(events: list[dict], logs: str) -> dict:
    """Per anchor whose trainer started again after the failure (two start lines for its shard):
    the newest step checkpointed (and registered) when the failure came, the step it resumed from (0 = from
    scratch) and so the checkpointed steps trained twice (steps after the last checkpoint, fewer
    than `checkpoint_every`, are redone on top and not counted)."""
    if not events:
        return {}
    starts: dict[str, set] = {}  # shard -> worker pids that started it (a line may reach the log several times)
    shard_anchors: dict[str, list[str]] = {}
    pat = r"pid=(\d+)\S*\s+\[bank\] trainer (\d+) started on node \S+: anchors (\[[^\]]*\])"
    for pid, shard, anchors in re.findall(pat, logs):
        starts.setdefault(shard, set()).add(pid)
        shard_anchors.setdefault(shard, re.findall(r"'([^']+)'", anchors))
    restarted = {a for sh, pids in starts.items() if len(pids) > 1 for a in shard_anchors[sh]}
    on_disk: dict[str, int] = {}
    done = set()
    for name in events[0]["checkpoints_then"]:
        if m := re.match(r"anchor-\d+-(.+)-[0-9a-f]{8}-step(\d+)$", name):
            on_disk[m.group(1)] = max(on_disk.get(m.group(1), 0), int(m.group(2)))
        elif m := re.match(r"anchor-\d+-(.+)-[0-9a-f]{8}$", name):
            done.add(m.group(1))
    resumed = {a: int(st) for a, st in re.findall(r"in progress: (\S+) at step (\d+)", logs)}
    return {
        a: {"checkpointed_step_on_disk": on_disk.get(a, 0), "resumed_from_step": resumed.get(a, 0),
            "steps_redone": on_disk.get(a, 0) - resumed.get(a, 0)}
        for a in sorted(restarted - done)
    }  # fmt: skip


def work_fields(kind: str, job_dir: Path, events: list[dict]) -> dict:
    if kind == "sweep":
        return {"retried_trials": sweep_work(job_dir)} if events else {}
    return {"redone_tasks": eval_work(events)}
