"""A launcher run with --quiet: library logs and warnings land in OUT/run.log, the terminal keeps
the suite's own output and ends by saying where the run folder and its report are."""

import subprocess
import sys


def test_quiet_launcher_keeps_the_terminal_clean(lamp_root, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-W",
        "always",
        "-m",
        "ray_jobs.mta_pipeline",
        "--quiet",
        "--config",
        "ray_jobs/configs/mta_tiny.yaml",
        "--out",
        str(out),
        f"data.root={lamp_root}",
        f"bank_cache={tmp_path / 'banks'}",
        "eval.methods=[prior, base, fusion]",
        "data.max_eval_users=2",
        "data.select_users=0",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    terminal = p.stdout + p.stderr
    assert "Warning" not in terminal and "warnings.warn" not in terminal, terminal[-2000:]
    assert (out / "run.log").exists() and (out / "report" / "report.md").exists()
    tail = p.stdout.strip().splitlines()[-2:]
    assert tail[0].startswith(f"run folder: {out}") and tail[1] == f"report: {out / 'report' / 'report.md'}"
