"""MemGAS blocks: the method table against the reference row, mechanism attribution, router
weights, recall@k curves and per-category bars."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from reporting.common import MEM_COLUMNS, _diff, _f, _provenance, _save, _table  # noqa: E402


def render_memgas(name: str, bench: str, r: dict, out: Path) -> list[str]:
    methods = r["methods"]
    vs = r.get("vs_reference", {})
    ref = vs.get("reference", "memgas")
    cols = [c for c in MEM_COLUMNS if c in next(iter(methods.values()))]
    compared = bool(vs.get("methods"))
    rows = [
        [f"**{m}**" if m == ref else m]
        + [_f(v.get(c)) for c in cols]
        + ([_diff(vs.get("methods", {}).get(m))] if compared else [])
        for m, v in methods.items()
    ]
    data = r.get("data", {})
    head = f"**{bench}** — {r['n_questions']} questions, split `{data.get('split', {}).get('name', data.get('split'))}`"
    if not compared:  # a pipeline check (the demo): means only
        lines = [head + "; each method's mean, no differences or verdicts (too few independent units).", ""]
        lines += _table(["method"] + cols, rows)
    else:
        lines = [
            head + f"; difference to `{ref}` on {vs.get('metric', cols[0])}: cluster-bootstrap 95% interval over "
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
            "a baseline, named for what it computes; "
            + (
                "no dev configuration qualified as MemGAS proper (graph deciding >= 25% of the top-5 places with "
                "a router that varies), so there is no `memgas` row and the authors' configuration is the reference."
                if isinstance((r.get("configs") or {}).get("memgas"), str)
                else "`memgas` is the best dev configuration that uses the graph and a non-uniform router."
            ),
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
        paths = sorted(
            {"graph"} | {p for a in att.values() for p in a["decided_share"]}, key=lambda p: (p != "graph", p)
        )
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
