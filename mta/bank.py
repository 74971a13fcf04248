"""The meta-LoRA bank on disk.

    bank/
      manifest.json            format, task, base model, encoder, LoRA config, anchors + checksums
      embeddings.safetensors   anchor profile embeddings (row i = manifest anchors[i])
      anchors/<slug>/          one standard peft adapter: adapter_model.safetensors + adapter_config.json

Anchors are planned when the bank is created (ids, embeddings) and marked done as their adapters
arrive. An adapter folder is written under a temp name, fsynced and renamed to a name that carries
its content hash (`anchors/<slug>-<hash>/`); only then is the manifest rewritten atomically to point
at it. The manifest rewrite is the single commit point: a crash anywhere leaves the manifest pointing
at complete folders whose checksums match (the old state or the new), and a rerun trains only the
missing anchors. Folders no manifest points to (a crash's leftovers) are removed when a writer
reopens the bank. The bank has one writer at a time (the driver). Loading verifies every checksum
and reads tensors only through safetensors. The manifest is sealed with its own checksum, and every
path in it must stay inside the bank folder: a bank write never touches anything outside it, and a
folder that exists but is not a bank is refused rather than written into.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save, save_file

from suite.io import (
    DataError,
    atomic_write_bytes,
    atomic_write_json,
    check_seal,
    fsync_dir,
    fsync_tree,
    inside,
    json_digest,
    read_json,
    refuse_foreign,
    seal,
    sha256_file,
)
from suite.models import hub_id

FORMAT = "mta-bank/1"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class BankError(RuntimeError):
    """A bank on disk is missing, inconsistent or corrupted; the message names the file."""


def bank_content_id(manifest: dict) -> str:
    """Identity of a bank's content: its anchors and their file checksums."""
    ident = [(a["id"], a.get("files")) for a in manifest["anchors"] if a.get("done")]
    return json_digest(ident)


def slug(anchor_id: str) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", anchor_id)[:40]
    return f"{base}-{hashlib.sha1(anchor_id.encode()).hexdigest()[:8]}"


def save_adapter(folder: str | Path, state_dict: dict[str, torch.Tensor], lora_config: dict) -> None:
    """Write a standard peft adapter (keys without the adapter name) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    empty = [k for k, v in sd.items() if v.numel() == 0]
    if not sd or empty:
        raise BankError(f"{folder}: refusing to save an empty adapter ({empty[:3] or 'no tensors'})")
    save_file(sd, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(lora_config, indent=2, sort_keys=True, default=list))


def lora_config_dict(peft_config) -> dict:
    d = peft_config.to_dict()
    return json.loads(json.dumps(d, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))


def read_adapter(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    folder = Path(folder)
    try:
        sd = load_file(str(folder / ADAPTER_WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for torn files
        raise BankError(f"{folder / ADAPTER_WEIGHTS}: unreadable adapter ({e})") from None
    return sd, read_json(folder / ADAPTER_CONFIG)


@dataclass
class LoadedBank:
    """A verified bank in memory: ids, embeddings (n×d) and adapters of the done anchors."""

    ids: list[str]
    emb: np.ndarray
    adapters: list[dict[str, torch.Tensor]]
    configs: list[dict]
    manifest: dict

    @property
    def scales(self) -> list[float]:
        return [c["lora_alpha"] / c["r"] for c in self.configs]


def _is_bank_folder(path: Path) -> bool:
    """A bank, or what a crash during `Bank.create` leaves (its embeddings and temp files only)."""
    if (path / "manifest.json").exists():
        return True
    return all(
        p.name == "embeddings.safetensors" or (p.name.startswith(".") and p.name.endswith(".tmp"))
        for p in path.iterdir()
    )


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def signature_differences(stored: dict, requested: dict) -> list[str]:
    """The settings in which a bank on disk differs from the one asked for (empty: the same bank).
    Compares the signature inputs when both sides have them, else every setting both record (a
    caller that states no settings reopens any bank with the same anchor plan)."""
    a, b = stored.get("signature_inputs"), requested.get("signature_inputs")
    if a is None or b is None:
        keys = ("task", "base_model", "encoder", "lora", "anchors_config", "signature")
        both = [k for k in keys if k in stored and k in requested]
        a, b = {k: stored[k] for k in both}, {k: requested[k] for k in both}
    fa, fb = _flat(a), _flat(b)
    differ = sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
    if (
        not differ
        and "signature" in stored
        and "signature" in requested
        and stored["signature"] != requested["signature"]
    ):
        differ = ["signature"]
    return differ


class Bank:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest_path = self.path / "manifest.json"
        if not self.manifest_path.exists():
            raise BankError(f"{self.manifest_path}: no bank here")
        self.manifest = read_json(self.manifest_path)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise BankError(f"{self.manifest_path}: not a bank manifest (format must be {FORMAT!r})")
        try:
            check_seal(self.manifest, self.manifest_path)
            anchors = self.manifest.get("anchors")
            if not isinstance(anchors, list):
                raise DataError(self.manifest_path, field="anchors", problem="expected a list")
            inside(self.path, self.manifest["embeddings"]["file"], self.manifest_path, "embeddings", "file")
            for a in anchors:
                d = inside(self.path, a.get("dir"), self.manifest_path, f"anchor {a.get('id')!r}", "dir")
                if d.parent.name != "anchors" or d.parent.parent.resolve() != self.path.resolve():
                    raise DataError(
                        self.manifest_path,
                        f"anchor {a.get('id')!r}",
                        "dir",
                        f"{a.get('dir')!r} is not a folder under anchors/",
                    )
                if a.get("done") and (
                    not isinstance(a.get("files"), dict) or set(a["files"]) != {ADAPTER_WEIGHTS, ADAPTER_CONFIG}
                ):
                    raise DataError(
                        self.manifest_path,
                        f"anchor {a.get('id')!r}",
                        "files",
                        "a done anchor must give the checksums of its two adapter files",
                    )
        except DataError as e:
            raise BankError(str(e)) from None

    @classmethod
    def create(
        cls, path: str | Path, anchor_ids: list[str], emb: np.ndarray, meta: dict, n_items: list[int] | None = None
    ) -> Bank:
        """Plan a bank, or reopen it if the same plan is already on disk (resume)."""
        path = Path(path)
        mp = path / "manifest.json"
        try:
            refuse_foreign(path, _is_bank_folder, "bank")
        except DataError as e:
            raise BankError(str(e)) from None
        if mp.exists():
            bank = cls(path)
            planned = [a["id"] for a in bank.manifest["anchors"]]
            if planned != list(anchor_ids):
                raise BankError(f"{mp}: holds a different anchor plan; use a new bank path")
            differ = signature_differences(bank.manifest, meta)
            if differ:  # the same anchors trained under another recipe, model or task are another bank
                raise BankError(
                    f"{mp}: a bank made under other settings ({', '.join(differ[:6])}"
                    f"{', ...' if len(differ) > 6 else ''}); use a new bank path"
                )
            bank.collect_garbage()
            return bank
        path.mkdir(parents=True, exist_ok=True)
        ep = path / "embeddings.safetensors"
        atomic_write_bytes(ep, save({"anchor_emb": torch.as_tensor(np.asarray(emb, dtype=np.float32))}))
        anchors = [
            {
                "id": a,
                "dir": f"anchors/{slug(a)}",
                "n_items": (n_items or [0] * len(anchor_ids))[i],
                "done": False,
                "files": {},
            }
            for i, a in enumerate(anchor_ids)
        ]
        atomic_write_json(
            mp,
            seal(
                {
                    "format": FORMAT,
                    **meta,
                    "embeddings": {"file": ep.name, "sha256": sha256_file(ep)},
                    "anchors": anchors,
                }
            ),
        )
        return cls(path)

    def done_ids(self) -> list[str]:
        return [a["id"] for a in self.manifest["anchors"] if a["done"]]

    def missing_ids(self) -> list[str]:
        return [a["id"] for a in self.manifest["anchors"] if not a["done"]]

    def _entry(self, anchor_id: str) -> dict:
        for a in self.manifest["anchors"]:
            if a["id"] == anchor_id:
                return a
        raise BankError(f"{self.manifest_path}: anchor {anchor_id!r} is not planned in this bank")

    def add_anchor(
        self,
        anchor_id: str,
        src: str | Path | None = None,
        state_dict=None,
        lora_config=None,
        train_info: dict | None = None,
    ) -> None:
        """Install (or replace) one anchor's adapter, from a folder or tensors + config. `train_info`
        (steps, losses) is summarised into the manifest entry (`train`: loss_first/last, steps)."""
        entry = self._entry(anchor_id)
        root = self.path / "anchors"
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".", suffix=".tmp", dir=root))
        try:
            if src is not None:
                for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
                    shutil.copyfile(Path(src) / name, tmp / name)
            else:
                # standard fields, so `PeftModel.from_pretrained` finds the base and the task
                lora_config = {**lora_config, "task_type": lora_config.get("task_type") or "CAUSAL_LM"}
                if not lora_config.get("base_model_name_or_path") and self.manifest.get("base_model"):
                    lora_config["base_model_name_or_path"] = hub_id(self.manifest["base_model"])
                save_adapter(tmp, state_dict, lora_config)
            read_adapter(tmp)  # never install what we could not read back
            files = {n: sha256_file(tmp / n) for n in (ADAPTER_WEIGHTS, ADAPTER_CONFIG)}
            digest = hashlib.sha256("".join(files.values()).encode()).hexdigest()[:12]
            final = root / f"{slug(anchor_id)}-{digest}"
            if final.exists():  # the same content is already installed
                shutil.rmtree(tmp)
            else:
                fsync_tree(tmp)
                os.replace(tmp, final)
                fsync_dir(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = entry["dir"] if entry["done"] else None
        entry.update(done=True, files=files, dir=f"anchors/{final.name}")
        if train_info:
            losses = train_info.get("losses") or []
            entry["train"] = {
                "steps": train_info.get("steps"),
                "seconds": train_info.get("seconds"),
                "loss_first": losses[0] if losses else None,
                "loss_last": losses[-1] if losses else None,
            }
        self.manifest = seal(self.manifest)
        atomic_write_json(self.manifest_path, self.manifest)  # the commit point
        if old and old != entry["dir"]:
            shutil.rmtree(self.path / old, ignore_errors=True)

    def collect_garbage(self) -> list[str]:
        """Remove anchor folders the manifest does not point to (left by a crash mid-install)."""
        keep = {Path(a["dir"]).name for a in self.manifest["anchors"] if a["done"]}
        removed = []
        root = self.path / "anchors"
        for d in root.iterdir() if root.exists() else []:
            if d.name in keep:
                continue
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
            else:
                d.unlink(missing_ok=True)
            removed.append(d.name)
        return removed

    def verify(self) -> None:
        ep = self.path / self.manifest["embeddings"]["file"]
        if not ep.exists() or sha256_file(ep) != self.manifest["embeddings"]["sha256"]:
            raise BankError(f"{ep}: missing or checksum mismatch (bank corrupted)")
        for a in self.manifest["anchors"]:
            if not a["done"]:
                continue
            for name, sha in a["files"].items():
                f = self.path / a["dir"] / name
                if not f.exists():
                    raise BankError(f"{f}: missing file of anchor {a['id']!r}")
                if sha256_file(f) != sha:
                    raise BankError(f"{f}: checksum mismatch for anchor {a['id']!r} (bank corrupted)")

    def load(self, verify: bool = True, require_complete: bool = True) -> LoadedBank:
        if verify:
            self.verify()
        if require_complete and self.missing_ids():
            raise BankError(
                f"{self.manifest_path}: {len(self.missing_ids())} anchor(s) not trained yet: {self.missing_ids()[:5]}"
            )
        emb = load_file(str(self.path / self.manifest["embeddings"]["file"]))["anchor_emb"].numpy()
        ids, rows, adapters, configs = [], [], [], []
        for i, a in enumerate(self.manifest["anchors"]):
            if a["done"]:
                sd, cfg = read_adapter(self.path / a["dir"])
                ids.append(a["id"])
                rows.append(i)
                adapters.append(sd)
                configs.append(cfg)
        if not ids:
            raise BankError(f"{self.manifest_path}: the bank holds no trained anchor")
        return LoadedBank(ids, emb[rows], adapters, configs, self.manifest)

    def bytes_on_disk(self) -> int:
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
