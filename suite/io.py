"""Atomic writes and checksummed, validated reads.

Every file the suite writes goes through `atomic_write_*`: the bytes land in a temp file in the same
folder, are fsynced, then renamed over the target, so a reader sees the old or the new file, never a
mix. `atomic_dir` does the same for a whole folder: it is written as a sibling temp folder, fsynced,
then swapped with the old one in one `renameat2(RENAME_EXCHANGE)` call (Linux). Where the kernel or
filesystem lacks the exchange, two renames are used and `recover_dir` (called by every reader of a
folder written this way) puts the old folder back if a crash fell between them.
RELIABILITY.md lists the tests that kill writers at every line of these paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file, the record and the field."""

    def __init__(self, file: str | Path, record: Any = None, field: str | None = None, problem: str = ""):
        self.file, self.record, self.field, self.problem = str(file), record, field, problem
        parts = [str(file)]
        if record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field '{field}'")
        super().__init__(": ".join([", ".join(parts), problem]))


def check_id(file, record, field: str, value: Any) -> str:
    """An id field: a non-empty string or an integer (never a bool, list, object or null)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(file, record, field, f"expected a string or integer id, got {type(value).__name__}")
    if not str(value).strip():
        raise DataError(file, record, field, "is empty")
    return str(value)


def check_text_value(file, record, field: str, value: Any) -> str:
    """An answer/output field: a string or a number, read as text."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(file, record, field, f"expected a string or number, got {type(value).__name__}")
    return str(value)


def check_text(file, record, field: str, value: Any, empty_ok: bool = True) -> str:
    """A text field that will be written to disk later: a str that encodes as UTF-8 (a lone
    surrogate such as JSON's "\\udce9" does not, and would make every later save fail)."""
    if not isinstance(value, str):
        raise DataError(file, record, field, f"expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(file, record, field, f"not valid Unicode text (lone surrogate at position {e.start})") from None
    if not empty_ok and not value.strip():
        raise DataError(file, record, field, "is empty")
    return value


def inside(folder: str | Path, rel: Any, file, record=None, field: str = "path") -> Path:
    """`folder / rel` for a path read from a manifest, refusing anything that leaves `folder`
    (absolute paths, `..`, symlinks pointing out)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise DataError(file, record, field, f"expected a relative path, got {rel!r}")
    if os.path.isabs(rel) or ".." in Path(rel).parts:
        raise DataError(file, record, field, f"path {rel!r} leaves the folder")
    root = Path(folder).resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise DataError(file, record, field, f"path {rel!r} resolves outside the folder")
    return Path(folder) / rel


SEAL = "manifest_sha256"


def seal(manifest: dict) -> dict:
    """The manifest with its own checksum (sha256 of its canonical JSON without the checksum)."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return {**body, SEAL: json_digest(body, 64)}


def check_seal(manifest: dict, file) -> dict:
    """Verify a sealed manifest; an edited, truncated or unsealed one is a DataError naming `file`."""
    if not isinstance(manifest, dict) or SEAL not in manifest:
        raise DataError(
            file, field=SEAL, problem="missing: the manifest is not sealed (edited or not written by this suite)"
        )
    body = {k: v for k, v in manifest.items() if k != SEAL}
    if json_digest(body, 64) != manifest[SEAL]:
        raise DataError(file, field=SEAL, problem="mismatch: the manifest was modified after it was written")
    return manifest


@contextlib.contextmanager
def file_lock(target: str | Path, shared: bool = False, timeout_s: float = 600.0) -> Iterator[None]:
    """An inter-process lock for `target` (fcntl.flock on the sibling file `.NAME.lock`, which
    survives the folder swaps of `atomic_dir`). Writers take it exclusive, readers shared."""

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock = target.parent / f".{target.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock}: still locked by another process after {timeout_s:.0f}s") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The mode a written file gets: that of the file it replaces (a regular file, not through a
    symlink), else what the user's umask gives a new file (mkstemp alone would leave 0600)."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            return stat.S_IMODE(st.st_mode)
    except FileNotFoundError:
        pass
    return 0o666 & ~_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `path` atomically (temp file, fsync, rename). The rename replaces the path itself: a
    symlink there is replaced by the file, never followed to overwrite what it points to."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, sort_keys=False) + "\n")


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_exchange_ok: bool | None = None if sys.platform == "linux" else False


@functools.lru_cache(maxsize=1)
def _renameat2():
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28 or not glibc
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def exchange_paths(a: str | Path, b: str | Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2). False when unsupported."""
    global _exchange_ok
    fn = _renameat2() if _exchange_ok is not False else None
    if fn is None:
        _exchange_ok = False
        return False
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        _exchange_ok = True
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        _exchange_ok = False
        return False
    raise OSError(err, os.strerror(err), str(a))


def _old_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def readable_dir(path: str | Path) -> Path:
    """Where a reader finds a folder written by `atomic_dir`, changing nothing on disk: the folder,
    or its old copy if a two-rename swap was interrupted before the new one landed."""
    path = Path(path)
    old = _old_path(path)
    return old if not path.exists() and old.exists() else path


def recover_dir(path: str | Path) -> None:
    """For writers only: finish or undo an interrupted two-rename `atomic_dir` swap (the non-Linux
    fallback): if the target is missing but the old copy exists, the new folder never landed, so the
    old one returns."""
    path = Path(path)
    old = _old_path(path)
    if old.exists():
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)  # the new folder landed; the old copy is garbage
        else:
            os.replace(old, path)


def fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))


RUN_MARK = ".suite-run"


def claim_run_dir(path: str | Path, kind: str = "run") -> Path:
    """Make `path` this suite's run folder, or refuse before any work. A folder is the suite's own
    when it is new, empty, or holds the marker file `.suite-run` (written here when the folder is
    claimed); a folder holding anything else (a user's own config.json, a report, a repository) is
    refused with a message naming a file in it, and nothing in it is touched. `touch DIR/.suite-run`
    marks a folder made by an older version of the suite as its own."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(path, problem=f"exists and is not a folder; refusing to use it as a {kind} folder")
    if path.is_dir() and not (path / RUN_MARK).is_file():
        entries = sorted(p.name for p in path.iterdir())
        if entries:
            raise DataError(
                path,
                problem=f"holds files this suite did not write (e.g. {entries[0]!r}) and no {RUN_MARK} marker; "
                f"refusing to write a {kind} there: choose a new or empty folder",
            )
    path.mkdir(parents=True, exist_ok=True)
    if not (path / RUN_MARK).is_file():
        atomic_write_text(path / RUN_MARK, f"{kind} folder written by the personalized-LLM suite\n")
    summary = path / "summary.json"
    if summary.exists() and not isinstance(read_json(summary), dict):  # checked now, not after the run
        raise DataError(summary, problem="not a JSON object: this run would fail when it writes its summary")
    return path


def refuse_foreign(path: str | Path, is_own: Callable[[Path], bool], kind: str) -> None:
    """Raise unless `path` is absent, an empty folder, or a folder `is_own` recognises: a write
    never replaces (and so deletes) a folder that holds something else."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise DataError(path, problem=f"exists and is not a folder; refusing to replace it with a {kind}")
    if any(path.iterdir()) and not is_own(path):
        raise DataError(
            path,
            problem=f"exists and is not a {kind} (no {kind} manifest); refusing to overwrite "
            "its files: choose an empty or new folder",
        )


@contextlib.contextmanager
def atomic_dir(path: str | Path, is_own: Callable[[Path], bool] | None = None, kind: str = "folder") -> Iterator[Path]:
    """Yield a temp folder; on success it replaces `path` atomically (old copy removed after).
    With `is_own`, an existing non-empty `path` that is not of this kind is refused first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    if is_own is not None:
        refuse_foreign(path, is_own, kind)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)  # contents durable before they become visible
        if path.exists() and exchange_paths(tmp, path):
            fsync_dir(path.parent)
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old folder
            return
        if path.exists():
            os.replace(path, _old_path(path))  # fallback: a crash here leaves the old copy for recover_dir
        os.replace(tmp, path)
        fsync_dir(path.parent)
        shutil.rmtree(_old_path(path), ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def project_root() -> Path:
    """The repository (or installed source tree) root: configs are found relative to it."""
    return Path(__file__).resolve().parent.parent


def json_digest(obj: Any, n: int = 16) -> str:
    """First `n` hex digits of sha256 over canonical JSON (sorted keys): the identity of a config,
    a bank plan or a record key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; errors name the file (and line/column for syntax errors)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(path, problem=f"cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(path, problem=f"not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, problem=f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(path, problem="JSON nested too deeply") from None
    except ValueError:  # an integer longer than Python converts (4,300 digits)
        m = re.search(r"\d{4300,}", text)
        line = text.count("\n", 0, m.start()) + 1 if m else "?"
        raise DataError(
            path, problem=f"an integer of {len(m.group(0)) if m else 'too many'} digits at line {line}"
        ) from None


def _drop_torn_tail(f) -> None:
    """Cut a last line that has no newline (a crash mid-append) so the next record starts clean."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    pos = end
    while pos > 0:
        step = min(1 << 16, pos)
        f.seek(pos - step)
        nl = f.read(step).rfind(b"\n")
        if nl >= 0:
            pos = pos - step + nl + 1
            break
        pos -= step
    f.truncate(pos)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line and fsync: a crash loses at most the line being written, which
    `read_jsonl` skips and the next append cuts off, never earlier ones."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:  # appends always land at the end, even after the truncate
        _drop_torn_tail(f)
        f.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path, validate: Callable[[Any], str | None] | None = None, on_bad=None) -> list[dict]:
    """The records of a resume log, read as bytes. A last line without its newline (a kill, a full
    disk or a power cut mid-write, possibly inside a multi-byte character) is dropped; so is every
    line that is not a JSON object or that `validate` rejects (it returns the problem, naming the
    field): each is reported through `on_bad(problem)` (default: one line on stderr naming the file
    and line) and left out, so the caller recomputes it. Nothing is ever lost by reading."""
    path = Path(path)
    if not path.exists():
        return []
    report = on_bad or (lambda msg: print(f"[resume] {msg}", file=sys.stderr))
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    if torn.strip():
        report(f"{path}: line {len(lines) + 1}: torn final line ({len(torn)} bytes) dropped; it will be redone")
    out = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            report(f"{path}: line {i + 1}: not a JSON record ({type(e).__name__}); it will be recomputed")
            continue
        problem = "record: not a JSON object" if not isinstance(rec, dict) else (validate(rec) if validate else None)
        if problem:
            report(f"{path}: line {i + 1}: {problem}; it will be recomputed")
            continue
        out.append(rec)
    return out


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """One driver per run folder: an exclusive, non-blocking lock on OUT/.driver.lock held for the
    whole run. A second driver on the same folder fails at once, before any work (two drivers
    appending to one resume log cut each other's lines)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".driver.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusy(
                f"{out}: another run is using this folder; wait for it or choose another --out"
            ) from None
        yield
    finally:
        os.close(fd)


class RunFolderBusy(RuntimeError):
    """A second driver asked for a run folder a live run holds."""
