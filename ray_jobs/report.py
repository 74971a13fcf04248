"""One results report from the runs' result files: Markdown tables and matplotlib plots (the
renderer is the `reporting` package; this is its command line).

    python -m ray_jobs.report runs/bench_lamp2 runs/memgas_locomo_test --out report/
    python -m ray_jobs.report results/* --out docs/report --readme docs/results.md --readme README.md
    python -m ray_jobs.report runs/bench_lamp3 --keep results/               # keep a run's results in git

`--readme PAGE` (repeatable) replaces each `<!-- report:NAME -->` block of PAGE with the rendered
Markdown; `--keep DIR` copies each run's result files to DIR/<run name>/.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from reporting.mta import render_mta_overview
from reporting.render import RESULT_FILES, render_report, render_run, update_readme

__all__ = ["main", "render_mta_overview", "render_report", "render_run"]


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
