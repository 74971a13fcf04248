"""What every summary records about how it was made, and what every resume key depends on.

`provenance()` goes into each `summary.json`: the git commit (and whether the tree had uncommitted
changes), the version of the method code, the library versions, the resolved device and dtype, the
checksums of the data and golds files and the full resolved configuration. `code_version()` is a
hash of the method code itself (mta/, memgas/, suite/): resume keys carry it, so records computed
by other code are recomputed, never mixed in — a git commit alone would miss uncommitted edits.
"""

from __future__ import annotations

import functools
import hashlib
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from suite.io import project_root, sha256_file

CODE_DIRS = ("mta", "memgas", "suite")
LIBRARIES = ("torch", "transformers", "peft", "ray", "deepspeed", "scikit-learn", "numpy", "sentence-transformers")


@functools.cache
def code_version(dirs: tuple[str, ...] = CODE_DIRS) -> str:
    """sha256 (16 hex) over the .py files of `dirs` (a method's code: ("mta", "suite")), by relative
    path and content, taken once per process (at the run's start: `start_stamp`). Each method's
    resume keys use its own packages, so an edit to MemGAS does not invalidate MTA's records."""
    return code_hash_now(dirs)


def code_hash_now(dirs: tuple[str, ...] = CODE_DIRS) -> str:
    """The same hash, read from disk again (the code as it is now, not as it was at the start)."""
    root = project_root()
    h = hashlib.sha256()
    for d in dirs:
        for p in sorted((root / d).rglob("*.py")):
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def git_state() -> dict:
    """{"commit", "dirty"} of the project checkout, read once per process (call it when a run
    starts: a commit made while it runs must not be claimed by its summary); "unknown" outside a git clone (e.g. a Ray
    job's working_dir upload, which excludes .git: `code_version` still identifies the code)."""
    root = project_root()

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def checksums(files: dict[str, str | Path | None]) -> dict:
    return {k: {"path": str(p), "sha256": sha256_file(Path(p))} for k, p in files.items() if p and Path(p).is_file()}


@functools.cache
def _started() -> tuple[str, float]:
    """(UTC ISO time, monotonic seconds) of the first `start_stamp` of this process."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()


def start_stamp(dirs: tuple[str, ...] = CODE_DIRS) -> dict:
    """Call when a run starts: fixes the commit and the hash of the code in `dirs` (the method's own
    packages: an MTA run names ("mta", "suite")) that its summary will claim, and the start time,
    all read once per process, so that `provenance` can compare them with the code at the end and
    say how long the run took (what docs/reproducing.md quotes as each command's cost)."""
    return {**git_state(), "code_version": code_version(dirs), "code_dirs": list(dirs), "started_at": _started()[0]}


def provenance(
    config: dict,
    files: dict[str, str | Path | None],
    runtime: dict | None = None,
    dirs: tuple[str, ...] = CODE_DIRS,
) -> dict:
    """The provenance block of a summary (`config` must already be redacted): the commit and the
    hash of the code in `dirs` taken at the start (`start_stamp`), the same hash again now, and
    `code_changed` with a note when they differ (a run whose code changed midway says so)."""
    start = start_stamp(dirs)
    end = code_hash_now(dirs)
    out = {
        **start,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - _started()[1], 1),
        "code_version_end": end,
        "code_changed": end != start["code_version"],
        "libraries": library_versions(),
        "runtime": runtime or {},
        "files": checksums(files),
        "config": config,
    }
    if out["code_changed"]:
        out["code_note"] = (
            f"the method code changed while the run ran: {start['code_version']} at the start, {end} at the end"
        )
    return out
