"""One results report from the runs' result files, and the Markdown pages it regenerates.

A run folder holds a job's or sweep's `summary.json`, or a benchmark's result file
(`RESULT_FILES`). `render_report` renders every run into a block, adds the MTA overview across
tasks, and writes report.md with the plots; `update_readme` replaces each block between
`<!-- report:NAME -->` and `<!-- /report:NAME -->` (NAME = the run folder's name) in a page, so
tables are never edited by hand (`tests/ray_jobs/test_report.py` checks docs/results.md against
`results/`). The command line is `ray_jobs.report`.
"""

from __future__ import annotations

import re
from pathlib import Path

from reporting.bench import (
    render_cluster_sim,
    render_query_recall,
    render_query_scale,
    render_recall,
    render_scaling,
    render_serve_http,
    render_serve_load,
    render_store_delete,
    render_store_processes,
    render_store_tenants,
    render_throughput,
)
from reporting.memgas import render_memgas
from reporting.mta import render_mta, render_mta_overview, render_selection
from reporting.sweeps import render_sweep
from suite.io import atomic_write_bytes, atomic_write_text, claim_run_dir, read_json

RESULT_FILES = (
    "summary.json",
    "scaling.json",
    "recall.json",
    "store_processes.json",
    "bank_throughput.json",
    "serve_load.json",
    "serve_http.json",
    "store_tenants.json",
    "store_delete.json",
    "cluster_sim.json",
    "query_scale.json",
    "query_recall.json",
    "selection.json",
)


def render_run(run: Path, out: Path) -> str:
    name = run.name
    lines: list[str] = []
    if (run / "summary.json").exists():
        s = read_json(run / "summary.json")
        if s.get("purpose") == "pipeline_check":  # the demo: say so where the terminal does
            lines += [
                "**Pipeline check** on a small sample: it shows every part working; it compares no methods "
                "(too few users or conversations to tell them apart). The comparisons are on the Results page.",
                "",
            ]
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
    if (run / "serve_http.json").exists():
        lines += render_serve_http(name, read_json(run / "serve_http.json")) + [""]
    if (run / "store_tenants.json").exists():
        lines += render_store_tenants(name, read_json(run / "store_tenants.json")) + [""]
    if (run / "store_delete.json").exists():
        lines += render_store_delete(name, read_json(run / "store_delete.json")) + [""]
    if (run / "cluster_sim.json").exists():
        lines += render_cluster_sim(name, read_json(run / "cluster_sim.json")) + [""]
    if (run / "query_scale.json").exists():
        lines += render_query_scale(name, read_json(run / "query_scale.json")) + [""]
    if (run / "query_recall.json").exists():
        lines += render_query_recall(name, read_json(run / "query_recall.json")) + [""]
    if (run / "selection.json").exists() and not (run / "summary.json").exists():  # a run's own is in its table
        lines += render_selection(name, read_json(run / "selection.json")) + [""]
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
