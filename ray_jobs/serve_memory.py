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
import sys

from ray_jobs.cli import check_bind, entry, serve_until_signalled
from suite.config import ConfigError, describe, load_config


def start(cfg, blocking: bool = True) -> None:
    from ray import serve

    from serving.memory_service import app_for
    from suite.ray_local import init_ray

    check_bind(cfg.host, cfg.token_env)
    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app_for(cfg), name="memories", route_prefix="/", blocking=False)
    print(
        f"[serve_memory] ready: http://{cfg.host}:{cfg.port}/v1/memories ({cfg.shards} shards in {cfg.dir})", flush=True
    )
    if blocking:
        serve_until_signalled()


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
