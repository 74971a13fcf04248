"""MemGAS retrieval (and optionally QA) on LoCoMo, LongMemEval or Long-MT-Bench+.

    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_locomo_cpu.yaml --out runs/memgas_locomo
    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_longmemeval_cpu.yaml --out runs/memgas_lme

    python -m ray_jobs.memgas_eval --config ray_jobs/configs/memgas_locomo_test.yaml --out runs/memgas_locomo_test \
        best_from=runs/sweep_memgas_locomo/best_config.yaml

Writes OUT/summary.json ({"memgas": {benchmark: {...}}}) with every baseline, `memgas_paper` (the
reference defaults), `memgas` (`best`, or the sweep's choice read from `best_from`), each ablation of
both, paired bootstrap intervals against `memgas`, per-category breakdowns and the split used;
OUT/per_question.jsonl (resume log keyed by a hash of the configuration and data file: a rerun skips
finished questions and never reuses records of another configuration). Prints a table.
"""

from __future__ import annotations

from memgas.recipe import MemGASJobConfig, run
from ray_jobs.cli import parse, report_run


def main(argv: list[str] | None = None) -> None:
    args, cfg = parse(MemGASJobConfig, __doc__, argv)
    run(cfg, args.out)
    report_run(args.out)


if __name__ == "__main__":
    main()
