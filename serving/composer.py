"""Per-user MTA adapters composed exactly, on demand, for serving (issue #20, part 3).

A request names its user (`model="<base>:<user_id>"`). The composer finds what the user needs
beyond the shared bank — their per-user record (anchors, weights, stacked LoRA), or, without one,
their profile, from which the anchors are retrieved and fused on the spot — combines it into one
LoRA exactly (`mta.export.combine_exact`: concatenation, no SVD, no cross terms) and installs it
on the replica's one peft model under a name derived from the content hash. An LRU of
`max_adapters` holds the installed adapters; every request re-resolves the user's content hash
(a directory listing and one small JSON read), so a changed record is never served from a stale
entry. `generate` runs requests of different users in one forward pass (peft's `adapter_names`
mixed batches; left padding), each answer equal to the one the user would get alone.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from mta.adapters import AdapterHost
from mta.anchors import user_embeddings
from mta.bank import Bank, bank_content_id
from mta.data import User, validate_profile_item
from mta.export import combine_exact
from mta.fusion import fuse, fuse_chosen, retrieve
from mta.merge import weights as merge_weights
from mta.recipe import MTAJobConfig, bank_path_for, load_users
from mta.users import RECORD, current_hash, latest_record
from serving.decode import chat_ids, decode_steps
from serving.shared_basis import RowAdapter, SharedBasis, row_from_record
from suite.config import ConfigError, opt
from suite.encoders import load_encoder
from suite.io import DataError, json_digest, read_json
from suite.models import load_base
from suite.ray_local import LOOPBACK

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class ServeConfig:
    job: MTAJobConfig = field(default_factory=MTAJobConfig)
    host: str = opt(LOOPBACK, "address the HTTP server binds (loopback unless you mean otherwise)")
    port: int = opt(8000, "HTTP port", hi=65535)
    token_env: str = opt(
        "SUITE_SERVE_TOKEN", "environment variable holding the bearer token (required when host is not loopback)"
    )
    profiles_dir: str = opt("", "folder of <user_id>.json profiles (users of job.data.eval_split have theirs)")
    record_users: list[str] = opt(help="users whose records are written at start-up (ray_jobs.adapt)", factory=list)
    max_adapters: int = opt(8, "composed adapters held per replica (LRU, keyed by content hash)", lo=1)
    slot_rank: int = opt(
        32,
        "rank of the adapter slots made at start-up: a user's adapter is copied into a free slot (zero-padded, "
        "exact) instead of creating LoRA modules per user; a larger adapter gets a slot of its own",
        lo=1,
    )
    max_batch: int = opt(8, "requests generated in one forward pass", lo=1)
    batch_wait_s: float = opt(0.01, "how long a batch waits for more requests", hi=1)
    max_queue: int = opt(32, "requests in flight per server before 429", lo=1)
    max_body: int = opt(1 << 20, "largest request body in bytes (413 beyond)", lo=1)
    max_tokens_cap: int = opt(256, "largest max_tokens (400 beyond)", lo=1)
    replicas: int = opt(1, "generator replicas", lo=1)
    engine: Literal["shared_basis", "peft"] = opt(
        "shared_basis",
        "shared_basis (the bank as one shared LoRA basis, every request carrying its own weights and stack: "
        "serving.shared_basis) | peft (peft mixed batches over installed adapter slots: the baseline)",
    )
    max_ongoing_requests: int = opt(8, "Ray Serve: requests one replica works on at once", lo=1)
    max_queued_requests: int = opt(32, "Ray Serve: requests waiting for a replica before 429", lo=1)
    memory: str = opt("", "a MemGAS store (SQLite file): each chat's user gets their own top sessions in the prompt")
    memory_top_k: int = opt(2, "sessions from the user's memory put before the chat", lo=1)
    memory_encoder: str = opt("minilm", "the encoder the memory store was built with")
    test_delay_s: float = opt(0.0, "for tests: every generation waits this long first (fills the queue)", hi=60)
    test_step_delay_s: float = opt(0.0, "for tests: every decoding step waits this long (streams are slow)", hi=10)

    def __post_init__(self):
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError("host: expected an address")


class UnknownUser(KeyError):
    """A request named a user with neither a record nor a profile."""


@dataclass
class Slot:
    name: str
    content_hash: str
    kind: str  # "record" | "profile"


class Users:
    """Where a user's adapter comes from: their current record, else their profile."""

    def _eval_profiles(self) -> dict[str, list]:
        if self._profiles is None:
            try:
                users, _ = load_users(self.cfg.job, self.cfg.job.data.eval_split, self.bank.ids)
            except (DataError, OSError, SystemExit):
                users = []
            self._profiles = {u.user_id: u.profile for u in users}
        return self._profiles

    def profile(self, user_id: str) -> list | None:
        if self.cfg.profiles_dir:
            p = Path(self.cfg.profiles_dir) / f"{user_id}.json"
            if p.is_file() and p.parent.resolve() == Path(self.cfg.profiles_dir).resolve():
                items = read_json(p)
                if not isinstance(items, list) or not items:
                    raise DataError(p, user_id, None, "expected a non-empty list of profile items")
                task = self.cfg.job.data.task
                return [validate_profile_item(p, task, user_id, i, it) for i, it in enumerate(items)]
        return self._eval_profiles().get(user_id)

    def users_with_record(self) -> list[str]:
        d = Path(self.cfg.job.users_dir)
        if not d.is_dir():
            return []
        ids = set()
        for p in d.iterdir():
            if (p / RECORD).is_file():
                ids.add(read_json(p / RECORD).get("user_id"))
        return sorted(i for i in ids if isinstance(i, str))

    def quick(self, user_id: str):
        """(hash, None, None) from the user's record pointer alone when there is one (enough to
        recognise a cache hit), else the full `resolve`."""
        h = current_hash(self.cfg.job.users_dir, user_id)
        return (h, None, None) if h is not None else self.resolve(user_id)

    def resolve(self, user_id: str):
        """(content hash, kind, what to build from): the record if any, else the profile."""
        rec = latest_record(self.cfg.job.users_dir, user_id)
        if rec is not None:
            return rec.content_hash, "record", rec
        prof = self.profile(user_id)
        if prof is None:
            raise UnknownUser(user_id)
        h = json_digest([self.bank_id, prof, self.cfg.job.fusion.__dict__], 16)
        return h, "profile", prof

    def embedding(self, user_id: str, profile: list):
        if self._encoder is None:
            self._encoder = load_encoder(self.cfg.job.encoder)
        key = json_digest(profile, 16)
        if key not in self._emb:
            self._emb[key] = user_embeddings([User(user_id, profile)], self.cfg.job.data.task, self._encoder)[0]
        return self._emb[key]


class Composer(Users):
    """The baseline engine (`engine: peft`): adapters installed into peft slots, mixed batches."""

    def __init__(self, cfg: ServeConfig, model=None, codec=None):
        self.cfg, job = cfg, cfg.job
        bank = Bank(bank_path_for(job))
        self.bank, self.bank_id = bank.load(), bank_content_id(bank.manifest)
        if model is None:
            model, codec = load_base(job.model)
        self.codec = codec
        self.host = AdapterHost(model, job.anchor_train.target_modules)
        self.host.model.eval()  # inference only (peft refuses mixed batches in training mode)
        self.model_name = job.model.name
        self._encoder = None
        self._profiles: dict[str, list] | None = None
        self.lru: OrderedDict[str, Slot] = OrderedDict()
        self.lock = threading.RLock()  # one peft model: installs and forwards never interleave
        self.stats = {"hits": 0, "misses": 0, "cold_ms": [], "installed_max": 0}
        self._emb: dict[str, object] = {}  # profile embeddings by profile hash (a re-admitted user skips encoding)
        # fixed adapter slots (as S-LoRA and vLLM do): installing a user copies tensors into one,
        # which takes milliseconds, where creating LoRA modules through peft takes hundreds
        self.free: list[str] = []
        self._params: dict[str, dict[str, tuple]] = {}
        for i in range(cfg.max_adapters):
            name = f"slot{i}"
            self.host.add(name, cfg.slot_rank, cfg.slot_rank)  # alpha = r: scale 1
            self._params[name] = self._slot_params(name)
            self.free.append(name)

    # --------------------------------------------------------------------------- adapters
    def _slot_params(self, name: str) -> dict[str, tuple]:
        """{module path: (lora_A weight, lora_B weight)} of one installed adapter."""
        out = {}
        for mod_name, mod in self.host.model.named_modules():
            if hasattr(mod, "lora_A") and name in getattr(mod, "lora_A", {}):
                out[mod_name] = (mod.lora_A[name].weight, mod.lora_B[name].weight)
        return out

    @torch.no_grad()
    def _fill(self, slot: str, sd: dict, rank: int) -> None:
        """Copy a scale-1 LoRA of `rank` into a slot, zero-padding the rest (B·A unchanged)."""
        for mod_name, (A, B) in self._params[slot].items():
            A.zero_()
            B.zero_()
            if f"{mod_name}.lora_A.weight" in sd:  # a module the user's adapter does not touch stays zero
                A[:rank].copy_(sd[f"{mod_name}.lora_A.weight"].to(A.dtype))
                B[:, :rank].copy_(sd[f"{mod_name}.lora_B.weight"].to(B.dtype))

    def _compose(self, user_id: str, kind: str, src) -> tuple[dict, int]:
        fcfg = self.cfg.job.fusion
        if kind == "record":
            if src.bank_signature != self.bank_id:
                raise DataError(src.path, user_id, "bank_signature", "the record belongs to another bank")
            fused = fuse_chosen(self.bank, src.anchors, src.weights, fcfg)
            parts = [(fused.state_dict, fused.alpha / fused.r), (src.stack, src.stack_scale)]
        else:
            fused = fuse(self.bank, self.embedding(user_id, src), fcfg)
            parts = [(fused.state_dict, fused.alpha / fused.r)]
        return combine_exact(parts)

    def adapter_for(self, user_id: str) -> str:
        """The installed adapter's name for this user (composed and installed on a miss)."""
        h, kind, src = self.quick(user_id)
        with self.lock:
            slot = self.lru.get(user_id)
            if slot is not None and slot.content_hash == h:
                self.lru.move_to_end(user_id)
                self.stats["hits"] += 1
                return slot.name
            if kind is None:  # a miss on the pointer alone: the record itself now
                h, kind, src = self.resolve(user_id)
            t0 = time.perf_counter()
            sd, rank = self._compose(user_id, kind, src)
            if slot is not None:  # the record changed: its slot is refilled below
                self.lru.pop(user_id)
                self._release(slot.name)
            while len(self.lru) >= self.cfg.max_adapters:
                _, old = self.lru.popitem(last=False)
                self._release(old.name)
            if rank <= self.cfg.slot_rank and self.free:
                name = self.free.pop()
                self._fill(name, sd, rank)
            else:  # larger than a slot: an adapter of its own (removed when evicted)
                name = f"u_{h}"
                self.host.add(name, rank, rank, state_dict=sd)  # alpha = r: scale 1, the update folded in
            self.lru[user_id] = Slot(name, h, kind)
            self.stats["misses"] += 1
            self.stats["cold_ms"].append((time.perf_counter() - t0) * 1000)
            self.stats["installed_max"] = max(self.stats["installed_max"], len(self.lru))
            return name

    def _release(self, name: str) -> None:
        if name in self._params:
            self.free.append(name)
        else:
            self.host.remove(name)

    # ------------------------------------------------------------------------- generation
    def prompt_ids(self, prompt: str, chat: bool, max_tokens: int) -> list[int]:
        if chat:
            return self.codec.prompt_ids(prompt, reserve=max_tokens)
        return self.codec.ids(prompt)[-max(1, self.codec.max_length - max_tokens) :]

    @torch.inference_mode()
    def generate(self, items: list[tuple[list[int], str | None, int]]) -> list[tuple[str, int]]:
        """Greedy answers for (prompt ids, adapter name or None, max_tokens), in one forward pass
        per step for all of them (left padding, per-row adapters). Returns (text, new tokens)."""
        if not items:
            return []
        width = max(len(ids) for ids, _, _ in items)
        pad = self.codec.pad_id
        x = torch.full((len(items), width), pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for i, (ids, _, _) in enumerate(items):
            x[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[i, width - len(ids) :] = 1
        names = [n or BASE for _, n, _ in items]
        dev = next(self.host.model.parameters()).device
        with self.lock:
            out = self.host.model.generate(
                input_ids=x.to(dev),
                attention_mask=mask.to(dev),
                max_new_tokens=max(m for _, _, m in items),
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=self.codec.eos_id,
                adapter_names=names,
            )
        res = []
        for i, (_, _, m) in enumerate(items):
            new = out[i, width : width + m].tolist()
            if self.codec.eos_id in new:
                new = new[: new.index(self.codec.eos_id)]
            res.append((self.codec.decode(new).strip(), len(new)))
        return res


class BasisComposer(Users):
    """The serving engine (`engine: shared_basis`): the plain base model with the bank as one shared
    basis (`serving.shared_basis`). A user's adapter is a `RowAdapter` (a weight per anchor and the
    stacked LoRA), small and immutable, cached by content hash in an LRU of `max_adapters`; every
    request takes its own RowAdapter into the batch, so evicting or refreshing a cache entry can
    never change what a waiting request computes."""

    def __init__(self, cfg: ServeConfig, model=None, codec=None):
        self.cfg, job = cfg, cfg.job
        if job.fusion.merge != "cat":
            raise ConfigError(f"engine shared_basis serves fusion.merge=cat exactly; got {job.fusion.merge!r}")
        bank = Bank(bank_path_for(job))
        self.bank, self.bank_id = bank.load(), bank_content_id(bank.manifest)
        if model is None:
            model, codec = load_base(job.model)
        self.model, self.codec = model.eval(), codec
        self.basis = SharedBasis(self.model, self.bank.adapters, self.bank.scales)
        self.model_name = job.model.name
        self._encoder, self._profiles = None, None
        self._emb: dict[str, object] = {}
        self.lru: OrderedDict[str, tuple[str, RowAdapter]] = OrderedDict()
        self.lock = threading.RLock()  # the LRU; the model runs one batch at a time (`forward`)
        self.forward = threading.Lock()
        # cold_ms: every miss; cold_cached_ms: the misses that encoded nothing (a record, or a
        # profile whose embedding was already cached): the cold start the engine itself costs
        self.stats = {"hits": 0, "misses": 0, "cold_ms": [], "cold_cached_ms": [], "installed_max": 0}

    def adapter_for(self, user_id: str) -> RowAdapter:
        """The user's RowAdapter (built on a miss or when their record changed)."""
        h, kind, src = self.quick(user_id)
        with self.lock:
            hit = self.lru.get(user_id)
            if hit is not None and hit[0] == h:
                self.lru.move_to_end(user_id)
                self.stats["hits"] += 1
                return hit[1]
        t0 = time.perf_counter()
        encoded = len(self._emb)
        if kind is None:  # a miss on the pointer alone: the record itself now
            h, kind, src = self.resolve(user_id)
        if kind == "record":
            if src.bank_signature != self.bank_id:
                raise DataError(src.path, user_id, "bank_signature", "the record belongs to another bank")
            row = row_from_record(self.bank.ids, src.anchors, src.weights, src.stack, src.stack_scale)
        else:
            fcfg = self.cfg.job.fusion
            chosen, sims = retrieve(self.bank.emb, self.embedding(user_id, src), fcfg.top_k)
            w = merge_weights(fcfg.weighting, sims, fcfg.temperature)
            row = row_from_record(self.bank.ids, [self.bank.ids[int(i)] for i in chosen], list(w), {}, 1.0)
        with self.lock:
            self.lru[user_id] = (h, row)
            self.lru.move_to_end(user_id)
            while len(self.lru) > self.cfg.max_adapters:
                self.lru.popitem(last=False)
            self.stats["misses"] += 1
            ms = (time.perf_counter() - t0) * 1000
            self.stats["cold_ms"].append(ms)
            if len(self._emb) == encoded:
                self.stats["cold_cached_ms"].append(ms)
            self.stats["installed_max"] = max(self.stats["installed_max"], len(self.lru))
        return row

    def prompt_ids(self, prompt, chat: bool, max_tokens: int) -> list[int]:
        if chat:
            msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            return chat_ids(self.codec, msgs, max_tokens)
        return self.codec.ids(prompt)[-max(1, self.codec.max_length - max_tokens) :]

    def steps(self, items: list[tuple[list[int], RowAdapter | None, int]], cancelled=None):
        """Decode `items` (prompt ids, the row's adapter, max tokens) together, yielding each
        step's new tokens (None for finished rows); the model is held for the whole batch."""
        with self.forward, self.basis.rows([a for _, a, _ in items]):
            for step in decode_steps(
                self.model, [i for i, _, _ in items], [m for _, _, m in items], self.codec.eos_id,
                self.codec.pad_id, cancelled,
            ):  # fmt: skip
                if self.cfg.test_step_delay_s:
                    time.sleep(self.cfg.test_step_delay_s)
                yield step

    def generate(self, items: list[tuple[list[int], RowAdapter | None, int]]) -> list[tuple[str, int]]:
        """Greedy answers (text, new tokens) for every item, in one batch."""
        if not items:
            return []
        toks: list[list[int]] = [[] for _ in items]
        for step in self.steps(items):
            for i, t in enumerate(step):
                if t is not None:
                    toks[i].append(t)
        return [(self.codec.decode(t).strip(), len(t)) for t in toks]
