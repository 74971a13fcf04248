"""Launcher of the sharded memory service (`serving.memory_service`): MemGAS's durable store
behind mem0's HTTP paths, one Ray Serve deployment (one replica, one SQLite file) per shard.

    python -m ray_jobs.serve_memory --config ray_jobs/configs/serve_memory.yaml
    python -m ray_jobs.serve_memory --config ray_jobs/configs/serve_memory.yaml shards=8 host=0.0.0.0   # needs a token

Starts a loopback-only local Ray (or joins RAY_ADDRESS) and Serve on `host:port`, and prints where
it listens once every shard is up. Binding anything but loopback needs a bearer token in the
environment variable `token_env`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from ray_jobs.cli import entry
from suite.config import ConfigError, describe, load_config
from suite.ray_local import LOOPBACK


def check_bind(cfg) -> None:
    """Beyond loopback only with a bearer token (checked before Ray or Serve start)."""
    if cfg.host not in (LOOPBACK, "localhost", "::1") and not os.environ.get(cfg.token_env):
        raise ConfigError(f"host={cfg.host}: set the bearer token in ${cfg.token_env} before binding beyond loopback")


def start(cfg, blocking: bool = True) -> None:
    from ray import serve

    from serving.memory_service import app_for
    from suite.ray_local import init_ray

    check_bind(cfg)
    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app_for(cfg), name="memories", route_prefix="/", blocking=False)
    print(
        f"[serve_memory] ready: http://{cfg.host}:{cfg.port}/v1/memories ({cfg.shards} shards in {cfg.dir})", flush=True
    )
    if blocking:
        done = threading.Event()
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, lambda *a: done.set())
        done.wait()
        serve.shutdown()


@entry
def main(argv: list[str] | None = None) -> None:
    from serving.memory_service import MemoryServiceConfig

    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override with key=value):\n" + "\n".join(describe(MemoryServiceConfig)),
    )
    ap.add_argument("--config", required=True)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(MemoryServiceConfig, a.config, a.overrides)
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    start(cfg)


if __name__ == "__main__":
    main()
