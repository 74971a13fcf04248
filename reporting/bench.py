"""Benchmark blocks: memory scaling, recall equivalence, writer processes, bank throughput and
serving load."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from reporting.common import _diff, _f, _provenance, _save, _table  # noqa: E402


def render_scaling(name: str, s: dict, out: Path) -> list[str]:
    """`benchmarks/memgas_scaling.py`'s scaling.json: what grows with the memory, and the targets."""
    rows = s["rows"]
    methods = list(rows[0]["query_ms_p50"])
    lines = [
        f"MemGAS memory grown to {rows[-1]['sessions']:,} sessions (encoder `{s.get('encoder')}`"
        + (f", {s['queries']} queries per point" if "queries" in s else "")
        + (f"; `memgas` = `{s['memgas_config']}`" if "memgas_config" in s else "")
        + ").",
        "",
    ]
    enc = s.get("encoding")
    if enc:
        lines += [
            f"The {enc['texts']:,} distinct texts of {enc['sessions']:,} sessions were encoded first, in batches "
            f"({enc['seconds']:.0f} s, {enc['texts_per_s']:.0f} texts/s): ingest times below exclude the encoder.",
            "",
        ]
    durable = "disk_bytes_per_session" in rows[-1]
    head = ["sessions", "nodes", "edges", "ingest ms/session (this step)"] + [
        f"query p50 / p95 ms {m}" for m in methods
    ]
    if durable:
        head += ["disk B/session", "one add writes: median / max B (max share of store)", "peak RSS MB"]
    body = []
    for r in rows:
        per = r.get("ingest_s_per_session", 1 / max(r["ingest_sessions_per_s_recent"], 1e-9))
        row = [f"{r['sessions']:,}", f"{r['nodes']:,}", f"{r['edges']:,}", f"{per * 1000:.1f}"]
        row += [
            f"{r['query_ms_p50'][m]:.1f} / {r['query_ms_p95'][m]:.1f}"
            if "query_ms_p95" in r
            else f"{r['query_ms_p50'][m]:.1f}"
            for m in methods
        ]
        if durable:
            share = r.get("add_write_share_max")
            row += [
                f"{r['disk_bytes_per_session']:,.0f}",
                f"{r['add_write_bytes_median']:,.0f} / {r['add_write_bytes_max']:,} ({share:.3%})"
                if share is not None
                else "-",
                f"{r['peak_rss_mb']:,.0f}",
            ]
        body.append(row)
    lines += _table(head, body)
    if durable:
        last = rows[-1]
        wanted = (s.get("config") or {}).get("sessions", last["sessions"])
        targets = []
        first = next((r for r in rows if r["sessions"] == 1000), None)
        if last["sessions"] >= 100000 and first is not None:  # the targets are stated at 100,000 sessions
            ratio = last["ingest_s_per_session"] / first["ingest_s_per_session"]
            p50 = last["query_ms_p50"].get("memgas")
            targets += [
                f"ingest per session at {last['sessions']:,} within 2x of that at 1,000: "
                f"{ratio:.2f}x, {'met' if ratio <= 2 else 'missed'}",
                f"query p50 of `memgas` under 30 ms at {last['sessions']:,} sessions: {p50:.1f} ms, "
                f"{'met' if p50 < 30 else 'missed'}",
            ]
        at10k = next((r for r in rows if r["sessions"] == 10000), None)
        if at10k and at10k.get("add_write_share_max") is not None:
            sh = at10k["add_write_share_max"]
            verdict = "met" if sh < 0.01 else "missed"
            targets.append(f"one add to a 10,000-session store writes under 1% of its bytes: max {sh:.3%}, {verdict}")
        if last["sessions"] < wanted:
            lines += [
                "",
                f"**Not finished**: stopped at {last['sessions']:,} of {wanted:,} sessions; "
                "the rows above are all it measured.",
            ]
        if targets:
            lines += ["", "Targets: " + "; ".join(targets) + "."]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    x = [r["sessions"] for r in rows]
    if durable:
        ax[0].plot(x, [r["ingest_s_per_session"] * 1000 for r in rows], marker="o")
        ax[0].set(xscale="log", xlabel="sessions in memory", ylabel="ms per session", title="ingest")
    else:
        ax[0].plot(x, [r["ingest_s_total"] for r in rows], marker="o")
        ax[0].set(xscale="log", yscale="log", xlabel="sessions in memory", ylabel="total ingest s", title="ingest")
    for m in methods:
        ax[1].plot(x, [r["query_ms_p50"][m] for r in rows], marker="o", label=m)
    ax[1].set(xscale="log", yscale="log", xlabel="sessions in memory", ylabel="query p50 ms", title="query")
    ax[1].legend(fontsize=7)
    png = _save(fig, out / f"{name}_scaling.png")
    return lines + _provenance(s) + ["", f"![{name} scaling]({png.name})"]


def render_recall(name: str, r: dict) -> list[str]:
    """`memgas_scaling.py --recall`: the scalable path (ANN association, local PageRank) against the exact one."""
    lines = [
        f"LoCoMo, all {r['conversations']} conversations, {r['questions']} questions with gold sessions, "
        f"`memgas` = `{r['memgas_config']}`; each memory built twice: exact (scan + full PageRank) and "
        "scalable (ANN association + local push PageRank, forced on however small the memory).",
        "",
    ]
    lines += _table(
        ["path", r["metric"], "questions whose recall changed", "top-5 agreement"],
        [
            ["exact", f"{r['exact']:.4f}", "", ""],
            ["scalable", f"{r['scalable']:.4f}", str(r["questions_changed"]), f"{r['top5_agreement']:.4f}"],
        ],
    )
    lines += ["", f"Target: {r['target']}: difference {r['difference']:+.4f}, {'met' if r['met'] else 'missed'}."]
    return lines + _provenance(r)


def render_query_scale(name: str, r: dict) -> list[str]:
    """`benchmarks/query_scale.py`: query p50 / p95 per configuration as one memory holds more sessions."""
    rows, c = r["rows"], r["config"]
    methods = list(rows[0]["query_ms_p50"])
    lines = [
        f"One user's memory of up to {rows[-1]['sessions']:,} sessions, built directly (real units and "
        f"`{c['encoder']}` vectors, association edges drawn at random, {c['edges_per_session']:.1f} a session "
        f"as in the grown store), {c['queries']} queries per point through `MemoryStore.search` (query "
        "encoding excluded). Scored nodes: the nodes a query scores densely (`memgas` also scores BM25 over every "
        "session and turn).",
        "",
    ]
    head = ["sessions", "nodes", "edges"] + [f"{m} p50 / p95 ms (scored nodes)" for m in methods]
    body = [
        [f"{x['sessions']:,}", f"{x['nodes']:,}", f"{x['edges']:,}"]
        + [f"{x['query_ms_p50'][m]:.1f} / {x['query_ms_p95'][m]:.1f} ({x['scored_nodes'][m]:,})" for m in methods]
        for x in rows
    ]
    lines += _table(head, body)
    t = r.get("target")
    last = rows[-1]
    if t and last["sessions"] == t["sessions"]:
        p50 = last["query_ms_p50"]
        verdicts = ", ".join(
            f"`{m}` {p50[m]:.1f} ms, {'met' if p50[m] < t['query_ms_p50'] else 'missed'}" for m in methods
        )
        lines += ["", f"Target: query p50 under {t['query_ms_p50']:.0f} ms at {t['sessions']:,} sessions: {verdicts}."]
    return lines + _provenance(r)


def render_query_recall(name: str, r: dict) -> list[str]:
    """`query_scale.py --recall`: what each configuration scores on LoCoMo, against the paper's."""
    n_conv = r["conversations"]
    lines = [
        f"LoCoMo, all {n_conv} conversations (dev and test: a cost check that selects nothing), "
        f"{r['questions']} questions with gold sessions, encoder `{r['provenance']['config']['encoder']}`; "
        f"{r['metric']} per configuration, and its difference from `memgas_paper` with a 95% interval "
        "(conversations resampled) and the exact test over conversations, Holm-corrected.",
        "",
    ]
    vs = r.get("vs_memgas_paper") or {}
    lines += _table(
        ["configuration", r["metric"], "minus memgas_paper"],
        [[f"`{k}`", f"{v:.4f}", _diff(vs.get(k)) if k in vs else "(reference)"] for k, v in r["recall"].items()],
    )
    return lines + _provenance(r)


def render_store_processes(name: str, r: dict) -> list[str]:
    """`benchmarks/store_processes.py`: writer processes through the plain API, readers meanwhile."""
    lines = [f"Durable store, {r['config']['api']}; {r['config']['readers']} reader processes searching meanwhile.", ""]
    lines += _table(
        ["writers", "adds", "lost", "reader searches", "reader errors", "adds/s", "add p50 / p95 / max ms"],
        [
            [
                str(t["writers"]),
                str(t["adds_expected"]),
                str(t["adds_lost"]),
                f"{t['reader_searches']:,}",
                str(t["reader_errors"]),
                f"{t['adds_per_s']:.1f}",
                f"{t['add_ms']['p50']:.0f} / {t['add_ms']['p95']:.0f} / {t['add_ms']['max']:.0f}",
            ]
            for t in r["trials"]
        ],
    )
    lines += ["", f"Target: {r['target']}: {'met' if r['met'] else 'missed'}."]
    return lines + _provenance(r)


def render_throughput(name: str, s: dict) -> list[str]:
    """`benchmarks/bank_throughput.py`'s bank_throughput.json: anchors per hour per setup."""
    lines = [f"Model `{s.get('model')}`, {s.get('samples_per_anchor')} leave-one-out samples per anchor.", ""]
    lines += _table(
        [
            "backend",
            "workers",
            "strategy",
            "anchors / hour",
            "train s / anchor",
            "wall s / anchor",
            "vs local s / anchor",
        ],
        [
            [
                r["backend"],
                str(r["workers"]),
                r["strategy"] if r["backend"] == "ray" else "—",
                f"{r['anchors_per_hour']:.1f}",
                f"{r['train_s_per_anchor']:.1f}",
                f"{r['wall_s'] / r['anchors']:.1f}",
                f"{r['ray_overhead_vs_local_s_per_anchor']:.1f}",
            ]
            for r in s["rows"]
        ],
    )
    return lines + _provenance(s)


def serve_targets(rows: list[dict]) -> list[str]:
    """Issue #31's targets, read from the rows of one run (the app's engine: `basis_iter`)."""
    at = {(x["mode"], x["users"]): x for x in rows}
    out = []
    for n in (8, 64):
        it, base, same = at.get(("basis_iter", n)), at.get(("base", n)), at.get(("basis_iter_base", n))
        if it and base and same:
            ratio, ratio_same = it["tokens_per_s"] / base["tokens_per_s"], it["tokens_per_s"] / same["tokens_per_s"]
            out.append(
                f"{n} users: {ratio:.2f}x the base model's tokens/s ({ratio_same:.2f}x the base model on the same "
                f"engine and scheduler), target 0.9x: {'met' if min(ratio, ratio_same) >= 0.9 else 'missed'}"
            )
    p95 = [x["cold_cached_p95_ms"] for x in rows if x["mode"] == "basis_iter" and x.get("cold_cached_p95_ms")]
    if p95:
        out.append(
            f"cold start with nothing to encode, p95 at most {max(p95):.1f} ms over the levels, target under 20 ms: "
            f"{'met' if max(p95) < 20 else 'missed'}"
        )
    one = at.get(("basis_iter", 1))
    big = max((x for x in rows if x["mode"] == "basis_iter"), key=lambda x: x["users"], default=None)
    if one and big and big["users"] >= 1000:
        grow = big["rss_mb"] - one["rss_mb"]
        i, j = rows.index(one), rows.index(big)
        others = sorted({x["mode"] for x in rows[i + 1 : j] if x["mode"] != "basis_iter"})
        if others:  # the process also grew by what those levels allocated: no reading of the engine's own
            prev = rows[j - 1] if rows[j - 1]["mode"] == "basis_iter" else None
            step = (
                f"; from {prev['users']:,} to {big['users']:,} users {big['rss_mb'] - prev['rss_mb']:+.0f} MB"
                if prev
                else ""
            )
            out.append(
                f"RSS growth from 1 to {big['users']:,} users {grow:+.0f} MB, but {', '.join(others)} ran between "
                f"them in the same process{step}: target under 100 MB **not measured in isolation**"
            )
        else:
            out.append(
                f"RSS growth from 1 to {big['users']:,} users {grow:+.0f} MB, target under 100 MB: "
                f"{'met' if grow < 100 else 'missed'}"
            )
    return ["", "Targets (the app's engine, `basis_iter`): " + "; ".join(out) + "."] if out else []


def render_serve_load(name: str, r: dict, out: Path) -> list[str]:
    """The serving benchmark: latency, throughput, cold starts and the cache, per load level."""
    rows = r["rows"]
    ttft = any(x.get("ttft_p50_ms") is not None for x in rows)
    cached = any("cold_cached_p50_ms" in x for x in rows)
    lines = [
        f"Serving load, {r['model']}: {r['requests_per_level']} requests per level from {r['concurrency']} concurrent "
        f"clients, {r['max_tokens']} new tokens each, cache of {r['cache_size']} adapters ({r['note']}).",
        "",
    ]
    lines += _table(
        [
            "mode",
            "users",
            "p50 ms",
            "p95 ms",
            "tokens/s",
            "cold p50 / p95 ms",
            "hit rate",
            "compose share",
            "held",
            "RSS MB",
        ]
        + (["TTFT p50 / p95 ms"] if ttft else [])
        + (["cold, nothing encoded p50 / p95 ms"] if cached else []),
        [
            [
                x["mode"],
                str(x["users"]),
                _f(x["p50_ms"], 1),
                _f(x["p95_ms"], 1),
                _f(x["tokens_per_s"], 1),
                f"{_f(x['cold_p50_ms'], 1)} / {_f(x['cold_p95_ms'], 1)}",
                _f(x["hit_rate"], 2),
                _f(x["compose_share"], 3),
                str(x["adapters_held"]),
                _f(x["rss_mb"], 0),
            ]
            + ([f"{_f(x.get('ttft_p50_ms'), 1)} / {_f(x.get('ttft_p95_ms'), 1)}"] if ttft else [])
            + ([f"{_f(x.get('cold_cached_p50_ms'), 1)} / {_f(x.get('cold_cached_p95_ms'), 1)}"] if cached else [])
            for x in rows
        ],
    )
    lines += serve_targets(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mode in ("base", "mta_mixed", "mta_switch", "basis_base", "basis_mixed", "basis_iter_base", "basis_iter"):
        pts = [(x["users"], x["tokens_per_s"]) for x in rows if x["mode"] == mode]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("distinct users")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"serving throughput, {r['model']}")
    ax.legend(fontsize=7)
    png = _save(fig, out / f"{name}_serve_load.png")
    return lines + _provenance(r) + ["", f"![serving throughput]({png.name})"]


def render_store_tenants(name: str, r: dict) -> list[str]:
    """`benchmarks/store_tenants.py`: one durable store of many users with modest memories."""
    c, m = r["config"], r["results"]

    def ms(k: str) -> str:
        return f"{m[k]['p50']:.1f} / {m[k]['p95']:.1f} (n={m[k]['n']})"

    lines = [
        f"{c['users']:,} users × {c['sessions_per_user']} sessions ({m['sessions']:,} sessions, {c['encoder']}); "
        f"{m['users_touched']:,} distinct users touched.",
        "",
    ]
    lines += _table(
        ["measure", "value"],
        [
            ["open", f"{m['open_s'] * 1000:.0f} ms"],
            ["warm user: search p50 / p95 ms", ms("warm_search_ms")],
            ["warm user: add p50 / p95 ms", ms("warm_add_ms")],
            ["cold user: search p50 / p95 ms", ms("cold_search_ms")],
            ["cold user: add p50 / p95 ms", ms("cold_add_ms")],
            ["users held in memory at the end", f"{m['users_in_memory']:,}"],
            ["peak RSS", f"{m['rss_peak_mb']:,.0f} MB"],
            ["disk bytes per session", f"{m['disk_bytes_per_session']:,.0f}"],
        ],
    )
    lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if ok else 'missed'}" for k, ok in r["targets"].items()) + "."]
    return lines + _provenance(r)


def render_store_delete(name: str, r: dict) -> list[str]:
    """`benchmarks/store_delete.py`: the cost of an exact and a cheap delete."""
    lines = _table(
        ["sessions", "deleted at", "exact s", "re-associated sessions (nodes)", "cheap s"],
        [
            [
                f"{e['sessions']:,}",
                f"{e['position']:.0%}",
                f"{e['seconds']:.2f}",
                str(e["reassociated"]) + (f" ({e['reassociated_nodes']})" if "reassociated_nodes" in e else ""),
                f"{c['seconds']:.2f}",
            ]
            for e, c in zip([x for x in r["rows"] if x["exact"]], [x for x in r["rows"] if not x["exact"]], strict=True)
        ],
    )
    met = "not run" if r["met"] is None else ("met" if r["met"] else "missed")
    lines += ["", f"Target: {r['target']}: {met}. Each delete includes its commit and the purging checkpoint."]
    return lines + _provenance(r)


def cluster_reference(sc: str, names) -> str | None:
    """The uninterrupted scenario a failure scenario is timed against: `<job>_node_kill` against
    `<job>`; the bank's failures (`node_kill`, `driver_kill`, `s3_node_kill`) against `autoscale`."""
    job = sc.removesuffix("_node_kill")
    return job if job != sc and job in names else ("autoscale" if "autoscale" in names else None)


def render_cluster_sim(name: str, r: dict) -> list[str]:
    """`benchmarks/cluster_sim.py`: the bank on a fake autoscaling cluster, with failures."""
    rows = []
    for sc, x in r["scenarios"].items():
        ev = (x.get("events") or [{}])[0]
        ref = r["scenarios"].get(cluster_reference(sc, r["scenarios"])) if ev else None
        lost = f"{x['wall_s'] - ref['wall_s']:+.0f}" if ref else "—"
        # what each kind of job redid: the bank's anchors, a sweep's retried trials, an evaluation's tasks
        redo = [f"{a}: step {v['resumed_from_step']} of {v['checkpointed_step_on_disk']}"
                for a, v in (x.get("redone_steps") or {}).items()]  # fmt: skip
        redo += [f"trial {t} retried ({v['failures']}×), {v['steps_repeated']} of {v['steps_reported']} steps repeated"
                 for t, v in (x.get("retried_trials") or {}).items()]  # fmt: skip
        if (tasks := (x.get("redone_tasks") or {}).get("tasks_in_flight_at_most")) is not None:
            redo.append(f"≤ {tasks} task(s) in flight on the dead node")
        diff, eq = x.get("max_abs_diff_vs_uninterrupted"), x.get("equal_to_uninterrupted")
        same = "reference" if diff is None and eq is None else (f"{diff:.1e}" if diff is not None else str(eq).lower())
        rec = x.get("outcome") or {}
        if "records" in rec:
            same += f" ({rec['records']} records, {rec['duplicate_records']} duplicated)"
        rows.append(
            [
                sc,
                " → ".join(j["status"] for j in x["jobs"]),
                f"{x['wall_s']:.0f}",
                _f(x.get("scale_up_s"), 1),
                str(x["max_worker_nodes"]),
                f"{ev['killed']} at {ev['t']:.0f} s" if ev else "—",
                lost,
                "; ".join(redo) or "—",
                same,
                _f(x.get("released_after_s"), 0),
                f"{x['peak_rss_mb']:,}",
            ]
        )
    sc = r["scenarios"]
    jobs = [
        "the bank (tiny model, 4 anchors, 2 workers per anchor, 1 fake GPU per worker"
        + ("; `s3_node_kill`: checkpoints in S3 on moto's server on loopback)" if "s3_node_kill" in sc else ")"),
    ]
    if "sweep" in sc:
        jobs.append("`sweep_memgas` (LoCoMo dev, 4 seeded trials at once, hashing encoder; equal = same best "
                    "configuration and every trial's metric)")  # fmt: skip
    if "eval" in sc or "mta_eval" in sc:
        jobs.append("`mta_pipeline` (tiny model, 16 dev users, one Ray task per user)")
    if "memgas_eval" in sc:
        jobs.append("`memgas_eval` (LoCoMo, hashing encoder, one Ray task per conversation)")
    lines = [
        "Jobs submitted with `ray job submit` to a fake cluster derived from `cluster.yaml`, from zero workers "
        f"(idle timeout {r['idle_timeout_minutes']} min for the simulation): "
        + ", ".join(jobs)
        + "; for the evaluations equal = same scores, no record duplicated or lost. Time lost: the wall time "
        "beyond the same job's uninterrupted run (the bank's failures against `autoscale`: `driver_kill` includes "
        "the resubmission, `s3_node_kill` its S3 storage).",
        "",
    ]
    lines += _table(
        ["scenario", "job", "wall s", "first worker s", "worker nodes", "failure", "time lost s",
         "work redone (bank: anchor resumed at step k of newest registered)",
         "equal to uninterrupted (bank: max abs diff)", "released after s", "peak RSS MB"],
        rows,
    )  # fmt: skip
    place = (r["scenarios"].get("autoscale") or {}).get("placement") or {}
    if place:
        nodes = sorted(set(place.values()))
        lines += ["", "Placement (autoscale): " + ", ".join(
            f"anchor {a} on worker {nodes.index(n) + 1}" for a, n in sorted(place.items()))]  # fmt: skip
    restores = [x for one in sc.values() for x in one.get("restores") or []]
    if restores:
        lines += ["", "Restores logged by the bank's trainers:", ""] + [f"- `{x}`" for x in restores]
    if "s3" in r:
        found = r["s3"]["secret_found_in"]
        lines += ["", f"S3 credentials (environment only): the secret key found in {len(found)} file(s) of the run "
                  "and of the cluster's temp folder" + (f": {', '.join(found)}." if found else ".")]  # fmt: skip
    td = r.get("teardown") or {}
    lines += ["", f"Teardown: {td.get('left', '?')} process(es) left, temp folder left: {td.get('temp_left', '?')}."]
    return lines + _provenance(r)


def render_serve_http(name: str, r: dict) -> list[str]:
    """`benchmarks/serve_http.py`: the app through Ray Serve over HTTP, the openai client streaming."""
    lines = [
        f"Serving over HTTP, {r['model']} ({r['engine']} engine): {r['requests_per_level']} streamed chat "
        f"completions per level (at least one per user) from {r['concurrency']} concurrent `openai` clients, "
        f"{r['max_tokens']} new tokens each, cache of {r['cache_size']} adapters, {r['records']} users with a "
        f"record ({r['note']}). Cold = a user's first request in the run.",
        "",
    ]
    lines += _table(
        ["mode", "users", "tokens/s", "p50 / p95 ms", "TTFT p50 / p95 ms", "cold TTFT p50 / p95 ms (n)", "hit rate",
         "replica RSS MB"],
        [[x["mode"], str(x["users"]), _f(x["tokens_per_s"], 1), f"{_f(x['p50_ms'], 0)} / {_f(x['p95_ms'], 0)}",
          f"{_f(x['ttft_p50_ms'], 1)} / {_f(x['ttft_p95_ms'], 1)}",
          f"{_f(x['cold_ttft_p50_ms'], 1)} / {_f(x['cold_ttft_p95_ms'], 1)} ({x['cold_n']})",
          _f(x["hit_rate"], 2), f"{x['replica_rss_mb']:,.0f}"] for x in r["rows"]],
    )  # fmt: skip
    at = {(x["mode"], x["users"]): x for x in r["rows"]}
    verdicts = []
    for n in (8, 64):
        m, b = at.get(("mta", n)), at.get(("base", n))
        if m and b and b["tokens_per_s"]:
            ratio = m["tokens_per_s"] / b["tokens_per_s"]
            verdicts.append(
                f"{n} users: {ratio:.2f}x the base model's tokens/s over the same route, target "
                f"{r['target_ratio']}x: {'met' if ratio >= r['target_ratio'] else 'missed'}"
            )
    if verdicts:
        lines += ["", "Targets over HTTP: " + "; ".join(verdicts) + "."]
    return lines + _provenance(r)
