"""Launcher of the serving app (`serving.app`): per-user MTA adapters behind OpenAI routes.

    python -m ray_jobs.serve --config ray_jobs/configs/serve_tiny.yaml --port 8011
    python -m ray_jobs.serve --config ray_jobs/configs/serve_lamp2_cpu.yaml --port 8000 host=0.0.0.0   # needs a token

Builds the bank when it is missing, writes the records of `record_users` (as `ray_jobs.adapt`
does) unless a record for the same bank exists, starts a loopback-only local Ray (or joins
RAY_ADDRESS) and Serve on `host:port`, and prints where it listens once the app is ready. Binding
anything but loopback needs a bearer token in the environment variable `token_env`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from ray_jobs.cli import check_bind, entry, serve_until_signalled
from suite.config import ConfigError, describe, load_config


def prepare(cfg) -> None:
    """The bank, and the start-up users' records (only what is missing)."""
    from mta.bank import Bank, bank_content_id
    from mta.recipe import adapt, bank_path_for, build_bank
    from mta.users import latest_record
    from suite.encoders import load_encoder

    job = cfg.job
    build_bank(job, Path(job.users_dir) / ".bank_runs", load_encoder(job.encoder), log=lambda *a: None)
    bank_id = bank_content_id(Bank(bank_path_for(job)).manifest)
    for u in cfg.record_users:
        rec = latest_record(job.users_dir, u)
        if rec is None or rec.bank_signature != bank_id:
            adapt(job, Path(job.users_dir) / ".adapters" / u, user_id=u)


def start(cfg, blocking: bool = True):
    """Serve `cfg` (ServeConfig) on cfg.host:cfg.port; returns once ready when not blocking."""
    from ray import serve

    from serving.app import app_for
    from suite.ray_local import init_ray

    check_bind(cfg.host, cfg.token_env)
    init_ray()
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app_for(cfg), name="mta_users", route_prefix="/", blocking=False)
    print(f"[serve] ready: http://{cfg.host}:{cfg.port}/v1  (model='{cfg.job.model.name}:<user_id>')", flush=True)
    if blocking:
        serve_until_signalled()


@entry
def main(argv: list[str] | None = None) -> None:
    from serving.composer import ServeConfig

    ap = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override with key=value):\n" + "\n".join(describe(ServeConfig)),
    )
    ap.add_argument("--config", required=True)
    ap.add_argument("--port", type=int, default=None)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    try:
        cfg = load_config(ServeConfig, a.config, a.overrides)
    except ConfigError as e:
        print(f"Config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if a.port is not None:
        cfg = replace(cfg, port=a.port)
    prepare(cfg)
    start(cfg)


if __name__ == "__main__":
    main()
