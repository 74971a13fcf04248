"""MTA end to end on one LaMP task: anchors → bank (Ray Train) → fusion → stacking → evaluation.

    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/mta_lamp2
    python -m ray_jobs.mta_pipeline --config ray_jobs/configs/mta_lamp2_cpu.yaml --out runs/x fusion.top_k=3

Writes OUT/summary.json ({"mta": {task: {...}}}), OUT/predictions/<task>/<method>.json (LaMP outputs
format), OUT/per_user.jsonl and OUT/select_user.jsonl (resume logs, keyed by a configuration hash)
and prints a table. The bank lives in bank_cache (default runs/banks/<task>-<hash>) and is shared by
every run that asks for the same bank. Rerunning resumes: finished anchors and users are not redone.
"""

from __future__ import annotations

from mta.recipe import MTAJobConfig, resummarize, run
from ray_jobs.cli import parse, report_run


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(
        MTAJobConfig,
        __doc__,
        argv,
        flags={"resummarize": "rewrite OUT/summary.json from the logged records (nothing recomputed per user)"},
    )
    if args.resummarize:
        resummarize(args.out)
    else:
        run(cfg, args.out)
    report_run(args.out)


if __name__ == "__main__":
    main()
