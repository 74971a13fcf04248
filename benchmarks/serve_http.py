"""Serving through Ray Serve over HTTP, asked with the official `openai` client (issue #31's
benchmark, its HTTP half; `benchmarks/serve_load.py` is the in-process half).

    python benchmarks/serve_http.py --config ray_jobs/configs/serve_tiny.yaml --out runs/bench_serve_http_tiny
    python benchmarks/serve_http.py --config ray_jobs/configs/serve_lamp2_cpu.yaml --out runs/bench_serve_http_smollm2

Starts the serving app as `ray_jobs.serve` does (bank from the cache or built, records of the first
`--records` dev users written, a local Ray on loopback, Serve on a free loopback port), then for 1,
8 and 64 distinct dev users `--concurrency` threads send `--requests` streamed chat completions per
level (at least one per user), first on the base model (`model="<base>"`, the yardstick, same run,
same route) and then each request as its user (`model="<base>:<user_id>"`). Per level: generated
tokens/s (the stream's final usage over the level's wall time), time to the first content chunk
(TTFT) p50/p95, latency p50/p95, the TTFT of a user's first request in the run (cold: composed,
or read from its record, on arrival) p50/p95 apart from the rest, the generator's cache hit rate
(from `/v1/stats`) and the RSS of the generator replica. Writes OUT/serve_http.json, rendered by
`python -m ray_jobs.report OUT`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import psutil

if __package__ in (None, ""):  # `python benchmarks/serve_http.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fake_cluster import free_ports  # noqa: E402
from benchmarks.serve_load import PROMPTS, train_files  # noqa: E402

TARGET_RATIO = 0.9  # issue #31: tokens/s with 8 and 64 distinct users, against the base model's


def replica_rss_mb() -> float:
    """RSS of the generator replica process(es) (Ray names them ServeReplica:<app>:Generator)."""
    rss = 0
    for p in psutil.process_iter(["cmdline"]):
        try:
            if "ServeReplica" in " ".join(p.info["cmdline"] or []) and "Generator" in " ".join(p.info["cmdline"]):
                rss += p.memory_info().rss
        except psutil.Error:
            pass
    return rss / 2**20


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/v1/stats", timeout=30) as r:
        return json.loads(r.read())


def ask(client, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed chat completion: TTFT (first content chunk), latency, completion tokens."""
    t0 = time.perf_counter()
    ttft, usage = None, None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True
    )
    for ch in stream:
        if ttft is None and ch.choices and ch.choices[0].delta.content:
            ttft = (time.perf_counter() - t0) * 1000
        if ch.usage is not None:
            usage = ch.usage
    lat = (time.perf_counter() - t0) * 1000
    return {"ttft_ms": ttft if ttft is not None else lat, "ms": lat, "tokens": usage.completion_tokens if usage else 0}


def level(client, url: str, base: str, users: list[str], mode: str, n_req: int, conc: int, max_tokens: int,
          seen: set) -> dict:  # fmt: skip
    before = stats(url)
    jobs = []
    for i in range(n_req):
        u = users[i % len(users)]
        cold = mode == "mta" and u not in seen
        if mode == "mta":
            seen.add(u)
        jobs.append((base if mode == "base" else f"{base}:{u}", PROMPTS[i % len(PROMPTS)], cold))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as ex:
        res = list(ex.map(lambda j: {**ask(client, j[0], j[1], max_tokens), "cold": j[2]}, jobs))
    wall = time.perf_counter() - t0
    after = stats(url)
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]

    def pct(xs, q):
        return float(np.percentile(xs, q)) if xs else None

    warm = [r["ttft_ms"] for r in res if not r["cold"]]
    cold = [r["ttft_ms"] for r in res if r["cold"]]
    return {
        "mode": mode,
        "users": len(users),
        "requests": n_req,
        "tokens_per_s": sum(r["tokens"] for r in res) / wall,
        "p50_ms": pct([r["ms"] for r in res], 50),
        "p95_ms": pct([r["ms"] for r in res], 95),
        "ttft_p50_ms": pct(warm, 50),
        "ttft_p95_ms": pct(warm, 95),
        "cold_ttft_p50_ms": pct(cold, 50),
        "cold_ttft_p95_ms": pct(cold, 95),
        "cold_n": len(cold),
        "hit_rate": hits / (hits + misses) if hits + misses else None,
        "replica_rss_mb": replica_rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a serve config (ray_jobs/configs/serve_*.yaml)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--records", type=int, default=4, help="dev users given a record (trained stack) first")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the serve config")
    a = ap.parse_args()

    import openai
    from ray import serve

    from mta.bank import Bank
    from mta.recipe import bank_path_for, load_users
    from ray_jobs.serve import prepare, start
    from serving.composer import ServeConfig
    from suite.config import load_config
    from suite.io import atomic_write_json, claim_run_dir
    from suite.provenance import provenance, start_stamp

    start_stamp()  # the commit and code hash the numbers are claimed for (compared again at the end)
    cfg = load_config(ServeConfig, a.config, a.overrides)  # a typo fails here, before any work
    out = claim_run_dir(a.out, "benchmark")
    job = replace(cfg.job, users_dir=str(out / "users"))  # this run's records, nothing foreign overwritten
    cfg = replace(cfg, job=job, port=free_ports(1)[0], max_batch=a.concurrency, record_users=[])
    prepare(cfg)  # the bank (cached or built)
    users, _ = load_users(job, job.data.eval_split, Bank(bank_path_for(job)).load().ids)
    users = sorted(u.user_id for u in users)[:64]
    if len(users) < 64:
        raise SystemExit(f"64 dev users needed, {len(users)} found")
    cfg = replace(cfg, record_users=users[: a.records])
    prepare(cfg)  # their records
    start(cfg, blocking=False)
    url = f"http://127.0.0.1:{cfg.port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0, timeout=600)
    base = job.model.name
    rows, seen = [], set()
    try:
        ask(client, base, PROMPTS[0], 4)  # warm-up: the replica's first forward
        for n_users in (1, 8, 64):
            for mode in ("base", "mta"):
                n_req = max(a.requests, n_users)
                r = level(client, url, base, users[:n_users], mode, n_req, a.concurrency, a.max_tokens, seen)
                rows.append(r)
                print(
                    f"{mode:<4} users={n_users:<3} tok/s={r['tokens_per_s']:7.1f} p50={r['p50_ms']:8.1f} ms "
                    f"ttft p50={r['ttft_p50_ms'] or 0:7.1f} ms cold ttft p95={r['cold_ttft_p95_ms'] or 0:7.1f} ms "
                    f"rss={r['replica_rss_mb']:.0f} MB",
                    flush=True,
                )
    finally:
        serve.shutdown()
    ratios = {}
    for n in (1, 8, 64):
        b = next(r for r in rows if r["users"] == n and r["mode"] == "base")
        m = next(r for r in rows if r["users"] == n and r["mode"] == "mta")
        ratios[str(n)] = m["tokens_per_s"] / b["tokens_per_s"] if b["tokens_per_s"] else None
    res = {
        "benchmark": "serve_http",
        "model": base,
        "engine": cfg.engine,
        "requests_per_level": a.requests,
        "concurrency": a.concurrency,
        "max_tokens": a.max_tokens,
        "cache_size": cfg.max_adapters,
        "records": a.records,
        "rows": rows,
        "ratio_vs_base": ratios,
        "target_ratio": TARGET_RATIO,
        "provenance": provenance({**vars(a), "serve": asdict(cfg)}, train_files(job)),
        "note": "over HTTP through Ray Serve (gateway + generator replica), openai client, streamed",
    }
    atomic_write_json(out / "serve_http.json", res)
    print(f"wrote {out / 'serve_http.json'}")


if __name__ == "__main__":
    main()
