"""Library chatter to a log file, the terminal for the user: `to_file(run_dir)` sends Python
warnings and the loggers of Ray, transformers, DeepSpeed, W&B, sentence-transformers and friends to
RUN_DIR/run.log, and keeps Ray workers' output out of the terminal. What remains on the terminal is
the suite's own progress bars and tables."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

from suite.redact import redact_text

NOISY = (
    "ray",
    "transformers",
    "deepspeed",
    "DeepSpeed",
    "wandb",
    "sentence_transformers",
    "torch",
    "urllib3",
    "filelock",
    "httpx",
    "peft",
    "accelerate",
    "datasets",
    "py.warnings",
    "absl",
    "optuna",
    "huggingface_hub",
)
_handler: logging.Handler | None = None


class RedactingFormatter(logging.Formatter):
    """Every line written to run.log goes through `suite.redact.redact_text` (a library may log a
    URL with its credentials, e.g. an HTTP error)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def to_file(run_dir: str | Path) -> Path:
    """Route library logs and warnings to RUN_DIR/run.log (appended); returns its path."""
    global _handler
    path = Path(run_dir) / "run.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    _handler = logging.FileHandler(path, encoding="utf-8")
    _handler.setFormatter(RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    os.environ["SUITE_QUIET_LOG"] = str(path.resolve())
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("WANDB_SILENT", "true")
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    reapply()
    return path


def reapply() -> None:
    """Re-route after a library (re)configured its loggers, e.g. Ray at import and at init."""
    if _handler is None:
        return
    root = logging.getLogger()
    root.handlers = [
        h for h in root.handlers if not isinstance(h, logging.StreamHandler) or isinstance(h, logging.FileHandler)
    ] + ([_handler] if _handler not in root.handlers else [])
    for name in NOISY:
        lg = logging.getLogger(name)
        lg.handlers = [_handler]
        lg.propagate = False
    try:
        import transformers

        transformers.utils.logging.disable_default_handler()
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars: not a stage of ours
    except Exception:  # noqa: BLE001 - transformers absent or older
        pass


def quiet() -> bool:
    return _handler is not None or bool(os.environ.get("SUITE_QUIET_LOG"))
