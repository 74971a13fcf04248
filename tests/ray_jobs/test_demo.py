"""The demo (`make demo`) on tiny components: its three faces run, it says "pipeline check" in the
terminal and in its report, and it compares no methods anywhere."""

import re
import subprocess
import sys

from tests.conftest import make_lamp2, make_locomo


def test_the_demo_shows_three_faces_and_compares_nothing(tmp_path):
    """Mutations caught: the MemGAS comparison table reaching the terminal or the report (a
    `diff vs` column, a verdict), the report not saying pipeline check, two users answered by
    one adapter (the demo says whether their answers differ, and the store face must forget, in
    search and on disk: a delete without the purging checkpoint leaves the words in the WAL)."""
    lamp = tmp_path / "lamp"
    make_lamp2(lamp, "train", n_users=8, n_items=6, seed=1, prefix="t")
    make_lamp2(lamp, "dev", n_users=4, n_items=4, seed=2, prefix="d")
    data = make_locomo(tmp_path / "locomo.json", n_sessions=8, n_questions=4)
    out = tmp_path / "demo"
    cmd = [
        sys.executable, "-m", "ray_jobs.demo", "--quiet", "--config", "ray_jobs/configs/demo.yaml", "--out", str(out),
        "serve.job.model.name=tiny", "serve.job.model.device=cpu", "serve.job.encoder=hashing",
        f"serve.job.data.root={lamp}", "serve.job.data.download=false", "serve.job.anchors.min_items=3",
        "serve.job.anchors.n_clusters=2", "serve.job.anchor_train.max_samples=4", "serve.job.anchor_train.epochs=1",
        "serve.job.bank.backend=local", f"serve.job.bank_cache={tmp_path / 'banks'}",
        f"serve.job.users_dir={tmp_path / 'users'}", "users=[d0, d1]", "max_tokens=4", "question=a film about robots",
        "memgas_config=ray_jobs/configs/memgas_tiny.yaml", f"memgas_overrides=[data={data}, ablations=false]",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    term = r.stdout
    assert "[demo 1/3]" in term and "[demo 2/3]" in term and "[demo 3/3]" in term
    assert "user d0 (record: fused + stacked LoRA):" in term and "user d1 (profile: fused on demand):" in term
    assert "pipeline check" in term.lower()
    assert not re.search(r"\b(better|worse)\b|diff vs|p_holm", term)  # no comparison in the terminal
    assert "Converting and de-quantizing" not in r.stderr + term
    report = (out / "report" / "report.md").read_text()
    assert "Pipeline check" in report and "diff vs" not in report and not re.search(r"\b(better|worse)\b", report)
    import json

    demo = json.loads((out / "summary.json").read_text())["demo"]
    assert demo["store"]["found_after_delete"] is False
    assert demo["store"]["files_with_deleted_words"] == []  # the demo's own file scan: forgotten on disk too
    assert set(demo["mta"]["answers"]) == {"d0", "d1"}
