"""The one place that talks to W&B. Offline mode when no WANDB_API_KEY is set (sync later with
`wandb sync OUT/wandb/offline-run-*`); nothing waits on the network. Secrets never reach a config:
keys that look like credentials are dropped before logging."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from suite.config import opt
from suite.redact import is_secret_name, redact_config


@dataclass
class TrackingConfig:
    enabled: bool = opt(True, "log to W&B")
    project: str = opt("personalized-llm-suite", "W&B project")
    entity: str = opt("", "W&B entity (team); empty = default")
    group: str = opt("", "W&B group (sweep or job family); empty = job name")
    mode: Literal["auto", "online", "offline", "disabled"] = opt(
        "auto", "auto (online iff WANDB_API_KEY is set) | online | offline | disabled"
    )


def redact(obj: Any) -> Any:
    """Drop secret-named keys and strip credentials from every URL (suite.redact)."""
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in redact_config(obj).items() if not is_secret_name(k)}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


class Tracker:
    """A W&B run, or a no-op when tracking is disabled."""

    def __init__(
        self,
        cfg: TrackingConfig,
        job_type: str,
        config: dict,
        out_dir: str | Path,
        name: str | None = None,
        alongside: bool = False,
    ):
        """`alongside`: a second run in a process that already holds one (it is not finished)."""
        self.run = None
        if not cfg.enabled or cfg.mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            group=cfg.group or job_type,
            job_type=job_type,
            name=name,
            config=redact(config),
            dir=str(out_dir),
            mode=wandb_mode(cfg.mode),
            reinit="create_new" if alongside else "finish_previous",
            # no metadata capture: W&B would record the process arguments (an override may carry a
            # credential), the program, git remote, host and environment into the run file
            settings=wandb.Settings(
                console="off",
                x_disable_stats=True,
                x_disable_meta=True,
                x_disable_machine_info=True,
                disable_git=True,
                disable_code=True,
                save_code=False,
                x_save_requirements=False,
            ),
        )

    @property
    def dir(self) -> str | None:
        return self.run.dir if self.run else None

    def log(self, metrics: dict, step: int | None = None) -> None:
        if self.run:
            self.run.log(metrics, step=step)

    def summary(self, values: dict) -> None:
        if self.run:
            for k, v in values.items():
                self.run.summary[k] = v

    def table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run:
            import wandb

            self.run.log({key: wandb.Table(columns=columns, data=rows)})

    def artifact(self, name: str, kind: str, path: str | Path, metadata: dict | None = None) -> None:
        if self.run:
            import wandb

            art = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", name), type=kind, metadata=redact(metadata or {}))
            (art.add_dir if Path(path).is_dir() else art.add_file)(str(path))
            self.run.log_artifact(art)

    def image(self, key: str, path: str | Path) -> None:
        if self.run:
            import wandb

            self.run.log({key: wandb.Image(str(path))})

    def finish(self) -> None:
        if self.run:
            self.run.finish()
            self.run = None
