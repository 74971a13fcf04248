"""The per-user record: all MTA keeps of a user beyond the shared bank (issue #20, part 2).

A record is the anchor ids and weights fusion chose and the stacked LoRA trained on the user's
items, with the signature of the bank they belong to. It lives in its own folder,
`USERS/<user slug>-<content hash>/` (`record.json` + `stack.safetensors`), written atomically; the
hash covers the bank signature, the anchors, the weights and the stack's checksum, so a changed
record is a new folder and a cache keyed by the hash can never serve a stale adapter. Which record
is the user's current one is said by a pointer, `USERS/<user slug>.<id hash>.current.json` (user id, folder,
content hash, a version counter), replaced atomically by every `write_record` — also when the
record written equals an older folder, so re-adapting back to an earlier record serves it (file
times never decide).

    write_record(users_dir, user_id, bank_signature, fused, stack_sd, stack_r, stack_alpha)
    latest_record(users_dir, user_id) -> UserRecord | None
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mta.bank import slug
from suite.io import DataError, atomic_dir, atomic_write_text, json_digest, read_json, sha256_file

FORMAT = "mta-user/1"
RECORD, STACK = "record.json", "stack.safetensors"


@dataclass
class UserRecord:
    path: Path
    user_id: str
    bank_signature: str
    anchors: list[str]
    weights: list[float]
    stack: dict[str, torch.Tensor]
    stack_r: int
    stack_alpha: float
    content_hash: str

    @property
    def stack_scale(self) -> float:
        return self.stack_alpha / self.stack_r


def _is_record(p: Path) -> bool:
    return (p / RECORD).is_file()


def write_record(
    users_dir: str | Path,
    user_id: str,
    bank_signature: str,
    anchors: list[str],
    weights: list[float],
    stack_sd: dict[str, torch.Tensor],
    stack_r: int,
    stack_alpha: float,
) -> UserRecord:
    """Write (atomically) and return the user's record; an identical record is left as it is."""
    users_dir = Path(users_dir)
    users_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").float().contiguous() for k, v in stack_sd.items()}
    staging = users_dir / f".{slug(user_id)}.stack.tmp"
    save_file(sd, str(staging))
    try:
        stack_sha = sha256_file(staging)
        body = {
            "format": FORMAT,
            "user_id": user_id,
            "bank_signature": bank_signature,
            "anchors": list(anchors),
            "weights": [round(float(w), 8) for w in weights],
            "stack": {"file": STACK, "sha256": stack_sha, "r": int(stack_r), "alpha": float(stack_alpha)},
        }
        h = json_digest(body, 16)
        final = users_dir / f"{slug(user_id)}-{h}"
        if not _is_record(final):
            with atomic_dir(final, is_own=_is_record, kind="user record") as tmp:
                os.replace(staging, tmp / STACK)
                atomic_write_text(tmp / RECORD, json.dumps({**body, "content_hash": h}, indent=2) + "\n")
    finally:
        staging.unlink(missing_ok=True)
    rec = load_record(final)
    _point(users_dir, user_id, final, h)
    return rec


def _pointer(users_dir: Path, user_id: str) -> Path:
    # the id's own hash beside its slug: two ids that slug alike never share a pointer
    return users_dir / f"{slug(user_id)}.{json_digest(user_id, 8)}.current.json"


def _point(users_dir: Path, user_id: str, folder: Path, content_hash: str) -> None:
    """Make `folder` the user's current record (atomic replace of the pointer; version + 1)."""
    p = _pointer(users_dir, user_id)
    old = read_json(p) if p.is_file() else {}
    version = int(old.get("version", 0)) + 1 if isinstance(old, dict) else 1
    body = {"user_id": user_id, "folder": folder.name, "content_hash": content_hash, "version": version}
    atomic_write_text(p, json.dumps(body, indent=2) + "\n")


def load_record(path: str | Path) -> UserRecord:
    """A record verified against its own hash and the stack's checksum (errors name the file)."""
    path = Path(path)
    rec = read_json(path / RECORD)
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise DataError(path / RECORD, field="format", problem=f"not an MTA user record ({FORMAT})")
    body = {k: v for k, v in rec.items() if k != "content_hash"}
    if json_digest(body, 16) != rec.get("content_hash"):
        raise DataError(path / RECORD, field="content_hash", problem="does not match the record (edited?)")
    if sha256_file(path / STACK) != rec["stack"]["sha256"]:
        raise DataError(path / STACK, field="sha256", problem="checksum mismatch (corrupted stack)")
    return UserRecord(
        path,
        rec["user_id"],
        rec["bank_signature"],
        rec["anchors"],
        rec["weights"],
        load_file(str(path / STACK)),
        rec["stack"]["r"],
        rec["stack"]["alpha"],
        rec["content_hash"],
    )


def current_hash(users_dir: str | Path, user_id: str) -> str | None:
    """The content hash the user's pointer names, read from the pointer alone, or None without one.
    A serving cache compares it with the hash of what it holds and loads (and verifies) the record
    only when they differ: a hit reads one small file instead of checksumming the stack."""
    p = _pointer(Path(users_dir), user_id)
    if not p.is_file():
        return None
    ptr = read_json(p)
    h = ptr.get("content_hash") if isinstance(ptr, dict) and ptr.get("user_id") == user_id else None
    return h if isinstance(h, str) else None


def latest_record(users_dir: str | Path, user_id: str) -> UserRecord | None:
    """The user's current record: the one their pointer names (see the module docstring); for a
    folder written before pointers existed, the newest record by write time; or None."""
    users_dir = Path(users_dir)
    if not users_dir.is_dir():
        return None
    p = _pointer(users_dir, user_id)
    if p.is_file():
        ptr = read_json(p)
        if not isinstance(ptr, dict) or ptr.get("user_id") != user_id or not isinstance(ptr.get("folder"), str):
            raise DataError(p, user_id, "folder", "not a record pointer of this user")
        folder = users_dir / ptr["folder"]
        if folder.parent != users_dir or not _is_record(folder):
            raise DataError(p, user_id, "folder", f"names {ptr['folder']!r}, which is not a record here")
        rec = load_record(folder)
        if rec.user_id != user_id or rec.content_hash != ptr.get("content_hash"):
            raise DataError(p, user_id, "content_hash", "the pointer and the record disagree")
        return rec
    prefix = slug(user_id) + "-"
    found = [p for p in users_dir.iterdir() if p.name.startswith(prefix) and _is_record(p)]
    found = [p for p in found if read_json(p / RECORD).get("user_id") == user_id]  # slugs may collide
    if not found:
        return None
    return load_record(max(found, key=lambda p: (p / RECORD).stat().st_mtime_ns))
