"""Prefilling a sweep's memories: the folders are the ones a trial reads, a trial then ingests
nothing and ranks exactly as if it had ingested itself, and a second pass stops where memories exist."""

import json
from pathlib import Path

from memgas.data import load_benchmark
from memgas.encoders import CachedEncoder
from memgas.evaluate import evaluate
from memgas.recipe import resolve_data, split_conversations
from memgas.store import MemoryStore
from ray_jobs.prefill_memories import conversation_folder, prefill
from ray_jobs.sweep_memgas import SweepMemGASConfig, memory_cache_dir
from suite.config import load_config
from suite.encoders import load_encoder
from tests.conftest import make_locomo


def _data(tmp_path):
    convs = []
    for k in range(4):  # dev_every=2: conversations 0 and 2 are dev
        p = make_locomo(tmp_path / f"c{k}.json", n_sessions=5, n_questions=3, seed=k)
        c = json.loads(p.read_text())[0]
        c["sample_id"] = f"conv-{k}"
        convs.append(c)
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps(convs))
    return path


def _trial_records(job, cache, log):
    """What a sweep trial computes for each dev conversation (sweep_memgas.trial, without Tune)."""
    convs, _ = split_conversations(load_benchmark(job.benchmark, resolve_data(job)), job)
    enc = CachedEncoder(load_encoder(job.memgas.encoder))
    job.eval.progress = False
    return evaluate(
        convs, lambda: MemoryStore(job.memgas, encoder=enc), {"memgas": job.best}, job.eval, log, memory_cache=cache
    )


def test_prefilled_memories_are_the_trials_memories(tmp_path):
    data = _data(tmp_path)
    ov = [f"job.data={data}", "job.memgas.encoder=hashing", "job.split.dev_every=2", "sweep.name=t_pre"]
    cfg = load_config(SweepMemGASConfig, None, ov)
    res = prefill(cfg, tmp_path / "sw")
    assert res["ingested"] == ["conv-2", "conv-0"] and res["stopped_at"] is None  # last to first
    job = load_config(SweepMemGASConfig, None, ov).job
    job.split.name = "dev"
    cache = memory_cache_dir(tmp_path / "sw" / "tune" / "t_pre", job)
    assert str(cache) == res["cache"]
    for cid in ("conv-0", "conv-2"):
        assert (cache / conversation_folder(cid) / "manifest.json").exists()
    assert not (cache / conversation_folder("conv-1")).exists()  # test conversations are never touched

    warm = _trial_records(job, cache, tmp_path / "warm.jsonl")
    assert warm and all(r["ingest"]["from_cache"] and r["top"]["memgas"] for r in warm)
    cold = _trial_records(job, tmp_path / "own_cache", tmp_path / "cold.jsonl")
    assert not any(r["ingest"]["from_cache"] for r in cold)
    assert [(r["qid"], r["top"], r["metrics"]) for r in warm] == [(r["qid"], r["top"], r["metrics"]) for r in cold]

    again = prefill(load_config(SweepMemGASConfig, None, ov), tmp_path / "sw")
    assert again["ingested"] == [] and again["stopped_at"] == "conv-2"  # met memories already there


def test_sweep_trials_load_the_prefilled_memories(ray_local, tmp_path, monkeypatch):
    """The trials look where prefill_memories writes (Tune's storage, not its per-session staging
    copy): with every dev memory prefilled, no trial ingests one."""
    from ray_jobs.sweep_memgas import run as run_sweep

    monkeypatch.setenv("WANDB_MODE", "offline")
    data = _data(tmp_path)
    ov = [
        f"job.data={data}",
        "job.memgas.encoder=hashing",
        "job.split.dev_every=2",
        "job.tracking.mode=offline",
        "sweep.name=t_pre",
        "sweep.search=random",
        "sweep.num_samples=2",
        "sweep.space={best.temperature: {values: [0.1, 0.5]}}",
    ]
    assert len(prefill(load_config(SweepMemGASConfig, None, ov), tmp_path / "sw")["ingested"]) == 2
    s = run_sweep(load_config(SweepMemGASConfig, None, ov), tmp_path / "sw")
    assert s["trials"] == 2 and s["errors"] == 0
    logs = list((tmp_path / "sw" / "tune" / "t_pre").glob("*/per_question.jsonl"))
    recs = [json.loads(line) for f in logs for line in f.read_text().splitlines()]
    assert len(logs) == 2 and {r["conv"] for r in recs} == {"conv-0", "conv-2"}
    assert all(r["ingest"]["from_cache"] for r in recs)


def test_two_trials_saving_one_memory_at_once_both_go_on(tmp_path, monkeypatch):
    """Concurrent trials of a sweep ingest the same conversation with the same memory config; the
    second save meets the first's folder (seen in the cluster simulation: a trial errored and was
    retried). Mutation caught: letting the folder's refusal (StoreError) end the trial."""
    import shutil

    data = _data(tmp_path)
    ov = [f"job.data={data}", "job.memgas.encoder=hashing", "job.split.dev_every=2", "sweep.name=t_race"]
    prefill(load_config(SweepMemGASConfig, None, ov), tmp_path / "sw")
    job = load_config(SweepMemGASConfig, None, ov).job
    job.split.name = "dev"
    theirs = memory_cache_dir(tmp_path / "sw" / "tune" / "t_race", job)
    ours = tmp_path / "race"
    real = MemoryStore.save

    def racing(self, path, overwrite=False):
        shutil.copytree(theirs / Path(path).relative_to(ours), path)  # the other trial's save lands first
        return real(self, path, overwrite)

    monkeypatch.setattr(MemoryStore, "save", racing)
    raced = _trial_records(job, ours, tmp_path / "raced.jsonl")
    monkeypatch.undo()
    alone = _trial_records(job, tmp_path / "alone", tmp_path / "alone.jsonl")
    assert raced and not any(r["ingest"]["from_cache"] for r in raced)
    assert [(r["qid"], r["top"], r["metrics"]) for r in raced] == [(r["qid"], r["top"], r["metrics"]) for r in alone]
