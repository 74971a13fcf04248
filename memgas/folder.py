"""Folder snapshots of a store (memgas-store/1): the whole store written atomically into a temp
folder and swapped in, every file's checksum in a sealed manifest, a generation number so a save
over a store written since it was loaded is refused; read back verified. Functions of the store's
state (`users`, `cfg`, `encoder`), so this module never imports the store's class."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from memgas.memory import FORMAT, MemGASConfig, Memory, StoreError
from suite.config import from_dict
from suite.io import (
    DataError,
    atomic_dir,
    check_seal,
    file_lock,
    inside,
    read_json,
    readable_dir,
    seal,
    sha256_file,
)


def _generation(path: Path) -> int:
    """The generation of the store saved at `path` (0: none, or one saved before generations)."""
    mp = readable_dir(path) / "manifest.json"
    if not mp.is_file():
        return 0
    try:
        g = json.loads(mp.read_text(encoding="utf-8")).get("generation", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return g if isinstance(g, int) and not isinstance(g, bool) else 0


def _is_store(path: Path) -> bool:
    mp = path / "manifest.json"
    if not mp.is_file():
        return False
    try:
        return json.loads(mp.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save(self, path: str | Path, overwrite: bool = False) -> Path:
    """Write the whole store atomically (temp folder + swap) under the folder's exclusive lock.
    Refuses a folder that exists, is not empty and is not a memory store; refuses to replace a store
    this object was not loaded from (unless `overwrite`: a fresh store saved over a full one would
    silently drop every session in it); and refuses to save a store loaded from `path` over a newer
    one written there since (another process's adds would be silently lost): reload and add again,
    or use `MemoryStore.transaction`."""
    if self._db is not None:  # its users are loaded lazily: a folder would hold only those in memory
        raise StoreError(
            "save(): a durable store (MemoryStore.open) is copied with backup(DEST), not saved as a folder"
        )
    with file_lock(path):
        path = Path(path)
        loaded = self._loaded_from
        if (
            (_is_store(path) or _generation(path) > 0)
            and not overwrite
            and (loaded is None or loaded[0] != path.resolve())
        ):
            raise StoreError(
                f"{path}: holds a memory store this one was not loaded from; saving would replace it and "
                "lose its sessions. Load it and add to it, use MemoryStore.transaction, or pass overwrite=True"
            )
        if loaded is not None and loaded[0] == path.resolve():
            now = _generation(path)
            if now != loaded[1]:
                raise StoreError(
                    f"{path}: the store changed since it was loaded here (generation {loaded[1]} -> {now}: "
                    "another writer saved); saving would lose its adds. Reload and add again, or use "
                    "MemoryStore.transaction"
                )
        return write(self, path)


def write(self, path: Path) -> Path:
    gen = _generation(path) + 1
    with self._lock, atomic_dir(path, is_own=_is_store, kind="memory store") as tmp:
        users = {}
        for k, (uid, mem) in enumerate(sorted(self.users.items())):
            meta = {
                "user_id": uid,
                "sessions": mem.sessions,
                "node_gran": mem.node_gran,
                "node_sess": mem.node_sess_list,
                "edges": [list(e) for e in mem.edges],
                "history": mem.history,
            }
            (tmp / f"user{k}.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
            floors = np.asarray(mem.node_floor, np.float32)  # see Memory.node_floor (nan: unknown)
            save_file({"emb": mem.matrix().astype(np.float32), "floor": floors}, str(tmp / f"user{k}.safetensors"))
            users[uid] = {
                "meta": f"user{k}.json",
                "emb": f"user{k}.safetensors",
                "sha256": {f: sha256_file(tmp / f) for f in (f"user{k}.json", f"user{k}.safetensors")},
            }
        man = seal(
            {
                "format": FORMAT,
                "config": asdict(self.cfg),
                "encoder": self.encoder.name,
                "dim": int(self.encoder.dim),
                "n_users": len(users),
                "users": users,
                "generation": gen,  # one more on every save: a writer detects a newer store
            }
        )
        (tmp / "manifest.json").write_text(json.dumps(man, indent=1), encoding="utf-8")
    self._loaded_from = (path.resolve(), gen)
    return path


def load(cls, path: str | Path, encoder=None, llm=None, verify: bool = True):
    """Read a store under the folder's shared lock (never while a writer swaps it). Reading
    changes nothing on disk."""
    with file_lock(path, shared=True):
        return read(cls, Path(path), encoder, llm, verify)


@contextlib.contextmanager
def transaction(cls, path: str | Path, cfg: MemGASConfig | None = None, encoder=None, llm=None):
    """Load (or create) → yield → save, all under the exclusive lock: concurrent writers in other
    processes wait, and none loses another's adds. Nothing is saved if the block raises."""
    path = Path(path)
    with file_lock(path):
        exists = (readable_dir(path) / "manifest.json").exists()
        store = read(cls, path, encoder, llm, True) if exists else cls(cfg, encoder=encoder, llm=llm)
        yield store
        write(store, path)


def read(cls, path: Path, encoder, llm, verify: bool):
    where = readable_dir(path)
    mp = where / "manifest.json"
    if not mp.exists():
        raise StoreError(f"{mp}: no memory store here")
    man = read_json(mp)
    if not isinstance(man, dict) or man.get("format") != FORMAT:
        raise StoreError(f"{mp}: format {man.get('format') if isinstance(man, dict) else None!r}, expected {FORMAT!r}")
    try:
        check_seal(man, mp)
    except DataError as e:
        raise StoreError(str(e)) from None
    users = man.get("users")
    if not isinstance(users, dict) or man.get("n_users") != len(users):
        raise StoreError(f"{mp}: field 'users' does not hold the {man.get('n_users')} user(s) the manifest declares")
    store = cls(from_dict(MemGASConfig, man["config"], str(mp)), encoder=encoder, llm=llm)
    store._loaded_from = (path.resolve(), int(man.get("generation", 0)))
    if store.encoder.name != man["encoder"]:
        raise StoreError(f"{mp}: saved with encoder {man['encoder']!r}, loading with {store.encoder.name!r}")
    if int(store.encoder.dim) != man.get("dim"):
        raise StoreError(
            f"{mp}: saved with {man.get('dim')}-dimensional embeddings, the encoder gives {store.encoder.dim}"
        )
    for uid, u in users.items():
        try:
            files = {k: inside(where, u.get(k), mp, f"user {uid!r}", k) for k in ("meta", "emb")}
            sums = u.get("sha256")
            if not isinstance(sums, dict) or set(sums) != {u["meta"], u["emb"]}:
                raise DataError(mp, f"user {uid!r}", "sha256", "must give the checksum of exactly its two files")
        except DataError as e:
            raise StoreError(str(e)) from None
        for f, sha in sums.items():
            if verify and (not (where / f).exists() or sha256_file(where / f) != sha):
                raise StoreError(f"{where / f}: missing or checksum mismatch (store corrupted)")
        meta = read_json(files["meta"])
        if meta.get("user_id") != uid:
            raise StoreError(f"{files['meta']}: holds user {meta.get('user_id')!r}, the manifest says {uid!r}")
        mem = Memory()
        tensors = load_file(str(files["emb"]))
        emb = tensors["emb"]
        floors = tensors.get("floor")  # absent in stores saved before floors: unknown, redone on delete
        if floors is not None and floors.shape != (len(emb),):
            raise StoreError(f"{files['emb']}: {tuple(floors.shape)} floors for {len(emb)} nodes")
        if emb.ndim != 2 or len(emb) != len(meta["node_gran"]) or (len(emb) and emb.shape[1] != man["dim"]):
            raise StoreError(
                f"{files['emb']}: {tuple(emb.shape)} embeddings for {len(meta['node_gran'])} nodes "
                f"of dimension {man['dim']}"
            )
        mem.load_nodes(meta["sessions"], meta["node_gran"], meta["node_sess"], meta["edges"], emb, floors=floors)
        mem.history = meta.get("history", []) if isinstance(meta.get("history", []), list) else []
        store.users[uid] = mem
    return store
