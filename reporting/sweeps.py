"""Sweep blocks: the best configuration (or why none qualifies), key importances, the best trial
against the default, the top trials and one panel per swept key."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from reporting.common import _diff, _f, _num, _provenance, _save, _table  # noqa: E402


def launch_number(trial: str) -> int | None:
    """The launch number in a trial's folder name: `trial_014_<id>` (ray_jobs.sweeps.trial_dirname)
    or Tune's default `trial_<id>_14_<config>`; None when the name holds none. Folders sort by
    their random id, not by launch, so the search's progress is ordered by this number."""
    m = re.match(r"trial_(\d+)_[0-9a-f]+(?:_\d{5})?$", trial)
    m = m or re.match(r"trial_[0-9a-f]{5,8}(?:_\d{5})?_(\d+)_", trial)
    return int(m.group(1)) if m else None


def _scatter(ax, xs, ys, done: list[bool], size: int, labels: tuple[str, str] | tuple = ()) -> None:
    """Complete trials filled, trials stopped early hollow (their value is over fewer steps)."""
    for keep, style in ((True, {}), (False, {"facecolors": "none", "edgecolors": "tab:blue"})):
        pts = [(x, y) for x, y, d in zip(xs, ys, done) if d is keep]
        if pts:
            label = {"label": labels[0 if keep else 1]} if labels else {}
            ax.scatter(*zip(*pts), s=size, alpha=0.7, **style, **label)


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
        note = best.get("note", "none of the complete trials passed the sweep's acceptance rule")
        lines = [f"Sweep `{name}`: {s.get('trials')} trials, {s.get('errors', 0)} errors; **{note}**.", ""]
    else:
        lines += _table(["parameter", "best value"], [[k, f"`{v}`"] for k, v in sorted(best["config"].items())])
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
    if trials and all(launch_number(t.get("trial", "")) is not None for t in trials):
        trials.sort(key=lambda t: launch_number(t["trial"]))  # launch order (summaries kept folder order)
    if not trials:
        return lines + ["", "(this summary predates per-trial records: no sweep plots)"] + _provenance(s)
    keys = sorted({k for t in trials for k in t["params"]})
    better = max if mode == "max" else min
    # a trial ASHA stopped early has its metric over fewer steps (users, conversations): not ranked
    # against the complete ones, and drawn hollow
    full = max(t.get("steps", 0) for t in trials)
    complete = [t for t in trials if t.get("steps", 0) == full]
    stopped = [t for t in trials if t.get("steps", 0) != full]
    done = [t.get("steps", 0) == full for t in trials]
    ys = [t["value"] for t in trials]
    top = sorted(complete, key=lambda t: t["value"], reverse=mode == "max")[:5]
    varying = [k for k in keys if len({str(t["params"].get(k)) for t in trials}) > 1]
    gated = any("accepted" in t for t in trials)
    measured = [k for k in ("graph_share", "router_sd_max") if any(t.get(k) is not None for t in trials)]
    at = ", ".join(sorted({str(t.get("steps")) for t in stopped}))
    early = f"; {len(stopped)} stopped early by the scheduler (after {at} steps): not ranked, drawn hollow"
    head = f"Top {len(top)} of the {len(complete)} complete trials{early if stopped else ''}"
    lines += ["", head + " (parameters that vary across trials):", ""]
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
        _scatter(ax, xs, ys, done, 14)
        ax.scatter([bx], [best_t["value"]], marker="*", s=90, color="tab:red")
        ax.set_title(key, fontsize=8)
        ax.tick_params(labelsize=6)
    ax = flat[len(keys)]
    # the running best over complete trials only (a stopped trial's value is over fewer steps)
    run_best, cur = [], None
    for t in trials:
        if t.get("steps", 0) == full:
            cur = t["value"] if cur is None else better(cur, t["value"])
        run_best.append(cur if cur is not None else float("nan"))
    _scatter(ax, range(1, len(ys) + 1), ys, done, 12, ("trial", "stopped early"))
    ax.plot(range(1, len(ys) + 1), run_best, color="tab:red", lw=1.5, label="best so far")
    ax.set_title("search progress", fontsize=8)
    ax.set_xlabel("trial", fontsize=7)
    ax.legend(fontsize=6)
    for ax in flat[n:]:
        ax.axis("off")
    fig.suptitle(f"{name}: {metric} per trial ({len(trials)} trials)", fontsize=9)
    png = _save(fig, out / f"{name}_sweep.png")
    return lines + _provenance(s) + ["", f"![{name} sweep]({png.name})"]
