"""Launcher of `memgas.recipe` (the recipe holds the config, the stages and the report):

    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_locomo_cpu.yaml --out runs/memgas_locomo

`--help` prints the recipe's documentation and every config key.
"""

from __future__ import annotations

import memgas.recipe as recipe
from memgas.recipe import MemGASJobConfig, run
from ray_jobs.cli import entry, parse, report_run


@entry
def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(MemGASJobConfig, recipe.__doc__, argv)
    run(cfg, args.out)
    report_run(args.out)


if __name__ == "__main__":
    main()
