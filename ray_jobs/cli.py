"""Argument parsing shared by every entry point: --config YAML, --out DIR, key=value overrides."""

from __future__ import annotations

import argparse
import functools
import sys
import traceback
from pathlib import Path

from ray_jobs.report import main as report
from suite.config import ConfigError, describe, load_config
from suite.io import DataError, RunFolderBusy, claim_run_dir
from suite.logs import to_file
from suite.redact import redact_text


def parse(
    cls,
    doc: str,
    argv: list[str] | None = None,
    flags: dict[str, str] | None = None,
    options: dict[str, str] | None = None,
    claim: bool = True,
):
    """(args, config); `flags` adds boolean --options (name -> help), `options` string ones.
    `claim`: OUT is a run folder (claimed before anything is written); False when OUT is an
    artefact the job writes atomically itself (an adapter folder)."""
    ap = argparse.ArgumentParser(
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (override with key=value):\n" + "\n".join(describe(cls)),
    )
    ap.add_argument("--config", help="YAML experiment file (ray_jobs/configs/*.yaml)")
    ap.add_argument("--out", required=True, help="run folder: summary.json, predictions, checkpoints")
    ap.add_argument(
        "--quiet",
        action="store_true",
        help="library logs and warnings to OUT/run.log; the terminal keeps progress bars and tables",
    )
    for name, help_ in (flags or {}).items():
        ap.add_argument(f"--{name}", action="store_true", help=help_)
    for name, help_ in (options or {}).items():
        ap.add_argument(f"--{name}", default=None, help=help_)
    ap.add_argument("overrides", nargs="*", help="key=value, dotted for nested keys, e.g. fusion.top_k=3")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(cls, args.config, args.overrides)
    except ConfigError as e:
        _config_error(e)
    try:  # before anything is written there, even the log of --quiet
        if claim:
            claim_run_dir(args.out)
    except DataError as e:
        print(f"Error: {redact_text(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.quiet and not claim:
        print("Error: --quiet writes run.log into OUT, which this job writes as an artefact", file=sys.stderr)
        raise SystemExit(2)
    if args.quiet:
        log = to_file(args.out)
        silence_library_bars()
        print(f"[{Path(sys.argv[0]).stem}] library logs and warnings: {log}")
    return args, cfg


def silence_library_bars() -> None:
    """--quiet keeps only the suite's own stage bars: transformers' GGUF loader draws a plain tqdm
    bar ("Converting and de-quantizing GGUF tensors") that its progress-bar switch does not reach."""
    try:
        import tqdm.auto
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # transformers without GGUF support: no such bar
        return
    gguf_utils.tqdm = functools.partial(tqdm.auto.tqdm, disable=True)


def report_run(out: str | Path) -> None:
    """End of a job: render its report and say where everything is."""

    report([str(out), "--out", str(Path(out) / "report")])
    print(f"run folder: {out}  (summary.json, per-record logs, run.log)\nreport: {Path(out) / 'report' / 'report.md'}")


def _config_error(e: ConfigError):
    print(f"Config error: {redact_text(str(e))}", file=sys.stderr)
    raise SystemExit(2) from None


def entry(main):
    """A launcher's `main`: a ConfigError raised after parsing (at set-up, e.g. `model.device=cuda`
    without CUDA, or a sweep over a refused split) prints one "Config error: ..." line, like a
    parse-time error, instead of a traceback."""

    @functools.wraps(main)
    def wrapped(*a, **kw):
        try:
            return main(*a, **kw)
        except ConfigError as e:
            _config_error(e)
        except KeyboardInterrupt as e:  # Ctrl-C, or a sweep stopped before its trials finished
            print(f"Interrupted{': ' + redact_text(str(e)) if str(e) else ''}", file=sys.stderr)
            raise SystemExit(130) from None
        except (RunFolderBusy, DataError) as e:  # a busy or foreign folder, bad data: file, record, field
            print(f"Error: {redact_text(str(e))}", file=sys.stderr)
            raise SystemExit(2) from None
        except Exception:  # the traceback, redacted: an error message may quote a credential
            print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
            raise SystemExit(1) from None

    return wrapped


def check_bind(host: str, token_env: str) -> None:
    """A listener binds beyond loopback only with a bearer token in `$token_env` (checked before
    Ray or Serve start)."""
    import os

    from suite.ray_local import LOOPBACK

    if host not in (LOOPBACK, "localhost", "::1") and not os.environ.get(token_env):
        raise ConfigError(f"host={host}: set the bearer token in ${token_env} before binding beyond loopback")


def serve_until_signalled() -> None:
    """Keep a Serve app up until SIGINT / SIGTERM, then shut Serve down."""
    import signal
    import threading

    from ray import serve

    done = threading.Event()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda *a: done.set())
    done.wait()
    serve.shutdown()
