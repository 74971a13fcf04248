"""MTA blocks: one task's method table (with selection, calibration and anchors) and the overview
row per task."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from reporting.common import MTA_LABELS, _diff, _f, _provenance, _save, _table, verdict_of  # noqa: E402


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
    sw, vs_sw = r.get("swept"), r.get("vs_mta_swept")
    if sw and vs_sw:
        lines += [
            "",
            f"MTA (swept): the fusion and stacking of `{sw['file']}` (sha256 `{sw['sha256'][:12]}`, "
            f"{sw.get('selected_by') or 'chosen by a sweep'}; not chosen on these users): "
            f"fusion {_kv(sw['fusion'], ('top_k', 'weighting', 'temperature', 'merge'))}; "
            f"stacking {_kv(sw['stacking'], ('r', 'max_steps', 'lr'))}. Against every other row "
            "(row − MTA (swept), paired, users resampled, Holm over this family): "
            + "; ".join(f"{MTA_LABELS.get(m, m).strip('*')} {_diff(d)}" for m, d in vs_sw.items())
            + ".",
        ]
    lines += selection_lines(r.get("selection") or {}, r.get("tuning_budget"), r.get("selection_from"))
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


def _kv(d: dict, keys: tuple) -> str:
    return ", ".join(f"{k} {d[k]:.3g}" if isinstance(d.get(k), float) else f"{k} {d.get(k)}" for k in keys)


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
        # each task's commit beside its own method code: a set of codes cannot say which row it made
        made.append(
            f"{task} `{p.get('commit', 'unknown')[:10]}`"
            + (" (dirty)" if p.get("dirty") else "")
            + f" (method code `{p.get('code_version', 'unknown')}`)"
        )
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
    return lines + ["", f"_Made at commits {', '.join(made)}._"]


def selection_lines(sel: dict, budget, src: dict | None = None) -> list[str]:
    """The choices made on train users: each candidate's score ± SE, the choice, its margin (flagged
    under one SE) and each trained candidate's relative update; `src`: where an earlier job made them."""
    if not sel:
        return []
    lines = [
        "",
        f"Settings chosen on train users (never dev), budget {budget}; score ± standard "
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
    if src:  # chosen by an earlier job (eval.selection_from) on the same users, bank and grids
        code = (
            "the same method code as this run"
            if src.get("same_code")
            else f"method code `{src.get('code_version')}`, **not this run's**"
        )
        reused = src.get("reused", list(sel))
        which = "These choices were" if set(reused) >= set(sel) else f"The choices for {', '.join(reused)} were"
        bank = (
            "; the bank's weights differ from this run's (the same recipe, retrained)"
            if src.get("same_bank_content") is False
            else ""
        )
        lines += [
            "",
            f"{which} made by an earlier job and read from `{src['file']}` (sha256 "
            f"`{src['sha256'][:12]}`), at {code}; its users, bank recipe, grids and base settings equal "
            f"this run's (checked){bank}.",
        ]
    return lines


def render_selection(name: str, data: dict) -> list[str]:
    """A selection.json (`eval.stop_after=select`): the choices before any evaluated user is seen."""
    fp = data.get("fingerprint", {})
    d = fp.get("data", {})
    chosen, progress = data.get("selection") or {}, data.get("in_progress") or {}
    grids = {"oppu": "oppu_grid", "stack": "stacking_grid"}

    def grid(what: str) -> list:
        return (fp.get("eval") or {}).get(grids.get(what, ""), [])

    lines = [
        f"**{d.get('task')}** — choices made on {d.get('select_users')} {d.get('train_split')} users that are "
        f"not anchors (split digest `{str(fp.get('train_sha'))[:12]}`, bank `{str(fp.get('bank'))[:12]}`)"
        # λ is stated only once chosen: a task without it (generation) or a file stopped before it
        # holds only the default
        + (f"; mta_prior λ = {data.get('lambda')}" if "mta_prior_lambda" in chosen else "")
        + ". No evaluated user has been seen.",
        "",
    ]
    lines += selection_lines(chosen, data.get("budgets"))
    for what, rows in progress.items():  # a selection stopped midway
        done = "; ".join(f"`{r['candidate']}` → {_f(np.mean(r['scores']))}" for _, r in sorted(rows.items()))
        lines += [
            "",
            f"**{what}: not chosen yet** — {len(rows)} of {len(grid(what)) or '?'} candidates finished ({done}); "
            "the rest run when this file is given back with `eval.selection_from`.",
        ]
    # a method with a budget that has neither a choice nor a finished candidate has not started:
    # without this line a file stopped between two methods reads as complete
    names = {"mta (stack)": "stack", "mta_prior (lambda)": "mta_prior_lambda"}
    for key, budget in (data.get("budgets") or {}).items():
        what = names.get(key, key)
        if what in chosen or what in progress:
            continue
        n = len(grid(what)) or (budget if isinstance(budget, int) else "?")
        lines += [
            "",
            f"**{what}: not started** — 0 of {n} candidates finished; they run when this file is "
            "given back with `eval.selection_from`.",
        ]
    return lines + ["", f"_Method code `{data.get('code_version')}` (`{name}/selection.json`)._"]
