"""A fake multi-node autoscaling Ray cluster on this machine (issue #33), its configuration derived
from `cluster.yaml` by `benchmarks/cluster_sim.derive`.

Ray's fake multi-node provider (`FakeMultiNodeProvider`, the one behind
`ray.cluster_utils.AutoscalingCluster`) launches each "node" the autoscaler asks for as another
raylet on this machine, with the resources its node type declares (fake GPUs are resources only).
We do not use `AutoscalingCluster` itself:
- its `start` and `shutdown` run `ray stop --force`, which stops every Ray on the machine (another
  user's job included);
- it reads the provider's defaults from `fake_multi_node/example.yaml`, which the Ray 2.60 wheel does
  not ship. The provider is named as an `external` provider module instead (same class).

So the head runs under `ray start --head --block` in its own session, on loopback
(`--node-ip-address=127.0.0.1`, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` for every node the autoscaler
starts), with token auth (`RAY_AUTH_MODE=token`, the token in the environment only), and every
process of the cluster carries a marker variable: `stop()` ends exactly those processes and checks
that none is left.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psutil

BIN = Path(sys.executable).parent
PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
MARKER = "SUITE_FAKE_CLUSTER_ID"  # set on the head; every node and worker process inherits it
# the type the fake provider tags its head with: the config must use it, or the autoscaler, not finding the
# running head's type, launches a "head" worker whose shutdown deletes the working dir all nodes share
HEAD_TYPE = "ray.head.default"
NODE_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"  # the fake provider names each node's processes with it


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def kill_all(procs: list[psutil.Process], timeout_s: float = 15) -> int:
    """SIGKILL every process (those already gone are skipped), wait for them; how many there were."""
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=timeout_s)
    return len(procs)


def autoscaler_config(derived: dict, gcs_address: str, idle_timeout_minutes: float | None = None) -> dict:
    """The autoscaler's cluster config for the fake provider: `derived`'s node types and scaling
    settings (`idle_timeout_minutes` may be shortened so that a simulation sees nodes released)."""
    types = {
        HEAD_TYPE: {"resources": dict(derived["head_resources"]), "node_config": {}, "max_workers": 0},
        **{k: dict(v) for k, v in derived["worker_node_types"].items()},
    }
    cfg = derived["config"]
    return {
        "cluster_name": "suite-fake-cluster",
        "max_workers": cfg["max_workers"],
        "upscaling_speed": cfg["upscaling_speed"],
        "idle_timeout_minutes": cfg["idle_timeout_minutes"] if idle_timeout_minutes is None else idle_timeout_minutes,
        "provider": {
            "type": "external",
            "module": PROVIDER,
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{k: [] for k in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
    }


class FakeCluster:
    """Start with `start()`, stop with `stop()` (or use as a context manager). `env` is what a job
    submitter needs (address of the dashboard, the token in the environment)."""

    def __init__(self, derived: dict, idle_timeout_minutes: float | None = None, log_dir: str | Path | None = None):
        self.derived = derived
        self.idle = idle_timeout_minutes
        self.id = uuid.uuid4().hex[:12]
        self.tmp = Path(tempfile.mkdtemp(prefix="rsim", dir="/tmp"))  # short: unix socket paths are limited
        self.log_dir = Path(log_dir) if log_dir else self.tmp
        self.proc: subprocess.Popen | None = None
        gcs, dash, agent, agent_grpc, rt_env, metrics = free_ports(6)
        self.gcs, self.dash = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
        self._ports = (gcs, dash, agent, agent_grpc, rt_env, metrics)
        self.env = {
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every node binds loopback
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_TRAIN_V2_ENABLED": "1",
            "RAY_DEDUP_LOGS": "0",  # every worker's lines as they are: restarts are counted from them
            MARKER: self.id,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        if derived.get("auth_mode") == "token":  # as cluster.yaml: token auth on every node and driver
            self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
        if derived.get("logger_level"):  # as cluster.yaml's containers: no env_vars (secrets) in Ray's logs
            self.env["RAY_LOGGER_LEVEL"] = derived["logger_level"]
        self.env.pop("RAY_ADDRESS", None)

    def __enter__(self) -> FakeCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout_s: float = 120) -> None:
        gcs, dash, agent, agent_grpc, rt_env, metrics = self._ports
        cfg_path = self.tmp / "autoscaler.json"
        cfg_path.write_text(json.dumps(autoscaler_config(self.derived, self.gcs, self.idle)))
        head = self.derived["head_resources"]
        cmd = [
            str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
            f"--num-cpus={int(head.get('CPU', 0))}", f"--num-gpus={int(head.get('GPU', 0))}",
            f"--temp-dir={self.tmp}", f"--autoscaling-config={cfg_path}",
        ]  # fmt: skip
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / "head.log", "ab")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline:  # the Jobs API answers once the dashboard is up
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: see {self.log_dir / 'head.log'}")
            try:
                self.get("/api/version")
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"the fake cluster's dashboard did not answer within {timeout_s:.0f} s")

    def get(self, path: str) -> dict:
        req = urllib.request.Request(self.dash + path)
        if self.env.get("RAY_AUTH_TOKEN"):
            req.add_header("Authorization", "Bearer " + self.env["RAY_AUTH_TOKEN"])
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def nodes(self) -> list[dict]:
        """The alive nodes: {"node_id", "node_type", "resources", "is_head"}, from the dashboard's
        state API (over HTTP with the token: the Python client reads its auth mode once per process)."""
        got = self.get("/api/v0/nodes?limit=1000&detail=1")["data"]["result"]["result"]
        return [
            {
                "node_id": n["node_id"],
                "node_type": (n.get("labels") or {}).get("ray.io/node-group") or ("head" if n["is_head_node"] else "?"),
                "resources": dict(n.get("resources_total") or {}),
                "is_head": bool(n["is_head_node"]),
            }
            for n in got
            if n.get("state") == "ALIVE"
        ]

    def processes(self, node_id: str | None = None, cmd: str | None = None) -> list[psutil.Process]:
        """This cluster's processes (every one carries the marker), or one fake node's; with `cmd`,
        those whose command line contains it (a process that ends meanwhile is skipped)."""
        out = []
        for p in psutil.process_iter():
            try:
                env = p.environ()
                if env.get(MARKER) != self.id or (node_id is not None and env.get(NODE_ENV) != node_id):
                    continue
                if cmd is None or cmd in " ".join(p.cmdline()):  # read only for this cluster's processes
                    out.append(p)
            except (psutil.Error, OSError):
                continue
        return out

    def kill_node(self, node_id: str) -> int:
        """A node dies as a machine does: every process of that fake node is killed at once (SIGKILL),
        raylet and workers alike. Returns how many processes were killed."""
        procs = self.processes(node_id)
        if not procs:
            raise LookupError(f"no process of node {node_id} found")
        return kill_all(procs)

    def submit(self, entrypoint: list[str], runtime_env: dict, cwd: str | Path = ".") -> str:
        """`ray job submit --no-wait` to the dashboard, as a user would; returns the job id."""
        import re

        deadline = time.time() + 120
        while True:  # the job agent needs a few seconds after the dashboard answers
            r = subprocess.run(
                [str(BIN / "ray"), "job", "submit", "--address", self.dash, "--no-wait",
                 "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
                env=self.env, capture_output=True, text=True, timeout=300, cwd=cwd,
            )  # fmt: skip
            m = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr)
            if r.returncode == 0 and m:
                return m.group(0)
            if time.time() > deadline:
                raise RuntimeError(f"ray job submit failed: {(r.stdout + r.stderr)[-2000:]}")
            time.sleep(3)

    def job(self, job_id: str) -> dict:
        return self.get(f"/api/jobs/{job_id}")

    def wait_job(self, job_id: str, timeout_s: float, poll=None) -> dict:
        """Wait until the job ends (SUCCEEDED, FAILED, STOPPED); `poll()` runs every second meanwhile."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            j = self.job(job_id)
            if j.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
                return j
            if poll is not None:
                poll()
            time.sleep(1)
        raise TimeoutError(f"job {job_id} did not end within {timeout_s:.0f} s")

    def logs(self, job_id: str) -> str:
        return self.get(f"/api/jobs/{job_id}/logs").get("logs", "")

    def stop(self) -> dict:
        """End every process of this cluster (the head's session, then any marked process left),
        remove its temp folder, and say what was found: {"killed", "left"} (left must be 0)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        rest = kill_all(self.processes())
        left = self.processes()
        import shutil

        shutil.rmtree(self.tmp, ignore_errors=True)
        return {"killed_after_head": rest, "left": len(left), "temp_left": self.tmp.exists()}
