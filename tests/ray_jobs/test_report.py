"""The report renders tables and plots from summaries, and the Results page's tables
(docs/results.md) are exactly what the committed summaries in results/ render (regenerate with the
command at the top of that page)."""

import json
import re
from pathlib import Path

import pytest

from ray_jobs.report import main as report
from ray_jobs.report import render_mta_overview, render_report, render_run

ROOT = Path(__file__).resolve().parent.parent.parent


def _mta_summary():
    vs = {
        "diff": -0.1,
        "ci95": [-0.2, -0.01],
        "p": 0.01,
        "p_holm": 0.02,
        "verdict": "worse",
        "verdict_uncalibrated": "n.s.",
        "n": 10,
    }
    return {
        "mta": {
            "LaMP_2": {
                "n_users": 10,
                "n_queries": 10,
                "inference": "label_scoring",
                "calibration": "base_content_free",
                "selection": {
                    "oppu": {
                        "candidates": [{"lr": 1e-4}, {"lr": 1e-3}],
                        "scores": [0.2, 0.3],
                        "choice": {"lr": 1e-3},
                        "users": 8,
                    }
                },
                "tuning_budget": {"oppu": 2, "mta (stack)": 2},
                "rel_update": {"oppu": 2e-3, "stack": 1e-4},
                "mta_differs_from_fusion": 0.25,
                "provenance": {"commit": "0123456789abcdef", "dirty": False, "code_version": "c0de"},
                "split": {"eval": "dev"},
                "methods": {"oppu": {"accuracy": 0.1, "f1": 0.05}, "mta": {"accuracy": 0.2, "f1": 0.1}},
                "vs_mta": {"oppu": vs},
                "bytes_per_user": {"oppu": 1000.0, "mta": 125.0, "bank_amortised": 50.0},
                "adapt_s_per_user": {"oppu": 3.0, "mta": 1.0},
                "bank": {"anchors": 2, "bytes": 500},
                "anchors": [
                    {"id": "a", "n_items": 5, "steps": 3, "loss_first": 2.0, "loss_last": 1.0, "rel_update": 1.2e-3}
                ],
            }
        }
    }


def _memgas_summary():
    ks = [1, 5, 10]
    m = lambda v: {f"recall_all@{k}": v * k / 10 for k in ks} | {"recall_any@5": v, "ndcg_any@5": v}  # noqa: E731
    return {
        "memgas": {
            "locomo": {
                "n_questions": 20,
                "data": {"split": {"name": "test"}},
                "methods": {"bm25_session": m(0.5), "memgas": m(0.6)},
                "vs_reference": {
                    "reference": "memgas",
                    "methods": {
                        "bm25_session": {
                            "diff": -0.05,
                            "ci95": [-0.1, 0.02],
                            "p": 0.4,
                            "p_holm": 0.8,
                            "verdict": "n.s.",
                            "n": 20,
                        }
                    },
                },
                "by_category": {"1": {"n": 12, "memgas": {"recall_all@5": 0.4}, "bm25_session": {"recall_all@5": 0.3}}},
                "query_ms_p50": 8.0,
                "query_ms_p95": 9.0,
                "router_weights": {
                    "memgas": {
                        "questions": 20,
                        "mean": {"session": 0.6, "turn": 0.4},
                        "sd": {"session": 0.1, "turn": 0.1},
                        "top_share": {"session": 0.75, "turn": 0.25},
                    }
                },
            }
        }
    }


def _sweep_summary():
    trials = [
        {"params": {"best.temperature": t, "best.router": r, "best.lexical": "[]"}, "value": v, "error": False}
        for t, r, v in ((0.1, "corrected", 0.5), (0.5, "uniform", 0.7), (0.9, "corrected", 0.6))
    ] + [
        {
            "params": {"best.temperature": 0.2, "best.router": "uniform", "best.lexical": "[]"},
            "value": None,
            "error": True,
        }
    ]
    best = {"config": trials[1]["params"], "value": 0.7}
    return {"trials": 4, "metric": "recall_all@5", "mode": "max", "best": best, "errors": 1, "all_trials": trials}


def _scaling():
    def row(n):
        return {
            "sessions": n, "nodes": 15 * n, "edges": 100 * n, "ingest_s_total": 0.05 * n,
            "ingest_s_per_session": 0.01 * (1 + n / 10000), "ingest_sessions_per_s_recent": 20.0,
            "query_ms_p50": {"memgas": n / 100, "memgas_paper": n / 300},
            "query_ms_p95": {"memgas": n / 50, "memgas_paper": n / 150},
            "disk_bytes": 70000 * n, "disk_bytes_per_session": 70000.0, "add_write_bytes_median": 190000.0,
            "add_write_bytes_max": 2000000, "add_write_share_max": 2000000 / (70000 * n), "peak_rss_mb": 500.0 + n / 10,
        }  # fmt: skip

    rows = [row(n) for n in (100, 1000, 10000, 100000)]
    return {"encoder": "hashing", "queries": 30, "rows": rows, "config": {"sessions": 100000}}


def test_sweep_and_benchmark_results_render_tables_and_plots(tmp_path):
    files = {"sw": ("summary.json", _sweep_summary()), "sc": ("scaling.json", _scaling())}
    for name, (f, s) in files.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / f).write_text(json.dumps(s))
    report([str(tmp_path / "sw"), str(tmp_path / "sc"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    # top trials best first; the errored trial is left out; only the parameters that vary are shown
    assert "| rank | recall_all@5 | best.router | best.temperature |" in md
    assert "| 1 | 0.700 | `uniform` | `0.5` |" in md and "| 3 | 0.500 | `corrected` | `0.1` |" in md
    assert (
        "| 1,000 | 15,000 | 100,000 | 11.0 | 10.0 / 20.0 | 3.3 / 6.7 | 70,000 | 190,000 / 2,000,000 (2.857%) | 600 |"
        in md
    )
    # each target stated as met or missed, from the numbers
    assert "ingest per session at 100,000 within 2x of that at 1,000: 10.00x, missed" in md
    assert "query p50 of `memgas` under 30 ms at 100,000 sessions: 1000.0 ms, missed" in md
    assert "writes under 1% of its bytes: max 0.286%, met" in md and "Not finished" not in md
    # a run stopped early says so, and states no size target it did not reach
    part = _scaling()
    part["rows"] = part["rows"][:2]
    (tmp_path / "sc" / "scaling.json").write_text(json.dumps(part))
    md2 = render_run(tmp_path / "sc", tmp_path / "rep")
    assert "**Not finished**: stopped at 1,000 of 100,000 sessions" in md2 and "Targets" not in md2
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == ["sc_scaling.png", "sw_sweep.png"]
    assert all((tmp_path / "rep" / p).stat().st_size > 5000 for p in pngs)
    # an old summary without per-trial records still renders its best configuration
    old = {k: v for k, v in _sweep_summary().items() if k != "all_trials"}
    (tmp_path / "sw" / "summary.json").write_text(json.dumps(old))
    assert "no sweep plots" in render_run(tmp_path / "sw", tmp_path / "rep2")


def test_a_trial_stopped_early_is_not_ranked_above_the_complete_ones(tmp_path):
    """ASHA stops a trial after a few users; its metric over those users is not comparable with a
    complete trial's over all of them. The top table ranks complete trials only and says how many
    were stopped; the provenance line names the bank. Catches: ranking every trial by its last value
    (the stopped 0.9 would be rank 1); a provenance line without the bank's id."""
    s = _sweep_summary()
    for t in s["all_trials"]:
        t["steps"] = 32
    s["all_trials"].append(
        {"params": {"best.temperature": 0.3, "best.router": "uniform", "best.lexical": "[]"}, "value": 0.9,
         "error": False, "steps": 8}
    )  # fmt: skip
    s["provenance"] = {"commit": "a" * 40, "code_version": "c0de", "bank": {"id": "b4nk1d", "path": "/x"}}
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "summary.json").write_text(json.dumps(s))
    (tmp_path / "rep").mkdir()
    md = render_run(tmp_path / "sw", tmp_path / "rep")
    assert "Top 3 of the 3 complete trials; 1 stopped early by the scheduler (after 8 steps)" in md
    assert "| 1 | 0.700 | `uniform` | `0.5` |" in md and "0.900" not in md
    assert "method code `c0de`; bank `b4nk1d`._" in md  # the bank the trials adapted from


def test_renders_tables_and_plots_from_fixture_summaries(tmp_path):
    for name, s in (("mta_run", _mta_summary()), ("mem_run", _memgas_summary())):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(s))
    report([str(tmp_path / "mta_run"), str(tmp_path / "mem_run"), "--out", str(tmp_path / "rep")])
    md = (tmp_path / "rep" / "report.md").read_text()
    # worse under the primary calibration only: n.s., marked as an order one calibration alone supports
    assert "| OPPU (own LoRA) | 0.100 | 0.050 | -0.100 [-0.200, -0.010] p=0.02 n.s.* | 1,000 | 3.00 |" in md
    assert "Without calibration: oppu n.s." in md
    assert "| oppu | 8 | `{'lr': 0.0001}` → 0.200; `{'lr': 0.001}` → 0.300 | `{'lr': 0.001}` |" in md
    assert "oppu 2.00e-03, stack 1.00e-04; MTA predictions that differ from fusion: 25.0%" in md
    assert "_Made at commit `0123456789`, method code `c0de`._" in md
    assert "| bm25_session | 0.250 | 0.500 | 0.500 | 0.500 | -0.050 [-0.100, +0.020] p=0.8 n.s. |" in md
    assert "_Provenance: not recorded" in md  # the MemGAS fixture has none
    assert "| memgas | 0.60 ± 0.10 (75%) | 0.40 ± 0.10 (25%) |" in md
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert pngs == [
        "mem_run_locomo_by_category.png",
        "mem_run_locomo_recall_at_k.png",
        "mta_run_LaMP_2_accuracy_vs_bytes.png",
    ]
    assert all((tmp_path / "rep" / p).stat().st_size > 5000 for p in pngs)


def test_readme_blocks_are_replaced_and_nothing_else(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(_mta_summary()))
    readme = tmp_path / "README.md"
    readme.write_text("intro 0.999\n<!-- report:run -->\nstale 0.123\n<!-- /report:run -->\noutro\n")
    report([str(tmp_path / "run"), "--out", str(tmp_path / "report"), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro 0.999\n<!-- report:run -->\n") and text.endswith("<!-- /report:run -->\noutro\n")
    assert "stale" not in text and "(report/run_LaMP_2_accuracy_vs_bytes.png)" in text


RESULTS = sorted(p.name for p in (ROOT / "results").iterdir() if p.is_dir()) if (ROOT / "results").is_dir() else []


@pytest.mark.parametrize("block", RESULTS)
def test_readme_tables_match_the_committed_summaries(block, tmp_path):
    readme = (ROOT / "docs" / "results.md").read_text()
    m = re.search(rf"<!-- report:{re.escape(block)} -->\n(.*?)<!-- /report:{re.escape(block)} -->", readme, re.S)
    assert m, f"docs/results.md has no report block for results/{block}"
    rendered = render_run(ROOT / "results" / block, tmp_path)
    rendered = re.sub(r"!\[([^\]]*)\]\(([^)/]+\.png)\)", r"![\1](report/\2)", rendered)
    assert m.group(1) == rendered, "docs/results.md drifted: rerun the report command at the top of that page"


def test_readme_overview_matches_the_committed_mta_summaries(tmp_path):
    runs = [ROOT / "results" / b for b in RESULTS]
    if not any((r / "summary.json").exists() and "mta" in json.loads((r / "summary.json").read_text()) for r in runs):
        pytest.skip("no committed MTA results")
    readme = (ROOT / "docs" / "results.md").read_text()
    m = re.search(r"<!-- report:mta_overview -->\n(.*?)<!-- /report:mta_overview -->", readme, re.S)
    assert m, "docs/results.md has no report block for the MTA overview"
    assert m.group(1) == render_report(runs, tmp_path / "rep")["blocks"]["mta_overview"]


def test_overview_names_the_rows_the_test_places_below_and_above_mta(tmp_path):
    """Only orders that hold under both calibrations are named. Mutation caught: the overview
    reading `verdict` alone (oppu's "worse" holds only calibrated and would be named below MTA)."""
    r = _mta_summary()["mta"]["LaMP_2"]
    r["methods"]["rag"] = {"accuracy": 0.3, "f1": 0.2}
    r["vs_mta"]["rag"] = dict(r["vs_mta"]["oppu"], diff=0.1, verdict="better", verdict_uncalibrated="better")
    r["vs_mta"]["base"] = dict(r["vs_mta"]["oppu"], verdict="worse", verdict_uncalibrated="worse")
    r["vs_mta"]["random"] = dict(r["vs_mta"]["oppu"], verdict="n.s.", verdict_uncalibrated="n.s.")
    r["ratios"] = {"bytes_mta_over_oppu": 0.125, "adapt_s_mta_over_oppu": 0.25}
    lines = render_mta_overview({"LaMP_2": r})
    row = next(x for x in lines if x.startswith("| LaMP_2"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # oppu: worse calibrated, n.s. uncalibrated → n.s.
    assert cells[:6] == ["LaMP_2", "10 (dev)", "accuracy", "0.200", "0.100", "-0.100 n.s."]
    assert cells[6:9] == ["base", "rag", "—"]  # oppu and random are n.s.: named on neither side
    assert cells[9:] == ["0.125", "0.250", "1 of 1"]
    # mutation caught: the footer listing method codes as a set, apart from the tasks they made
    assert "LaMP_2 `" in lines[-1] and "(method code `c0de`)" in lines[-1]
    for name in ("a", "b"):  # two runs of one task would make one row ambiguous: refused
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(_mta_summary()))
    with pytest.raises(SystemExit, match="a second run of LaMP_2"):
        render_report([tmp_path / "a", tmp_path / "b"], tmp_path / "rep")


def test_a_run_without_an_mta_row_renders_without_an_overview(tmp_path):
    s = _mta_summary()
    r = s["mta"]["LaMP_2"]
    r["methods"].pop("mta")  # e.g. eval.methods=[prior, base, fusion]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(s))
    blocks = render_report([tmp_path / "run"], tmp_path / "rep")["blocks"]
    assert "run" in blocks and "mta_overview" not in blocks


def test_keep_never_follows_a_symlink_and_a_foreign_out_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(_mta_summary()))
    precious = tmp_path / "precious.json"
    precious.write_text("keep me")
    keep = tmp_path / "results"
    (keep / "run").mkdir(parents=True)
    (keep / "run" / "summary.json").symlink_to(precious)
    report([str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--keep", str(keep)])
    assert precious.read_text() == "keep me" and not (keep / "run" / "summary.json").is_symlink()
    foreign = tmp_path / "repo"
    foreign.mkdir()
    (foreign / "report.md").write_text("the user's own")
    with pytest.raises(Exception, match="holds files this suite did not write"):
        report([str(tmp_path / "run"), "--out", str(foreign)])
    assert (foreign / "report.md").read_text() == "the user's own"


def test_readme_must_be_a_regular_file_and_is_untouched_without_blocks(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(_mta_summary()))
    with pytest.raises(SystemExit, match="must name a regular file"):
        report([str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--readme", str(tmp_path)])
    readme = tmp_path / "README.md"
    readme.write_text("no blocks here\n")
    before = readme.stat().st_ino
    report([str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--readme", str(readme)])
    assert readme.stat().st_ino == before and readme.read_text() == "no blocks here\n"


def test_a_method_name_holding_a_marker_never_breaks_the_readme(tmp_path):
    s = _mta_summary()
    s["mta"]["LaMP_2"]["methods"]["evil <!-- /report:run --> | x"] = {"accuracy": 0.5, "f1": 0.5}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(s))
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- report:run -->\nold\n<!-- /report:run -->\nb\n")
    for _ in range(2):
        report([str(tmp_path / "run"), "--out", str(tmp_path / "rep"), "--readme", str(readme)])
    text = readme.read_text()
    assert text.count("<!-- /report:run -->") == 1 and text.endswith("<!-- /report:run -->\nb\n")
    assert "evil &lt;!-- /report:run --&gt; \\| x" in text


def test_the_serving_benchmark_renders_a_table_and_a_plot(tmp_path):
    row = lambda mode, users, tps: {  # noqa: E731
        "mode": mode, "users": users, "requests": 8, "p50_ms": 10.0, "p95_ms": 20.0, "tokens_per_s": tps,
        "cold_p50_ms": 5.0 if mode != "base" else None, "cold_p95_ms": 9.0 if mode != "base" else None,
        "hit_rate": 0.5 if mode != "base" else None, "compose_share": 0.01, "adapters_held": 2, "rss_mb": 600.0,
    }  # fmt: skip
    res = {
        "model": "tiny", "requests_per_level": 8, "concurrency": 2, "max_tokens": 4, "cache_size": 2,
        "note": "in process", "provenance": {"commit": "abcdef0123456"},
        "rows": [row(m, u, 100.0 * u) for u in (1, 8) for m in ("base", "mta_mixed", "mta_switch")],
    }  # fmt: skip
    md = _report_of(tmp_path, "serve_load.json", res, run="sv")
    assert "| mta_mixed | 8 | 10.0 | 20.0 | 800.0 | 5.0 / 9.0 | 0.50 | 0.010 | 2 | 600 |" in md
    assert (tmp_path / "rep" / "sv_serve_load.png").stat().st_size > 5000


def test_serving_targets_are_read_from_the_engine_rows():
    """Issue #31's targets from one run's rows: the throughput ratio must hold against both base
    rows, the cold start counts only misses that encoded nothing, RSS growth from 1 to 1,000 users.
    Mutations caught: the ratio taken against the engine's own base row only (0.95x called met while
    the plain base model is 1.2x faster); the RSS growth compared the wrong way."""
    from reporting.bench import serve_targets

    def row(mode, users, tps, rss=1000.0, cached=None):
        return {"mode": mode, "users": users, "tokens_per_s": tps, "rss_mb": rss, "cold_cached_p95_ms": cached}

    rows = [
        row("base", 8, 60.0),
        row("basis_iter_base", 8, 50.0),
        row("basis_iter", 8, 47.5, cached=12.0),
        row("basis_iter", 1, 40.0, rss=1000.0, cached=5.0),
        row("basis_iter", 1000, 40.0, rss=1150.0, cached=25.0),
    ]
    text = "\n".join(serve_targets(rows))
    assert "8 users: 0.79x the base model's tokens/s (0.95x" in text and "target 0.9x: missed" in text
    assert "p95 at most 25.0 ms" in text and "under 20 ms: missed" in text
    assert "+150 MB, target under 100 MB: missed" in text
    rows[0]["tokens_per_s"] = 50.0
    rows[-1]["rss_mb"] = 1050.0
    text = "\n".join(serve_targets(rows))
    assert "target 0.9x: met" in text and "+50 MB, target under 100 MB: met" in text
    # another engine's level between the 1-user and the 1,000-user rows: the growth is not the engine's
    rows.insert(4, row("mta_mixed", 64, 20.0, rss=1500.0))
    text = "\n".join(serve_targets(rows))
    assert "not measured in isolation" in text and "mta_mixed ran between" in text


def _report_of(tmp_path, filename: str, res: dict, run: str = "run") -> str:
    """report.md of one run folder holding `res` as `filename`."""
    (tmp_path / run).mkdir()
    (tmp_path / run / filename).write_text(json.dumps(res))
    report([str(tmp_path / run), "--out", str(tmp_path / "rep")])
    return (tmp_path / "rep" / "report.md").read_text()


def test_the_http_serving_benchmark_renders_its_rows_and_its_target(tmp_path):
    """`serve_http.json` is a result file of its own, and its 0.9x target is read per user count
    against the base model's row of the same count. Mutations caught: the file left out of
    RESULT_FILES (the run is refused as empty), the ratio taken against the 1-user base row (0.93x
    at 8 users called met when the 8-user base row makes it 0.5x)."""

    def row(mode, users, tps, cold=None):
        return {"mode": mode, "users": users, "requests": 8, "tokens_per_s": tps, "p50_ms": 100.0, "p95_ms": 150.0,
                "ttft_p50_ms": 20.0, "ttft_p95_ms": 30.0, "cold_ttft_p50_ms": cold, "cold_ttft_p95_ms": cold,
                "cold_n": 1 if cold else 0, "hit_rate": 0.5 if cold else None, "replica_rss_mb": 700.0}  # fmt: skip

    res = {
        "model": "tiny", "engine": "shared_basis", "requests_per_level": 8, "concurrency": 8, "max_tokens": 4,
        "cache_size": 4, "records": 2, "note": "over HTTP", "target_ratio": 0.9,
        "provenance": {"commit": "abcdef0123456"},
        "rows": [row("base", 1, 75.0), row("mta", 1, 70.0, 40.0), row("base", 8, 140.0), row("mta", 8, 70.0, 50.0),
                 row("base", 64, 100.0), row("mta", 64, 95.0, 60.0)],
    }  # fmt: skip
    md = _report_of(tmp_path, "serve_http.json", res)
    assert "| mta | 8 | 70.0 | 100 / 150 | 20.0 / 30.0 | 50.0 / 50.0 (1) | 0.50 | 700 |" in md
    assert "8 users: 0.50x the base model's tokens/s over the same route, target 0.9x: missed" in md
    assert "64 users: 0.95x the base model's tokens/s over the same route, target 0.9x: met" in md


def test_the_cluster_table_times_each_failure_against_its_own_job():
    """Each failure's time lost is its wall time minus the uninterrupted run of the same job: a
    node lost mid-sweep against the sweep, the bank's failures against the bank's `autoscale`.
    Mutation caught: timing every failure against `autoscale` (the sweep's would read -69 s)."""
    from reporting.bench import cluster_reference, render_cluster_sim

    names = ["autoscale", "node_kill", "driver_kill", "s3_node_kill", "sweep", "sweep_node_kill", "mta_eval",
             "mta_eval_node_kill"]  # fmt: skip
    assert [cluster_reference(n, names) for n in names if n.endswith("kill")] == [
        "autoscale", "autoscale", "autoscale", "sweep", "mta_eval"]  # fmt: skip
    sc = {n: {"jobs": [{"status": "SUCCEEDED"}], "wall_s": w, "max_worker_nodes": 1, "peak_rss_mb": 1,
              "events": [{"killed": "node", "t": 5.0}] if "kill" in n else []}
          for n, w in [("autoscale", 100.0), ("node_kill", 130.0), ("sweep", 30.0),
                       ("sweep_node_kill", 41.0)]}  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in render_cluster_sim("c", {
        "scenarios": sc, "idle_timeout_minutes": 0.25}) if line.startswith("| ") and "kill" in line}  # fmt: skip
    assert rows["node_kill"][6] == "+30" and rows["sweep_node_kill"][6] == "+11"


def test_a_selection_job_renders_its_choices_with_errors_and_flags(tmp_path):
    """A selection-only run (`eval.stop_after=select`) renders each method's candidates with their
    standard errors, the choice and its margin, ⚠ on a margin under one SE and on no other.
    Mutation caught: selection.json left out of the result files (the folder is refused: "none of
    ... found"), or the flag mark dropped."""
    run = tmp_path / "mta_lamp2_select"
    run.mkdir()
    cand = [{"lr": 1e-3}, {"lr": 3e-3}]

    def rec(scores, flagged):
        return {
            "candidates": cand,
            "scores": scores,
            "se": [0.08, 0.09],
            "margin": abs(scores[1] - scores[0]),
            "margin_se": 0.05,
            "flagged": flagged,
            "choice": cand[1],
            "users": 32,
            "rel_update": [1e-4, 3e-4],
        }

    sel = {
        "lambda": 0.5,
        "selection": {
            "stack": rec([0.281, 0.500], False),
            "oppu": rec([0.406, 0.438], True),
            "mta_prior_lambda": {**rec([0.3, 0.2], False), "candidates": [1.0, 0.5], "choice": 0.5},
        },
        "budgets": {"stack": "4 candidates x 32 users"},
        "code_version": "170c571228722611",
        "fingerprint": {
            "data": {"task": "LaMP_2", "select_users": 32, "train_split": "train"},
            "train_sha": "ab" * 32,
            "bank": "cd" * 8,
        },
    }
    (run / "selection.json").write_text(json.dumps(sel))
    md = render_report([run], tmp_path / "rep")["blocks"]["mta_lamp2_select"]
    stack = next(line for line in md.splitlines() if line.startswith("| stack"))
    oppu = next(line for line in md.splitlines() if line.startswith("| oppu"))
    assert "0.281 ± 0.080" in stack and "0.500 ± 0.090" in stack and "⚠" not in stack
    assert oppu.rstrip(" |").endswith("⚠")
    assert "32 train users" in md and "λ = 0.5" in md and "`170c571228722611`" in md


def test_a_selection_stopped_midway_renders_what_it_finished_and_what_remains(tmp_path):
    """A selection.json with `in_progress` (a run stopped inside OPPU's grid) says that OPPU is not
    chosen yet, how many of its candidates finished and their scores, and states no λ while none is
    chosen (LaMP_5 has no λ; a file stopped inside the stack's grid holds only the default).
    Mutations caught (seen failing): `in_progress` not rendered (the block then reads as if the
    selection were complete); λ printed whether chosen or not."""
    run = tmp_path / "mta_lamp3_select"
    run.mkdir()
    grid = [{"lr": 1e-4, "epochs": 1}, {"lr": 1e-4, "epochs": 3}, {"lr": 1e-3, "epochs": 1}]
    sel = {
        "lambda": 1.0,
        "selection": {},
        "in_progress": {"oppu": {"0": {"candidate": grid[0], "scores": [3.0, 4.0]}}},
        "code_version": "cdbfe4a989d7e863",
        "fingerprint": {"data": {"task": "LaMP_3", "select_users": 32}, "eval": {"oppu_grid": grid}},
    }
    (run / "selection.json").write_text(json.dumps(sel))
    md = render_report([run], tmp_path / "rep")["blocks"]["mta_lamp3_select"]
    assert "oppu: not chosen yet** — 1 of 3 candidates finished" in md and "→ 3.500" in md
    assert "λ" not in md


def test_a_selection_stopped_between_two_methods_says_which_has_not_started(tmp_path):
    """A selection.json whose stack is chosen and whose OPPU has a budget but no finished candidate
    (stopped right after the stack) says OPPU has not started. Mutation caught (seen failing): only
    `in_progress` rendered, so the block reads as a complete selection without OPPU."""
    run = tmp_path / "mta_lamp5_select"
    run.mkdir()
    cand = [{"lr": 1e-3}, {"lr": 3e-3}]
    stack = {
        "candidates": cand,
        "scores": [0.30, 0.28],
        "se": [0.03, 0.03],
        "margin": 0.02,
        "margin_se": 0.01,
        "flagged": False,
        "choice": cand[0],
        "users": 32,
    }
    sel = {
        "lambda": 1.0,
        "selection": {"stack": stack},
        "budgets": {"oppu": 4, "mta (stack)": 2},
        "code_version": "cdbfe4a989d7e863",
        "fingerprint": {"data": {"task": "LaMP_5", "select_users": 32}, "eval": {"oppu_grid": [{}] * 4}},
    }
    (run / "selection.json").write_text(json.dumps(sel))
    md = render_report([run], tmp_path / "rep")["blocks"]["mta_lamp5_select"]
    assert "**oppu: not started** — 0 of 4 candidates finished" in md
    assert "stack: not started" not in md and "λ" not in md
