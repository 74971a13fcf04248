"""Ingest a MemGAS sweep's dev memories ahead of its trials, in another process, into the folder the
trials read them from (`sweep_memgas.memory_cache_dir`). A sweep's first trial ingests every dev
conversation on one CPU (a Tune trial gets one); on LongMemEval S that is ~80 minutes while a
second core idles. Run this beside the sweep: it walks the conversations from the last one
backwards and stops where it meets a memory already saved (the trial got there first), so the two
processes split the ingestion without doing the same work twice. Memories are built exactly as a
trial builds them (same config, same `evaluate` call); a trial that finds one loads it and records
`from_cache: true`. Only the sweep's base memory settings are filled: trials that sweep `memgas.*`
keys still ingest their own.

    python -m ray_jobs.prefill_memories --config ray_jobs/configs/sweep_memgas_longmemeval_cpu.yaml \
        --out runs/sweep_memgas_lme
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from memgas.encoders import CachedEncoder
from memgas.evaluate import evaluate
from memgas.store import MemoryStore
from ray_jobs.cli import entry, parse
from ray_jobs.sweep_memgas import SweepMemGASConfig, memory_cache_dir, sweep_conversations
from ray_jobs.sweeps import apply_params, experiment_path
from suite.device import use as use_device
from suite.encoders import load_encoder
from suite.io import claim_run_dir


def conversation_folder(conv_id: str) -> str:
    """The folder `memgas.evaluate.evaluate` saves a conversation's memory under (one memory setting;
    tests/ray_jobs/test_prefill_memories.py checks the two agree)."""
    return hashlib.sha1(conv_id.encode()).hexdigest()[:16]


def prefill(cfg: SweepMemGASConfig, out: str | Path, threads: int = 1, reverse: bool = True) -> dict:
    """Fill the sweep's memory cache; returns {"ingested": [...], "stopped_at": conv_id or None}."""
    import torch

    torch.set_num_threads(threads)  # a Tune trial computes on one CPU: keep the same arithmetic
    out = claim_run_dir(Path(out).resolve(), "sweep")  # the sweep's own folder, or a new one it will use
    cfg.job.split.name = "dev"  # as sweep_memgas.run forces it
    job = apply_params(type(cfg.job), asdict(cfg.job), {})
    use_device(job.device)
    cache = memory_cache_dir(experiment_path(cfg.sweep, out), job)
    convs = sweep_conversations(job)
    order = list(reversed(convs)) if reverse else list(convs)
    enc = CachedEncoder(load_encoder(job.memgas.encoder))
    job.eval.progress = False
    log = out / "prefill" / f"{cache.name}.jsonl"  # retrieval records of this pass: not a result
    log.parent.mkdir(parents=True, exist_ok=True)
    done, stopped = [], None
    for c in tqdm(order, desc="prefill memories"):
        if (cache / conversation_folder(c.conv_id) / "manifest.json").exists():
            stopped = c.conv_id  # the sweep's trial (or an earlier pass) reached it: the rest is theirs
            break
        evaluate(
            [c], lambda: MemoryStore(job.memgas, encoder=enc), {"memgas": job.best}, job.eval, log, memory_cache=cache
        )
        done.append(c.conv_id)
    print(
        f"prefill: ingested {len(done)} conversation(s) into {cache}" + (f"; stopped at {stopped}" if stopped else "")
    )
    return {"ingested": done, "stopped_at": stopped, "cache": str(cache)}


@entry
def main(argv=None) -> None:
    args, cfg = parse(
        SweepMemGASConfig,
        __doc__,
        argv,
        flags={"forward": "walk the conversations first to last (default: last to first, to meet a running trial)"},
        options={"threads": "torch CPU threads (default 1, as in a Tune trial)"},
    )
    prefill(cfg, args.out, threads=int(args.threads or 1), reverse=not args.forward)


if __name__ == "__main__":
    main()
