"""No secret leaves the process: a credential given on the command line, in a config or through the
environment never reaches a file of the run (W&B's own files included), a log, a record, a summary
or an error message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memgas.llm import HTTPChatLLM, LLMConfig, LLMError
from suite.redact import is_secret_name, redact_text
from tests.conftest import make_locomo

PW, KEY = "S3CRETPW9", "K3YVALUE7"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "text",
    [
        f"http://alice:{PW}@host/v1?api_key={KEY}",
        f"alice:{PW}@host/v1",  # no scheme
        f"https://host/v1#access_token={KEY}",  # fragment
        f"https://host/key/{KEY}/chat",  # path token after a secret-named segment
        f"https://host/v1/sk-{KEY}abcdef",  # key-shaped path token
        f"error connecting to http://h:80/v1?token={KEY}: refused",  # free text
        f"X-Api-Key: {KEY}",
    ],
)
def test_one_redaction_for_every_url_shape(text):
    out = redact_text(text)
    assert PW not in out and KEY not in out and "***" in out


def test_settings_are_not_mistaken_for_secrets():
    for s in (
        "eval.max_new_tokens=32",
        "keywords: a b",
        "http://127.0.0.1:8000/v1",
        "3b66fa6aa1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6",
    ):
        assert redact_text(s) == s
    assert not is_secret_name("max_new_tokens") and is_secret_name("access_token") and is_secret_name("api_key")


def _grep(folder: Path) -> list[str]:
    hits = []
    for p in folder.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            if PW.encode() in data or KEY.encode() in data:
                hits.append(str(p.relative_to(folder)))
    return hits


def test_argv_secret_reaches_no_file_of_an_offline_run(tmp_path):
    """The credential is on the command line (W&B records argv unless told not to), in a URL that
    a config error and config.json would show, and in the environment."""
    data = make_locomo(tmp_path / "locomo.json", n_sessions=6, n_questions=3)
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "SOME_TOKEN": KEY}
    cmd = [
        sys.executable,
        "-m",
        "ray_jobs.memgas_eval",
        "--quiet",
        "--config",
        "ray_jobs/configs/memgas_tiny.yaml",
        "--out",
        str(out),
        f"data={data}",
        "tracking.enabled=true",
        "tracking.mode=offline",
        f"llm.url=http://alice:{PW}@127.0.0.1:9/v1?api_key={KEY}",
    ]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert list(out.glob("wandb/offline-run-*/run-*.wandb")), "the W&B run file exists and was searched"
    assert _grep(out) == [] and PW not in r.stdout + r.stderr and KEY not in r.stdout + r.stderr
    # a URL without a scheme is refused; the error line shows it redacted
    bad = subprocess.run(
        cmd[:-1] + [f"llm.url=alice:{PW}@host/v1#token={KEY}"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Config error" in bad.stderr and PW not in bad.stderr and KEY not in bad.stderr


def test_transport_errors_never_carry_the_url_credentials():
    cfg = LLMConfig(backend="http", url=f"http://alice:{PW}@127.0.0.1:9/v1?api_key={KEY}", max_retries=0, timeout_s=2)
    with pytest.raises(LLMError) as e:
        HTTPChatLLM(cfg).complete("hi")
    assert PW not in str(e.value) and KEY not in str(e.value)
    assert KEY not in str(LLMError(f"conn failed for http://h/v1?api_key={KEY}"))


def test_aws_keys_in_the_environment_reach_no_file_of_a_local_sweep(tmp_path):
    """Ray Tune copies AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the driver's environment into
    each trial's runtime env, and Ray's runtime-env agent logs runtime envs, env_vars included, at
    INFO (found by the cluster simulation's secret search). A Tune trial on the suite's local Ray
    leaves the key in no file of the Ray session or the run. Mutation caught: dropping
    `RAY_LOGGER_LEVEL=warning` from `suite.ray_local.loopback_env` (the key lands in
    runtime_env_agent.log)."""
    from benchmarks.fake_s3 import files_holding

    secret = "aws-" + os.urandom(12).hex()
    code = (
        "import sys\n"
        "from suite.ray_local import init_ray\n"
        "ray = init_ray(num_cpus=1)\n"
        "from ray import tune\n"
        "def f(c): tune.report({'x': 1})\n"
        "tune.Tuner(f, run_config=tune.RunConfig(storage_path=sys.argv[1], verbose=0)).fit()\n"
        "print(ray._private.worker._global_node.get_session_dir_path())\n"
        "ray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_LOGGER_LEVEL")}
    env.update(AWS_ACCESS_KEY_ID="suite-test", AWS_SECRET_ACCESS_KEY=secret, WANDB_MODE="offline")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "st")], env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    session = Path(r.stdout.strip().splitlines()[-1])
    assert session.is_dir() and list(session.glob("logs/runtime_env_agent*.log"))
    assert files_holding(secret, session, tmp_path) == []
