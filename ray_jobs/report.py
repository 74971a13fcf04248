"""One results report from the runs' result files: Markdown tables and matplotlib plots.

    python -m ray_jobs.report runs/bench_lamp2 runs/memgas_locomo_test --out report/
    python -m ray_jobs.report results/* --out docs/report --readme docs/results.md --readme README.md
    python -m ray_jobs.report runs/bench_lamp3 --keep results/               # keep a run's results in git

A run folder holds a job's or sweep's `summary.json`, or a benchmark's `scaling.json` /
`bank_throughput.json`. Every MTA task gets a method table (main metrics, paired 95% interval of the
difference to MTA with its verdict, per-user bytes and adaptation seconds), an anchor table and an
accuracy-versus-storage plot; every MemGAS benchmark a method table with intervals against the
reference method, recall@k curves and per-category bars; a sweep its best configuration, its top
trials and one plot of the metric against every swept key and of the search's progress; the
scaling benchmark its table and curves; the throughput benchmark its table; the MTA tasks together
one overview row each (block `mta_overview`). `--readme` replaces
each block between `<!-- report:NAME -->` and `<!-- /report:NAME -->` (NAME = the run folder's
name) with the rendered Markdown, so README tables are never edited by hand;
`tests/ray_jobs/test_report.py` checks that they match the committed results in `results/`.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from suite.io import atomic_write_bytes, atomic_write_text, claim_run_dir, read_json  # noqa: E402

MTA_LABELS = {
    "base": "base (no history)",
    "rag": "RAG (BM25 top-1)",
    "prior": "prior (most frequent, newest breaks ties)",
    "prior_recency": "prior_recency",
    "oppu": "OPPU (own LoRA)",
    "fusion": "fusion (no stacking)",
    "mta": "**MTA**",
    "mta_prior": "mta_prior",
    "uniform": "uniform merge of all anchors",
    "random": "random anchors",
}
MEM_COLUMNS = ["recall_all@5", "recall_any@5", "recall_all@10", "ndcg_any@5"]


def _f(x, nd=3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def verdict_of(d: dict | None) -> str:
    """The verdict a row may state: an order must hold under every calibration shown, so a row
    whose uncalibrated test disagrees is n.s. (`calibration_dependent`), also for summaries made
    before the summary itself enforced it."""
    if not d:
        return "n.s."
    if "verdict_uncalibrated" in d and d["verdict_uncalibrated"] != d.get("verdict_primary", d["verdict"]):
        return "n.s."
    return d["verdict"]


def _diff(d: dict | None) -> str:
    """diff [95% CI] p_holm verdict (verdict from the Holm-corrected test at the interval's unit;
    "n.s.*" = an order that only one calibration supports)."""
    if not d:
        return "—"
    lo, hi = d["ci95"]
    p = f" p={d['p_holm']:.3g}" if "p_holm" in d else ""
    v = verdict_of(d)
    dep = "*" if v == "n.s." and d.get("verdict_primary", d["verdict"]) != d.get("verdict_uncalibrated", v) else ""
    return f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{p} {v}{dep}"


def _provenance(r: dict) -> list[str]:
    p = r.get("provenance")
    if not p:
        return ["", "_Provenance: not recorded (made before summaries recorded their commit)._"]
    commit = p.get("commit", "unknown")
    dirty = " (uncommitted changes)" if p.get("dirty") else ""
    code = f", method code `{p['code_version']}`" if p.get("code_version") else ""
    if p.get("code_changed"):
        code += f" at the start, **`{p['code_version_end']}` at the end (the code changed while it ran)**"
    files = p.get("files") or {}
    sums = "; data " + ", ".join(f"{k} `{v['sha256'][:10]}`" for k, v in files.items()) if files else ""
    note = f" ({p['recorded']})" if p.get("recorded") else ""
    return ["", f"_Made at commit `{commit[:10]}`{dirty}{code}{sums}{note}._"]


def _cell(text: str) -> str:
    """A table cell from data (method names, values): no pipe, no HTML or comment, one line."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _save(fig, png: Path) -> Path:
    """Lay out, write and close a figure (every plot of the report)."""
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(map(_cell, r)) + " |" for r in rows
    ]


# ------------------------------------------------------------------------------------------- MTA
def render_mta(name: str, task: str, r: dict, out: Path) -> list[str]:
    methods = r["methods"]
    metrics = list(next(iter(methods.values())))
    bytes_, adapt = r.get("bytes_per_user", {}), r.get("adapt_s_per_user", {})
    rows = [
        [MTA_LABELS.get(m, m)]
        + [_f(v[k]) for k in metrics]
        + [_diff(r.get("vs_mta", {}).get(m)), (f"{bytes_[m]:,.0f}" if m in bytes_ else "—"), _f(adapt.get(m), 2)]
        for m, v in methods.items()
    ]
    lines = [
        f"**{task}** — {r['n_users']} users ({r['split']['eval']} split), {r['inference']} inference, "
        + (f"calibration `{r['calibration']}`" if r.get("calibration") else "no calibration (generated text)")
        + (f", mta_prior λ = {r['mta_prior_lambda']}" if "mta_prior_lambda" in r else "")
        + ".",
        "",
    ]
    lines += _table(["method"] + metrics + ["diff vs MTA [95% CI] p_holm verdict", "bytes/user", "adapt s/user"], rows)
    unc = {m: d for m, d in r.get("vs_mta", {}).items() if "verdict_uncalibrated" in d}
    if unc:
        dep = [m for m, d in unc.items() if verdict_of(d) != d.get("verdict_primary", d["verdict"])]
        lines += [
            "",
            (r.get("vs_mta_note") or "Verdicts: Holm-corrected exact paired tests, users resampled for the interval")
            + ". An order holds only if it holds under the primary calibration and without calibration. "
            "Without calibration: "
            + "; ".join(f"{m} {d['verdict_uncalibrated']}" for m, d in unc.items())
            + "."
            + (
                f" n.s.* = an order one calibration alone supports ({', '.join(dep)}: "
                + "; ".join(f"{m} {unc[m].get('verdict_primary', unc[m]['verdict'])} calibrated" for m in dep)
                + ")."
                if dep
                else ""
            ),
        ]
    sel = r.get("selection") or {}
    if sel:
        lines += [
            "",
            f"Settings chosen on train users (never dev), budget {r.get('tuning_budget')}; score ± standard "
            "error of the mean over the selection queries; margin = chosen − runner-up ± its paired standard "
            "error (⚠ = under one standard error: the data cannot tell the two apart); relative update "
            "‖ΔW‖/‖W‖ of each trained candidate in brackets:",
            "",
        ]
        rows = []
        for m, v in sel.items():
            se = v.get("se") or [None] * len(v.get("scores", []))
            ru = v.get("rel_update") or [None] * len(v.get("scores", []))
            cands = "; ".join(
                f"`{c}` → {_f(x)}" + (f" ± {_f(e)}" if e is not None else "") + (f" [{u:.1e}]" if u else "")
                for c, x, e, u in zip(v.get("candidates", []), v.get("scores", []), se, ru)
            )
            margin = (
                f"{_f(v['margin'])} ± {_f(v.get('margin_se'))}" + (" ⚠" if v.get("flagged") else "")
                if v.get("margin") is not None
                else "—"
            )
            rows.append([m, str(v.get("users")), cands, f"`{v.get('choice')}`", margin])
        lines += _table(["method", "users", "candidates → score ± SE [rel. update]", "choice", "margin"], rows)
    extras = []
    if r.get("rel_update"):
        extras.append("relative update ‖ΔW‖/‖W‖ " + ", ".join(f"{m} {v:.2e}" for m, v in r["rel_update"].items()))
    if "mta_differs_from_fusion" in r:
        extras.append(f"MTA predictions that differ from fusion: {r['mta_differs_from_fusion']:.1%}")
    if extras:
        lines += ["", "; ".join(extras) + "."]
    ov = r.get("by_overlap")
    if ov:
        main = metrics[0]
        lines += [
            "",
            f"Query item in some anchor's profile (overlap, n={ov['overlap']['n']}) or not "
            f"(n={ov['no_overlap']['n']}), {main}: "
            + "; ".join(
                f"{m} {_f(ov['overlap']['methods'].get(m, {}).get(main))} / "
                f"{_f(ov['no_overlap']['methods'].get(m, {}).get(main))}"
                for m in methods
                if m in ("oppu", "fusion", "mta", "rag", "base")
            )
            + ".",
        ]
    if "bank_amortised" in bytes_:
        lines += [
            "",
            f"Bank: {r['bank']['anchors']} anchors, {r['bank']['bytes']:,} bytes "
            f"({bytes_['bank_amortised']:,.0f} per evaluated user).",
        ]
    if r.get("ratios"):
        lines += [
            "",
            f"MTA / OPPU: bytes {r['ratios'].get('bytes_mta_over_oppu', float('nan')):.3f}, "
            f"adaptation time {r['ratios'].get('adapt_s_mta_over_oppu', float('nan')):.3f}.",
        ]
    if r.get("vs_prior_recency"):
        lines += [
            "",
            "Against `prior_recency` (paired 95% interval): "
            + "; ".join(f"{m} {_diff(d)}" for m, d in r["vs_prior_recency"].items())
            + ".",
        ]
    alt = r.get("calibration_alternatives") or {}
    if alt:
        lines += [
            "",
            "Other calibrations (main metric): "
            + "; ".join(
                f"`{c}`: "
                + ", ".join(
                    f"{m} {_f(v[metrics[0]])}" for m, v in vals.items() if m in ("oppu", "mta", "fusion", "rag")
                )
                for c, vals in alt.items()
            ),
        ]
    if r.get("anchors"):
        lines += ["", "Anchors (loss first → last, relative update ‖ΔW‖/‖W‖):", ""]
        lines += _table(
            ["anchor", "items", "steps", "loss first", "loss last", "rel. update"],
            [
                [
                    str(a["id"]),
                    str(a.get("n_items")),
                    str(a.get("steps")),
                    _f(a.get("loss_first")),
                    _f(a.get("loss_last")),
                    f"{a['rel_update']:.2e}",
                ]
                for a in r["anchors"]
            ],
        )
    main = metrics[0]
    pts = [(m, bytes_.get(m, 0) or 0, methods[m][main]) for m in methods]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m, b, v in pts:
        ax.scatter(max(b, 1), v, s=30)
        ax.annotate(m, (max(b, 1), v), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("per-user bytes stored (log; 1 = none)")
    ax.set_ylabel(main)
    ax.set_title(f"{task}: {main} vs storage ({r['n_users']} users)")
    png = _save(fig, out / f"{name}_{task}_{main}_vs_bytes.png")
    return lines + _provenance(r) + ["", f"![{task} {main} versus storage]({png.name})"]


def render_mta_overview(tasks: dict[str, dict]) -> list[str]:
    """One row per MTA task (`tasks`: task → its summary block, from every run given): MTA against
    OPPU, which rows the corrected exact test places below or above MTA, the stretch comparison with
    `prior_recency`, the cost ratios and how many anchors moved by 1e-3. Verdicts are the task
    blocks' own (Holm over each task's table); nothing is re-tested here."""
    rows, made = [], []
    for task in sorted(tasks):
        r = tasks[task]
        main = next(iter(r["methods"]["mta"]))
        vs = r.get("vs_mta", {})
        below = [m for m, d in vs.items() if verdict_of(d) == "worse"]
        above = [m for m, d in vs.items() if verdict_of(d) == "better"]
        prior = (r.get("vs_prior_recency") or {}).get("mta")
        ratios = r.get("ratios") or {}
        anchors = r.get("anchors") or []
        oppu = vs.get("oppu")
        rows.append(
            [
                task,
                f"{r['n_users']} ({r['split']['eval']})",
                main,
                _f(r["methods"]["mta"][main]),
                _f(r["methods"].get("oppu", {}).get(main)),
                (f"{oppu['diff']:+.3f} {verdict_of(oppu)}" if oppu else "—"),
                ", ".join(below) or "none",
                ", ".join(above) or "none",
                (f"{prior['diff']:+.3f} {verdict_of(prior)}" if prior else "—"),
                _f(ratios.get("bytes_mta_over_oppu")),
                _f(ratios.get("adapt_s_mta_over_oppu")),
                f"{sum(a['rel_update'] >= 1e-3 for a in anchors)} of {len(anchors)}",
            ]
        )
        p = r.get("provenance") or {}
        made.append(f"{task} `{p.get('commit', 'unknown')[:10]}`" + (" (dirty)" if p.get("dirty") else ""))
    codes = sorted({(tasks[t].get("provenance") or {}).get("code_version", "unknown") for t in tasks})
    lines = [
        "MTA across the LaMP tasks: settings chosen on train users, measured on the dev users named; "
        "every verdict is the task table's exact paired test, Holm-corrected over that table "
        "(intervals there); a row not named below or above MTA is n.s. against it. OPPU and "
        "prior_recency columns: that method's difference to MTA (OPPU − MTA; MTA − prior_recency); "
        "for mae/rmse lower is better and the verdicts are oriented accordingly.",
        "",
    ]
    lines += _table(
        [
            "task",
            "users",
            "metric",
            "MTA",
            "OPPU",
            "OPPU − MTA",
            "below MTA",
            "above MTA",
            "MTA − prior_recency",
            "bytes MTA/OPPU",
            "time MTA/OPPU",
            "anchors ≥ 1e-3",
        ],
        rows,
    )
    return lines + ["", f"_Made at commits {', '.join(made)}; method code {', '.join(f'`{c}`' for c in codes)}._"]


# ---------------------------------------------------------------------------------------- MemGAS
def render_memgas(name: str, bench: str, r: dict, out: Path) -> list[str]:
    methods = r["methods"]
    vs = r.get("vs_reference", {})
    ref = vs.get("reference", "memgas")
    cols = [c for c in MEM_COLUMNS if c in next(iter(methods.values()))]
    rows = [
        [f"**{m}**" if m == ref else m] + [_f(v.get(c)) for c in cols] + [_diff(vs.get("methods", {}).get(m))]
        for m, v in methods.items()
    ]
    data = r.get("data", {})
    lines = [
        f"**{bench}** — {r['n_questions']} questions, split `{data.get('split', {}).get('name', data.get('split'))}`; "
        f"difference to `{ref}` on {vs.get('metric', cols[0])}: cluster-bootstrap 95% interval over "
        f"{vs.get('n_clusters', '?')} independent units (conversations; a LongMemEval question is its own), "
        + (
            f"p from the test at the same unit ({vs['test']})"
            if vs.get("test")
            else "sign-flip permutation p over questions (made before tests at the interval's unit)"
        )
        + ", Holm-corrected over the table; better/worse only when p_holm < 0.05, else n.s.",
        "",
    ]
    lines += _table(["method"] + cols + [f"diff vs {ref} [95% CI] p_holm verdict"], rows)
    hyb = (r.get("configs") or {}).get("hybrid")
    if hyb:
        lines += [
            "",
            f"`{hyb['name']}` is the winner of the unconstrained dev sweep "
            f"(graph {'on' if hyb['retrieval'].get('use_graph') else 'off'}, router {hyb['retrieval'].get('router')}): "
            "a baseline, named for what it computes; `memgas` is the best dev configuration that uses the graph "
            "and a non-uniform router.",
        ]
    if "query_ms_p50" in r:
        lines += [
            "",
            f"Query latency p50 {r['query_ms_p50']:.1f} ms, p95 {r.get('query_ms_p95', float('nan')):.1f} ms"
            + (f"; ingestion {r['ingest_sessions_per_s']:.2f} sessions/s" if "ingest_sessions_per_s" in r else "")
            + ".",
        ]
    rw = r.get("router_weights") or {}
    if rw:
        grans = sorted({g for v in rw.values() for g in v["mean"]})
        lines += [
            "",
            "Router weights per granularity, mean ± sd across questions (share of questions where it alone "
            "weighs most); sd 0 means the router chooses nothing:",
            "",
        ]
        lines += _table(
            ["method"] + grans,
            [
                [m]
                + [
                    f"{v['mean'][g]:.2f} ± {v['sd'][g]:.2f} ({v['top_share'][g]:.0%})" if g in v["mean"] else "—"
                    for g in grans
                ]
                for m, v in rw.items()
            ],
        )
    att = r.get("attribution") or {}
    if att:
        paths = sorted({p for a in att.values() for p in a["decided_share"]}, key=lambda p: (p != "graph", p))
        alone = sorted({p for a in att.values() for p in a.get("recall_all@5_alone", {})})
        lines += [
            "",
            "Mechanism attribution (`memgas.attribution`): share of the top-5 places each path decides "
            "(graph = what PageRank moved; dense / lexical = their seed scores; bypass = added after the "
            "graph), recall_all@5 of each path alone, and the router's mean entropy / log N per granularity "
            "(1 = a uniform softmax: the router cannot prefer that granularity):",
            "",
        ]
        lines += _table(
            ["method"] + [f"decides: {p}" for p in paths] + [f"alone: {p}" for p in alone] + ["entropy / log N"],
            [
                [m]
                + [f"{a['decided_share'].get(p, 0.0):.0%}" for p in paths]
                + [_f(a.get("recall_all@5_alone", {}).get(p)) for p in alone]
                + [", ".join(f"{g} {v:.3f}" for g, v in a.get("entropy_over_log_n", {}).items()) or "—"]
                for m, a in att.items()
                if not m.startswith(("bm25_", "dense_"))  # single-path baselines decide by their one path
            ],
        )
    # recall@k curves
    show = [m for m in methods if not m.startswith("memgas_") or m == "memgas_paper"]
    ks = sorted({int(k.split("@")[1]) for k in next(iter(methods.values())) if k.startswith("recall_all@")})
    if len(ks) > 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        for m in show:
            ax.plot(
                ks,
                [methods[m].get(f"recall_all@{k}", float("nan")) for k in ks],
                marker="o",
                ms=3,
                label=m,
                lw=2.2 if m == ref else 1,
            )
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (sessions retrieved)")
        ax.set_ylabel("recall_all@k")
        ax.set_title(f"{bench}: recall_all@k ({r['n_questions']} questions)")
        ax.legend(fontsize=6, ncol=2)
        png = _save(fig, out / f"{name}_{bench}_recall_at_k.png")
        lines += ["", f"![{bench} recall@k]({png.name})"]
    cats = r.get("by_category") or {}
    if cats:
        pick = [m for m in (ref, "bm25_session", "memgas_paper", "dense_turn") if m in methods]
        metric = "recall_all@5"
        fig, ax = plt.subplots(figsize=(6, 3.6))
        width = 0.8 / len(pick)
        for i, m in enumerate(pick):
            ax.bar(
                [j + i * width for j in range(len(cats))],
                [cats[c].get(m, {}).get(metric, 0) for c in cats],
                width,
                label=m,
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cats))], [f"{c}\n(n={cats[c]['n']})" for c in cats])
        ax.set_ylabel(metric)
        ax.set_title(f"{bench}: {metric} per category")
        ax.legend(fontsize=7)
        png = _save(fig, out / f"{name}_{bench}_by_category.png")
        lines += ["", f"![{bench} per category]({png.name})"]
    return lines + _provenance(r)


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def render_sweep(name: str, s: dict, out: Path) -> list[str]:
    best = s.get("best", {})
    metric, mode = s.get("metric"), s.get("mode", "max")
    how = (
        f" (final value over all {best['steps']} steps, among the {best['complete_trials']} trials that ran them all)"
        if "complete_trials" in best
        else ""
    )
    lines = [
        f"Sweep `{name}`: {s.get('trials')} trials, {s.get('errors', 0)} errors; best {metric} = "
        f"{_f(best.get('value'))} on the split the sweep saw{how}.",
        "",
    ]
    if best.get("found") is False:
        lines = [
            f"Sweep `{name}`: {s.get('trials')} trials, {s.get('errors', 0)} errors; **no trial qualifies**: "
            + best.get("note", "none of the complete trials passed the sweep's acceptance rule")
            + ".",
            "",
        ]
    lines += _table(["parameter", "best value"], [[k, f"`{v}`"] for k, v in sorted((best.get("config") or {}).items())])
    imp = s.get("importance") or {}
    if imp.get("importance"):
        lines += [
            "",
            f"Importance of each swept key ({imp['method']}, over the {imp['trials']} complete trials; shares of "
            "the metric's variance, summing to 1; few trials make these rough):",
            "",
        ]
        lines += _table(
            ["key", "importance"],
            [[k, f"{v:.3f}"] for k, v in sorted(imp["importance"].items(), key=lambda kv: -kv[1])],
        )
    vd = s.get("vs_default")
    if vd:
        lines += [
            "",
            f"Best trial against the default configuration on the same {vd['n_clusters']} {vd.get('unit', 'users')} "
            f"({vd['metric']}): {vd['best']:.4f} vs {vd['default']:.4f}, difference {_diff(vd['row'])} "
            f"({vd['row'].get('test', '')}; the choice was made on these users, so this difference is "
            "optimistic — the dev evaluation is the honest one).",
        ]
    trials = [t for t in s.get("all_trials") or [] if t.get("value") is not None]
    if not trials:
        return lines + ["", "(this summary predates per-trial records: no sweep plots)"] + _provenance(s)
    keys = sorted({k for t in trials for k in t["params"]})
    better = max if mode == "max" else min
    top = sorted(trials, key=lambda t: t["value"], reverse=mode == "max")[:5]
    varying = [k for k in keys if len({str(t["params"].get(k)) for t in trials}) > 1]
    gated = any("accepted" in t for t in trials)
    measured = [k for k in ("graph_share", "router_sd_max") if any(t.get(k) is not None for t in trials)]
    lines += ["", f"Top {len(top)} trials of {len(trials)} (parameters that vary across trials):", ""]
    lines += _table(
        ["rank", metric] + measured + (["accepted"] if gated else []) + varying,
        [
            [str(i + 1), _f(t["value"])]
            + [_f(t.get(k)) for k in measured]
            + (["yes" if t.get("accepted") else "no"] if gated else [])
            + [f"`{t['params'].get(k)}`" for k in varying]
            for i, t in enumerate(top)
        ],
    )
    # one panel per swept key (the metric of every trial against the key's value, best starred) and
    # one for the search's progress (each trial and the running best, in launch order)
    n = len(keys) + 1
    cols = min(4, n)
    rows_ = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(3.3 * cols, 2.6 * rows_), squeeze=False)
    flat = [a for row in axes for a in row]
    chosen = [t for t in trials if best.get("config") is not None and t["params"] == best["config"]]
    best_t = chosen[0] if chosen else better(trials, key=lambda t: t["value"])
    for ax, key in zip(flat, keys):
        vals = [t["params"].get(key) for t in trials]
        if all(_num(v) for v in vals):
            xs, bx = vals, best_t["params"].get(key)
            if min(vals) > 0 and max(vals) / min(vals) > 20:
                ax.set_xscale("log")
        else:
            cats = sorted({str(v) for v in vals})
            xs = [cats.index(str(v)) for v in vals]
            bx = cats.index(str(best_t["params"].get(key)))
            ax.set_xticks(range(len(cats)), [c if len(c) <= 14 else c[:13] + "…" for c in cats], fontsize=6)
            ax.tick_params(axis="x", labelrotation=30)
        ax.scatter(xs, [t["value"] for t in trials], s=14, alpha=0.7)
        ax.scatter([bx], [best_t["value"]], marker="*", s=90, color="tab:red")
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=6)
    ax = flat[len(keys)]
    ys = [t["value"] for t in trials]
    run_best = [better(ys[: i + 1]) for i in range(len(ys))]
    ax.scatter(range(1, len(ys) + 1), ys, s=12, alpha=0.7, label="trial")
    ax.plot(range(1, len(ys) + 1), run_best, color="tab:red", lw=1.5, label="best so far")
    ax.set_title("search progress", fontsize=8)
    ax.set_xlabel("trial", fontsize=7)
    ax.legend(fontsize=6)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle(f"{name}: {metric} per trial ({len(trials)} trials)", fontsize=9)
    png = _save(fig, out / f"{name}_sweep.png")
    return lines + _provenance(s) + ["", f"![{name} sweep]({png.name})"]


# ------------------------------------------------------------------------------------- benchmarks
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
    return lines + _table(
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


# --------------------------------------------------------------------------------------- driver
RESULT_FILES = (
    "summary.json",
    "scaling.json",
    "recall.json",
    "store_processes.json",
    "bank_throughput.json",
    "serve_load.json",
)


def render_serve_load(name: str, r: dict, out: Path) -> list[str]:
    """The serving benchmark: latency, throughput, cold starts and the cache, per load level."""
    rows = r["rows"]
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
        ],
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
            for x in rows
        ],
    )
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mode in ("base", "mta_mixed", "mta_switch"):
        pts = [(x["users"], x["tokens_per_s"]) for x in rows if x["mode"] == mode]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
    ax.set_xscale("log")
    ax.set_xlabel("distinct users")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"serving throughput, {r['model']}")
    ax.legend(fontsize=7)
    png = _save(fig, out / f"{name}_serve_load.png")
    commit = (r.get("provenance") or {}).get("commit", "unknown")
    return lines + ["", f"_Made at commit `{commit[:10]}`._", "", f"![serving throughput]({png.name})"]


def render_run(run: Path, out: Path) -> str:
    name = run.name
    lines: list[str] = []
    if (run / "summary.json").exists():
        s = read_json(run / "summary.json")
        for task, r in (s.get("mta") or {}).items():
            lines += render_mta(name, task, r, out) + [""]
        for bench, r in (s.get("memgas") or {}).items():
            lines += render_memgas(name, bench, r, out) + [""]
        if "trials" in s and "best" in s:
            lines += render_sweep(name, s, out) + [""]
    if (run / "scaling.json").exists():
        lines += render_scaling(name, read_json(run / "scaling.json"), out) + [""]
    if (run / "recall.json").exists():
        lines += render_recall(name, read_json(run / "recall.json")) + [""]
    if (run / "store_processes.json").exists():
        lines += render_store_processes(name, read_json(run / "store_processes.json")) + [""]
    if (run / "serve_load.json").exists():
        lines += render_serve_load(name, read_json(run / "serve_load.json"), out) + [""]
    if (run / "bank_throughput.json").exists():
        lines += render_throughput(name, read_json(run / "bank_throughput.json")) + [""]
    if not lines:
        lines = [f"(`{run}` holds no MTA, MemGAS, sweep or benchmark results)"]
    return "\n".join(lines).rstrip() + "\n"


def render_report(runs: list[Path], out: Path, keep: Path | None = None) -> dict:
    """Render every run into OUT/report.md and OUT/*.png; returns {"blocks": {run name: markdown},
    "plots": [paths written]}. `keep` copies each run's result files to KEEP/<run name>/."""
    out = claim_run_dir(out, "report")  # never writes into a folder that is not a report's
    blocks, tasks = {}, {}  # tasks: every MTA task's summary block, for the overview
    for run in map(Path, runs):
        found = [f for f in RESULT_FILES if (run / f).exists()]
        if not found:
            raise SystemExit(f"{run}: none of {', '.join(RESULT_FILES)} found")
        if keep:
            dest = Path(keep) / run.name
            dest.mkdir(parents=True, exist_ok=True)
            for f in found:  # replaces the path itself: a symlink at the destination is never followed
                atomic_write_bytes(dest / f, (run / f).read_bytes())
        blocks[run.name] = render_run(run, out).replace("<!--", "&lt;!--")  # data never forms a marker
        summary = read_json(run / "summary.json") if "summary.json" in found else {}
        for task, r in (summary.get("mta") or {}).items():
            if "mta" not in r.get("methods", {}):  # a run of baselines only: no MTA row to summarise
                continue
            if task in tasks:
                raise SystemExit(f"{run}: a second run of {task}; give the report one run per task")
            tasks[task] = r
    if tasks:
        blocks["mta_overview"] = "\n".join(render_mta_overview(tasks)).replace("<!--", "&lt;!--") + "\n"
    atomic_write_text(out / "report.md", "".join(f"## {n}\n\n{b}\n" for n, b in blocks.items()))
    # the plots are the images the blocks link to
    plots = sorted({str(out / f) for b in blocks.values() for f in re.findall(r"\]\(([^)/]+\.png)\)", b)})
    return {"blocks": blocks, "plots": plots}


def update_readme(readme: Path, blocks: dict[str, str], image_prefix: str) -> list[str]:
    """Replace each `<!-- report:NAME -->…<!-- /report:NAME -->` block; returns the names replaced."""
    if not readme.is_file():  # e.g. /dev/null: renaming over it would replace the device, not write to it
        raise SystemExit(f"{readme}: --readme must name a regular file")
    text = original = readme.read_text(encoding="utf-8")
    done = []
    for name, body in blocks.items():
        pat = re.compile(rf"(<!-- report:{re.escape(name)} -->\n).*?(<!-- /report:{re.escape(name)} -->)", re.S)
        if pat.search(text):
            body = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", rf"![\1]({image_prefix}\2)", body)
            text = pat.sub(lambda m: m.group(1) + body + m.group(2), text)
            done.append(name)
    if text != original:  # a README with nothing to replace is left untouched
        atomic_write_text(readme, text)
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help=f"run folders holding any of {', '.join(RESULT_FILES)}")
    ap.add_argument("--out", default="report", help="folder for report.md and the plots")
    ap.add_argument(
        "--readme",
        action="append",
        default=[],
        help="Markdown file whose report blocks are regenerated (repeatable: docs/results.md and README.md)",
    )
    ap.add_argument("--keep", help="copy each run's result files to KEEP/<run name>/ (committed results)")
    a = ap.parse_args(argv)
    out = Path(a.out)
    res = render_report(a.runs, out, Path(a.keep) if a.keep else None)
    blocks = res["blocks"]
    print(f"report: {out / 'report.md'} ({len(blocks)} run(s), {len(res['plots'])} plot(s))")
    for readme in a.readme:
        rel = os.path.relpath(out.resolve(), Path(readme).resolve().parent)  # images relative to the page
        prefix = "" if rel == "." else f"{Path(rel).as_posix()}/"
        done = update_readme(Path(readme), blocks, prefix)
        print(f"{readme}: regenerated {done}")


if __name__ == "__main__":
    main()
