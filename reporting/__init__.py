"""The report renderer: every summary the suite writes flows into Markdown tables and plots here
(library code: the jobs room keeps only the command line, `ray_jobs.report`).

    common   formatting, verdicts as stated, provenance lines, tables, figures
    mta      an MTA task's table and the overview across tasks
    memgas   a MemGAS benchmark's table, attribution, router weights, curves
    sweeps   a sweep's best, importances and panels
    bench    the benchmarks' tables and curves
    render   one report from many runs, and the pages it regenerates
"""
