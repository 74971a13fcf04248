"""Launcher of `mta.recipe` (the recipe holds the config, the stages and the report):

    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/mta_lamp2

`--help` prints the recipe's documentation and every config key.
"""

from __future__ import annotations

import mta.recipe as recipe
from mta.recipe import MTAJobConfig, resummarize, run
from ray_jobs.cli import entry, parse, report_run


@entry
def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(
        MTAJobConfig,
        recipe.__doc__,
        argv,
        flags={"resummarize": "rewrite OUT/summary.json from the logged records (nothing recomputed per user)"},
    )
    if args.resummarize:
        resummarize(args.out)
    else:
        run(cfg, args.out)
        if cfg.eval.stop_after == "select":  # no evaluated user, no summary: the choices are the output
            print(f"selection: {args.out}/selection.json (evaluate with eval.selection_from=that file)")
            return
    report_run(args.out)


if __name__ == "__main__":
    main()
