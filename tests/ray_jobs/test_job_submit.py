"""`ray job submit` round trip: a head started on loopback (dashboard on 127.0.0.1, token auth on),
a smoke job submitted with a working dir, SUCCEEDED, its output checked, the head stopped.
The head runs under `ray start --block` in its own process group and is stopped by signalling that
group, never `ray stop` (which would stop every Ray on the machine)."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.fake_cluster import free_ports

BIN = Path(sys.executable).parent


@pytest.fixture
def head(tmp_path):
    gcs, dash, agent, agent_grpc, rt_env, metrics = free_ports(6)
    # the cluster token is a secret: it lives in the environment only (RAY_AUTH_TOKEN), never in a file we write
    env = {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }  # the head and its jobs use this venv
    tmp = Path("/tmp") / f"rjs{os.getpid()}"  # short: unix socket paths have a length limit
    proc = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_env}",
            f"--metrics-export-port={metrics}",
            "--num-cpus=1",
            f"--temp-dir={tmp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _ray(args, env, timeout=300):
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_job_submit_round_trip(head, tmp_path):
    address, env = head
    out = tmp_path / "smoke"
    runtime_env = json.dumps({"working_dir": ".", "excludes": [".venv", "runs", "wandb", ".git", "**/__pycache__"]})
    deadline = time.time() + 120
    while True:  # the dashboard's job agent needs a few seconds after `ray start`
        r = _ray(
            [
                "job",
                "submit",
                "--address",
                address,
                "--no-wait",
                "--runtime-env-json",
                runtime_env,
                "--",
                "python",
                "-m",
                "ray_jobs.smoke",
                "--out",
                str(out),
            ],
            env,
        )
        if r.returncode == 0 or time.time() > deadline:
            break
        time.sleep(3)
    assert r.returncode == 0, r.stderr[-2000:]
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr).group(0)
    status = ""
    while time.time() < deadline + 120:
        r = _ray(["job", "status", "--address", address, job_id], env)
        status = (r.stdout + r.stderr).lower()  # printed through the CLI's logger, in lower case
        if any(s in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    r = _ray(["job", "logs", "--address", address, job_id], env)
    logs = r.stdout + r.stderr
    assert "succeeded" in status, status + logs[-2000:]
    assert "SMOKE" in logs
    res = json.loads((out / "summary.json").read_text())
    assert res["smoke"] == "ok" and res["merge_error"] < 1e-9
    # without the token the Jobs API refuses
    wrong = {**env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    refused = _ray(["job", "list", "--address", address], wrong)
    assert refused.returncode != 0 and "authentication" in (refused.stdout + refused.stderr).lower()
