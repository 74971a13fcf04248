import os

from suite.tracking import Tracker, TrackingConfig, redact


def test_redact_drops_secret_keys_at_any_depth():
    cfg = {"llm": {"api_key_env": "X", "url": "u"}, "token": "t", "tracking": {"project": "p"}, "lr": 1e-4}
    assert redact(cfg) == {"llm": {"url": "u"}, "tracking": {"project": "p"}, "lr": 1e-4}


def test_offline_run_with_table_artifact_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    f = tmp_path / "a.txt"
    f.write_text("adapter")
    t = Tracker(TrackingConfig(mode="auto"), "unit", {"secret_token": "s3cr3t", "x": 1}, tmp_path, name="t")
    assert t.run is not None and t.run.settings.mode == "offline"
    t.log({"m": 1.0})
    t.table("anchors", ["user", "weights"], [["u1", "[0.5, 0.5]"]])
    t.artifact("bank", "model", f)
    t.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    blob = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    assert b"s3cr3t" not in blob
    assert Tracker(TrackingConfig(enabled=False), "unit", {}, tmp_path).run is None
    assert os.environ.get("WANDB_API_KEY") is None


def test_loss_curves_alongside_the_jobs_run(tmp_path, monkeypatch):
    """The bank's loss curves (rank 0 / local trainer) are a second run next to the job's, which
    stays open; every step's loss is logged under one global step."""
    from mta.bank_trainer import LossCurves

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    job = Tracker(TrackingConfig(mode="offline"), "job", {}, tmp_path / "job", name="job")
    curves = LossCurves({"mode": "offline", "project": "p"}, tmp_path / "bank", "bank-trainer-0", {"task": "LaMP_2"})
    curves.anchor("a", [3.0, 2.0, 1.0])
    curves.anchor("b", [2.5, 0.5], resumed_from=1)
    assert curves.step == 5 and [r[0] for r in curves.rows] == ["a", "b"]
    job.log({"still_open": 1.0})  # the job's run was not finished by the second one
    curves.finish()
    job.finish()
    run = next((tmp_path / "bank" / "wandb").glob("offline-run-*"))
    blob = b"".join(p.read_bytes() for p in run.rglob("*") if p.is_file())
    assert b"train/loss" in blob and b"anchors" in blob
    assert LossCurves(None, tmp_path, "x", {}).tracker is None
