"""Serving load: per-user MTA adapters composed on demand, under bounded concurrent load.

    python benchmarks/serve_load.py --out runs/bench_serve_tiny --model tiny
    python benchmarks/serve_load.py --out runs/bench_serve_smollm2 --model smollm2 --requests 48

For 1, 8 and 64 distinct LaMP_2 dev users (profiles from ../shared/data, fused on demand; the
first users also hold a record with a trained stack), `--concurrency` clients send `--requests`
requests each level to the composer of the serving app (`serving.composer`, in process: Ray Serve
routing and HTTP are not in these figures). Three ways to answer, in the same run:
- `mta_mixed`: each user's adapter, requests of different users batched in one forward pass;
- `base`: every request on the base model, batched the same way (the throughput yardstick);
- `mta_switch`: each user's adapter, one request at a time, switching adapters between them;
- `basis_base` / `basis_mixed`: the serving app's engine (`serving.shared_basis`: the bank as one
  shared basis, each request carrying its RowAdapter), scheduled per batch (`serving.decode`'s
  step loop: a request waits for the running batch to end), on the base model and with each
  user's adapter;
- `basis_iter_base` / `basis_iter`: the same engine scheduled per step, as the app runs it
  (`serving.continuous`: a request joins the running batch at the next step, a finished one
  leaves at once); time to first token is measured on the four engine rows.
`--users-max 1000` adds a level of 1,000 distinct users (records written with random stacks) to
measure the engine's RSS growth from 1 to 1,000 users.
Reports p50/p95 latency, generated tokens/s, the cold start of a user (compose + install, without
the forward pass) p50/p95, the cache hit rate, composition time as a share of request time, the
adapters held (never above the cache size) and the process RSS after each level. Writes
OUT/serve_load.json, rendered by `python -m ray_jobs.report OUT`.
"""

from __future__ import annotations

import argparse
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil

from mta.data import resolve_task_dir
from mta.recipe import MTAJobConfig, adapt, build_bank
from serving.composer import BasisComposer, Composer, ServeConfig
from suite.config import load_config
from suite.encoders import load_encoder
from suite.io import atomic_write_json, claim_run_dir
from suite.provenance import provenance, start_stamp

PROMPTS = [
    "Which tag does this movie relate to? description: a robot travels to a distant planet",
    "Which tag does this movie relate to? description: two friends plan a wedding that goes wrong",
    "Which tag does this movie relate to? description: a detective uncovers a conspiracy",
    "Which tag does this movie relate to? description: the true story of a wartime pilot",
]


MODES = ("base", "mta_mixed", "mta_switch", "basis_base", "basis_mixed", "basis_iter_base", "basis_iter")


def job_config(model: str, out: Path) -> MTAJobConfig:
    # a small bank: serving cost does not depend on how well the anchors were trained
    ov = [
        f"model.name={model}",
        "model.max_length=256",
        "encoder=hashing" if model == "tiny" else "encoder=minilm",
        "anchors.n_clusters=3",
        "anchors.min_items=10",
        "anchor_train.max_samples=6",
        "anchor_train.epochs=1",
        "bank.backend=local",
        "stacking.max_steps=2",
        f"users_dir={out / 'users'}",
        "tracking.enabled=false",
    ]
    return load_config(MTAJobConfig, "ray_jobs/configs/mta_tiny.yaml" if model == "tiny" else None, ov)


def train_files(job: MTAJobConfig) -> dict:
    """The train split the bank's anchors come from (checksummed into the provenance)."""
    d = job.data
    q = (
        resolve_task_dir(d.task, d.train_split, d.root or None, download=False, scheme=d.scheme)
        / "train_questions.json"
    )
    return {"train_questions": q, "train_golds": q.with_name("train_outputs.json")}


class Batcher:
    """The serving app's mixed-batch loop, in process: requests wait `wait_s` for company."""

    def __init__(self, comp: Composer, max_batch: int, wait_s: float, mixed: bool):
        self.comp, self.max_batch, self.wait_s, self.mixed = comp, max_batch, wait_s, mixed
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def submit(self, ids, name, max_tokens):
        done, box = threading.Event(), {}
        self.q.put(((ids, name, max_tokens), done, box))
        done.wait()
        return box["out"]

    def _collect(self) -> list:
        """The next batch: the first waiting request, and (mixed) whoever joins within `wait_s`."""
        batch = [self.q.get()]
        if self.mixed:
            time.sleep(self.wait_s)
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
        return batch

    def _loop(self):
        while True:
            batch = self._collect()
            outs = self.comp.generate([b[0] for b in batch])
            for (_, done, box), out in zip(batch, outs):
                box["out"] = out
                done.set()


class StepBatcher(Batcher):
    """The app's batch loop on the shared-basis engine: decoding step by step, recording when each
    row's first token comes out (time to first token, from submission)."""

    def _loop(self):
        while True:
            batch = self._collect()  # callers put ((ids, adapter, max_tokens), done, {"t0": ...})
            n = [0] * len(batch)
            for step in self.comp.steps([b[0] for b in batch]):
                now = time.perf_counter()
                for i, t in enumerate(step):
                    if t is not None:
                        if n[i] == 0:
                            batch[i][2]["ttft"] = (now - batch[i][2]["t0"]) * 1000
                        n[i] += 1
            for (_, done, box), k in zip(batch, n):
                box["out"] = ("", k)
                done.set()


class IterBatcher(Batcher):
    """The app's loop on the shared-basis engine (`serving.continuous`): a request joins the
    decoding batch at the next step and leaves when done (iteration-level batching); records time
    to first token from submission."""

    def _loop(self):
        from serving.continuous import ContinuousDecoder, Row

        comp = self.comp
        dec = ContinuousDecoder(comp.model, comp.basis, comp.codec.eos_id, comp.codec.pad_id)
        while True:
            new = []
            if not dec.rows:
                new.append(self.q.get())
                time.sleep(self.wait_s)
            while len(dec.rows) + len(new) < self.max_batch:
                try:
                    new.append(self.q.get_nowait())
                except queue.Empty:
                    break
            with comp.forward:
                dec.admit([Row(ids, a, m, self._emit(done, box)) for (ids, a, m), done, box in new])
                dec.step()

    @staticmethod
    def _emit(done: threading.Event, box: dict):
        box["n"] = 0

        def emit(t):
            if t is None:
                box["out"] = ("", box["n"])
                done.set()
            elif isinstance(t, int):
                if box["n"] == 0:
                    box["ttft"] = (time.perf_counter() - box["t0"]) * 1000
                box["n"] += 1

        return emit


def level(comp, users: list[str], mode: str, n_req: int, conc: int, max_tokens: int, batch: int) -> dict:
    comp.stats.update(hits=0, misses=0, cold_ms=[], cold_cached_ms=[])
    basis = mode.startswith("basis")
    kind = IterBatcher if mode.startswith("basis_iter") else StepBatcher if basis else Batcher
    b = kind(comp, batch, 0.01, mixed=(mode != "mta_switch"))
    ttft: list[float] = []
    lat, compose, toks = [], [], []

    def one(i: int):
        u = users[i % len(users)]
        t0 = time.perf_counter()
        name = None
        if mode not in ("base", "basis_base", "basis_iter_base"):
            name = comp.adapter_for(u)
        t1 = time.perf_counter()
        ids = comp.prompt_ids(PROMPTS[i % len(PROMPTS)], True, max_tokens)
        if basis:
            box = {"t0": t0}
            done = threading.Event()
            b.q.put(((ids, name, max_tokens), done, box))
            done.wait()
            n = box["out"][1]
            if "ttft" in box:
                ttft.append(box["ttft"])
        else:
            _, n = b.submit(ids, name, max_tokens)
        lat.append((time.perf_counter() - t0) * 1000)
        compose.append((t1 - t0) * 1000)
        toks.append(n)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        list(ex.map(one, range(n_req)))
    wall = time.perf_counter() - t0
    cold = comp.stats["cold_ms"]
    cached = comp.stats.get("cold_cached_ms") or []
    hits, misses = comp.stats["hits"], comp.stats["misses"]
    return {
        "mode": mode,
        "users": len(users),
        "requests": n_req,
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "tokens_per_s": float(sum(toks) / wall),
        "cold_p50_ms": float(np.percentile(cold, 50)) if cold else None,
        "cold_p95_ms": float(np.percentile(cold, 95)) if cold else None,
        # the misses that encoded nothing (a record, or a profile embedding cached earlier)
        "cold_cached_p50_ms": float(np.percentile(cached, 50)) if cached else None,
        "cold_cached_p95_ms": float(np.percentile(cached, 95)) if cached else None,
        "cold_cached_n": len(cached),
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "compose_share": float(sum(compose) / sum(lat)),
        "adapters_held": len(comp.lru),
        "ttft_p50_ms": float(np.percentile(ttft, 50)) if ttft else None,
        "ttft_p95_ms": float(np.percentile(ttft, 95)) if ttft else None,
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
    }


def synthetic_users(job: MTAJobConfig, users: list[str], n: int) -> list[str]:
    """`n` user ids with a record each: the first users' own, then copies of one record's choice
    with a random stack (what the engine holds per user is the same size)."""
    import torch

    from mta.users import latest_record, write_record

    template = latest_record(job.users_dir, users[0])
    g = torch.Generator().manual_seed(0)
    out = list(users)
    for i in range(n - len(users)):
        uid = f"synthetic-{i}"
        stack = {k: 0.01 * torch.randn(v.shape, generator=g) for k, v in template.stack.items()}
        write_record(job.users_dir, uid, template.bank_signature, template.anchors, template.weights, stack,
                     template.stack_r, template.stack_alpha)  # fmt: skip
        out.append(uid)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    ap.add_argument("--requests", type=int, default=128)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--cache", type=int, default=16)
    ap.add_argument("--records", type=int, default=4, help="users given a record (trained stack) first")
    ap.add_argument("--users-max", type=int, default=64, help="1000 adds a level of 1,000 users (engine RSS)")
    ap.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=MODES,
        help="the modes to run (basis_iter alone: its RSS from 1 to 1,000 users with no other engine's levels between)",
    )
    a = ap.parse_args()
    start_stamp()  # the commit and code hash the numbers are claimed for (compared again at the end)
    out = claim_run_dir(a.out, "benchmark")
    job = job_config(a.model, out)
    build_bank(job, out, load_encoder(job.encoder), log=print)
    comp = Composer(ServeConfig(job=job, max_adapters=a.cache, max_batch=a.concurrency))
    users = sorted(comp._eval_profiles())[:64]
    if len(users) < 64:
        raise SystemExit(f"64 dev users needed, {len(users)} found")
    for u in users[: a.records]:
        adapt(job, out / "adapters" / u, user_id=u)
    comp.generate([(comp.prompt_ids(PROMPTS[0], True, 4), None, 4)])  # warm-up
    scfg = ServeConfig(job=job, max_adapters=a.cache, max_batch=a.concurrency)
    engine = BasisComposer(scfg)  # the serving app's engine, its own copy of the base model
    engine.generate([(engine.prompt_ids(PROMPTS[0], True, 4), None, 4)])
    many = users
    if a.users_max > 64:  # 1,000 distinct users: records with random stacks (RSS of the engine's state)
        many = synthetic_users(job, users, a.users_max)
    rows = []
    for n_users in (1, 8, 64) + ((a.users_max,) if a.users_max > 64 else ()):
        modes = [m for m in MODES if m in a.modes] if n_users <= 64 else ["basis_iter"]
        for mode in modes:
            c = engine if mode.startswith("basis") else comp
            pool = many if n_users > 64 else users
            n_req = max(a.requests, n_users) if n_users > 64 else a.requests
            r = level(c, pool[:n_users], mode, n_req, a.concurrency, a.max_tokens, a.concurrency)
            rows.append(r)
            print(
                f"{mode:<11} users={n_users:<3} p50={r['p50_ms']:8.1f} ms p95={r['p95_ms']:8.1f} ms "
                f"tok/s={r['tokens_per_s']:7.1f} cold p95={r['cold_p95_ms'] or 0:6.1f} ms "
                f"hit={r['hit_rate'] if r['hit_rate'] is not None else float('nan'):.2f} "
                f"compose={r['compose_share']:.3f} held={r['adapters_held']} rss={r['rss_mb']:.0f} MB"
                + (f" ttft p50={r['ttft_p50_ms']:.1f} ms" if r.get("ttft_p50_ms") else ""),
                flush=True,
            )
    res = {
        "benchmark": "serve_load",
        "model": a.model,
        "requests_per_level": a.requests,
        "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "cache_size": a.cache,
        "records": a.records,
        "rows": rows,
        # commit, code hash at start and end, libraries, config, the train split the bank came from
        "provenance": provenance(vars(a), train_files(job)),
        "note": "in process (composer + mixed-batch loop); Ray Serve routing and HTTP not included",
    }
    atomic_write_json(out / "serve_load.json", res)
    print(f"wrote {out / 'serve_load.json'}")


if __name__ == "__main__":
    main()
