"""The MTA per-user stage (fusion, stacking, baselines) as a Ray task: its worker is SIGKILLed after
two users; Ray re-executes the task, which resumes from per_user.jsonl, and the job finishes."""

from mta.recipe import MTAJobConfig, run
from suite.config import load_config
from suite.io import read_jsonl


def test_worker_killed_mid_stacking_the_job_finishes_from_the_resume_log(ray_local, lamp_root, tmp_path):
    marker = tmp_path / "killed"
    out = tmp_path / "run"

    cfg = load_config(
        MTAJobConfig,
        "ray_jobs/configs/mta_tiny.yaml",
        [
            f"data.root={lamp_root}",
            f"bank_cache={tmp_path / 'banks'}",
            "eval.backend=ray",
            "eval.cpus=1",
            "eval.max_retries=2",
            f"eval.fail_at={{after_users: 2, marker: {marker}}}",
        ],
    )
    summary = run(cfg, out)
    assert marker.exists()  # the worker really died after its second user
    res = summary["mta"]["LaMP_2"]
    assert res["n_users"] == 4 and "mta" in res["methods"]
    recs = read_jsonl(out / "per_user.jsonl")
    # each user once: the re-executed task skipped the two users logged before the kill
    assert len(recs) == 4 and len({r["user_id"] for r in recs}) == 4
