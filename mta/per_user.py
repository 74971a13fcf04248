"""Stage 3, per user: every method's raw outputs for one user (label scores or generations, with
content-free twins), costs and relative updates, appended to a resume log under a hash of
everything they depend on; the questions files' checksums and the users of a split."""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mta.adapters import AdapterHost
from mta.anchors import user_embeddings
from mta.bank import LoadedBank, bank_content_id
from mta.config import LABEL_ONLY, MTAConfig, _uses_labels, swept_settings
from mta.data import (
    User,
    build_prompt,
    item_content,
    load_task_split,
    query_content,
    resolve_task_dir,
    task_info,
)
from mta.diagnostics import peft_relative_update
from mta.evaluate import (
    content_free_input,
    generate,
    label_logprobs,
)
from mta.fusion import FusionConfig, fuse
from mta.priors import _prior, few_shot_view, log_prior
from mta.stacking import adapter_bytes, stack_user
from mta.training import for_adapter, history_for, loo_samples
from mta.users import write_record
from suite.device import current as current_device
from suite.device import dtype_for
from suite.io import append_jsonl, json_digest, read_jsonl, sha256_file
from suite.models import TextCodec, model_identity
from suite.provenance import code_version


def golds_file(questions_file: str | Path) -> Path | None:
    """The golds file beside a split's questions file (`dev_questions.json` -> `dev_outputs.json`)."""
    q = Path(questions_file)
    g = q.with_name(q.name.replace("_questions.json", "_outputs.json"))
    return g if g != q and g.is_file() else None


def split_digest(questions_file: str | Path) -> str:
    """Checksum of a split's questions file and its golds file."""
    g = golds_file(questions_file)
    return json_digest([sha256_file(questions_file), sha256_file(g) if g else None])


def runtime_key(cfg: MTAConfig) -> dict:
    """Device kind and dtype the records are computed with: a run resumed on another device or
    dtype recomputes instead of mixing fp32 and bf16 records."""
    dev = current_device()
    if cfg.eval.backend == "ray" and cfg.eval.gpus > 0:
        return {"device": "cuda", "dtype": cfg.model.dtype if cfg.model.dtype != "auto" else "auto@cuda"}
    return {"device": dev.type, "dtype": str(dtype_for(dev, cfg.model.dtype)).replace("torch.", "")}


def swept_key(cfg: MTAConfig) -> dict | None:
    """mta_swept's settings as they enter the record key (None without eval.swept)."""
    if not cfg.eval.swept:
        return None
    sw = swept_settings(cfg.eval.swept)
    return {"fusion": asdict(sw["fusion"]), "stacking": asdict(sw["stacking"])}


def record_key(cfg: MTAConfig, data_sha: str, bank_sig: str) -> str:
    """Hash of everything a per-user record depends on: a record is reused on resume only when this
    matches (calibration and mta_prior's lambda are applied at summary time and are not part of it).
    `data_sha`: `split_digest` of the questions file (questions and golds)."""

    e = cfg.eval
    key = {
        "code": code_version(("mta", "suite")),
        "runtime": runtime_key(cfg),
        "data": {k: getattr(cfg.data, k) for k in ("task", "eval_split", "scheme", "select_profile_cap")},
        "data_sha": data_sha,
        "bank": bank_sig,
        "model": model_identity(cfg.model),
        "encoder": cfg.encoder,
        "fusion": asdict(cfg.fusion),
        "stacking": asdict(cfg.stacking),
        "oppu": asdict(cfg.oppu),
        "swept": swept_key(cfg),
        "eval": {
            k: getattr(e, k)
            for k in (
                "methods",
                "inference",
                "rag_k",
                "history_k",
                "max_new_tokens",
                "seed",
                "recency_decay",
                "adapter_twin",
            )
        },
    }
    return json_digest(key)


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x)


def check_user_record(r: dict) -> str | None:
    """The problem with a per-user resume record (naming the field), or None: a record that fails
    is reported and recomputed, never averaged in."""
    for f, t in (("user_id", str), ("key", str), ("queries", list), ("golds", list), ("out", dict), ("cost", dict)):
        if not isinstance(r.get(f), t):
            return f"field {f}: missing or not a {t.__name__}"
    n = len(r["queries"])
    if len(r["golds"]) != n:
        return f"field golds: {len(r['golds'])} golds for {n} queries"
    for part in ("out", "cf"):
        for m, vals in (r.get(part) or {}).items():
            if not isinstance(vals, list) or len(vals) != n:
                return f"field {part}.{m}: not one output per query"
            for v in vals:
                if isinstance(v, list) and not all(_finite(x) for x in v):
                    return f"field {part}.{m}: a label score is not a finite number"
                if not isinstance(v, list | str):
                    return f"field {part}.{m}: an output is neither label scores nor text"
    if r.get("cf_base") is not None and not (isinstance(r["cf_base"], list) and all(_finite(x) for x in r["cf_base"])):
        return "field cf_base: not a list of finite numbers"
    for m, c in r["cost"].items():
        if not isinstance(c, dict):
            return f"field cost.{m}: not an object"
        for k, v in c.items():
            if not _finite(v) or v < 0:
                return f"field cost.{m}.{k}: {v!r} is not a finite number >= 0"
    return None


class Evaluator:
    def __init__(
        self,
        cfg: MTAConfig,
        bank: LoadedBank,
        model,
        codec: TextCodec,
        encoder,
        out_dir: str | Path,
        key: str = "",
        log_name: str = "per_user.jsonl",
    ):
        self.cfg, self.bank, self.codec, self.encoder = cfg, bank, codec, encoder
        self.out = Path(out_dir)
        self.task = cfg.data.task
        self.labels = task_info(self.task).get("labels", [])
        self.label_mode = _uses_labels(self.task, cfg.eval.inference)
        self.host = AdapterHost(model, cfg.anchor_train.target_modules)
        self.key, self.log_name = key, log_name
        self.cf_input = content_free_input(self.task) if self.label_mode else None
        self._base_cf: list[float] | None = None
        self.swept = swept_settings(cfg.eval.swept) if cfg.eval.swept else None  # mta_swept's fusion, stacking

    def base_cf(self) -> list[float]:
        """The primary calibration vector: label scores of the base model (no adapter, no history)
        on the content-free prompt. One vector for every method and user (computed once)."""
        if self._base_cf is None:
            self._base_cf = list(self._with(None, self.cf_input))
        return self._base_cf

    def with_log(self, key: str, log_name: str) -> Evaluator:
        """The same evaluator (one adapter host on one model) writing another resume log."""

        ev = copy.copy(self)
        ev.key, ev.log_name = key, log_name
        return ev

    def _infer(self, prompt: str):
        m = self.host.model
        if self.label_mode:
            return label_logprobs(m, self.codec, prompt, self.labels).tolist()
        return generate(m, self.codec, prompt, self.cfg.eval.max_new_tokens)

    def _with(self, names: list[str] | None, prompt: str):
        if names:
            self.host.activate(names)
            return self._infer(prompt)
        with self.host.model.disable_adapter():
            return self._infer(prompt)

    def user_record(self, user: User, methods: list[str]) -> dict:
        """Everything one user contributes: raw outputs per method and query (label scores for the
        query and for its content-free twin), the user's label log-prior, costs."""
        cfg, task = self.cfg, self.task
        rec: dict = {
            "user_id": user.user_id,
            "key": self.key,
            "queries": [q.id for q in user.queries],
            "golds": [q.gold for q in user.queries],
            "out": {},
            "cf": {},
            "cost": {},
        }
        if self.label_mode:
            rec["cf_base"] = self.base_cf()
        hist = {q.id: history_for(task, user.profile, q.input, cfg.eval.history_k) for q in user.queries}
        rag = {q.id: history_for(task, user.profile, q.input, cfg.eval.rag_k) for q in user.queries}

        def run(name: str, names: list[str] | None, prompts: dict[str, str], cf_hist: dict[str, list[str]] | None):
            rec["out"][name] = [self._with(names, prompts[q.id]) for q in user.queries]
            if self.label_mode and cfg.eval.adapter_twin:  # the same prompt, input blanked: the adapter's own prior
                rec["cf"][name] = [
                    self._with(names, build_prompt(self.cf_input, (cf_hist or {}).get(q.id))) for q in user.queries
                ]

        adapted = {q.id: build_prompt(q.input, hist[q.id]) for q in user.queries}
        emb_cache: list = []

        def user_emb():  # the profile is encoded once per user (fusion, MTA and random share it)
            if not emb_cache:
                emb_cache.append(user_embeddings([user], task, self.encoder)[0])
            return emb_cache[0]

        if "base" in methods:
            run("base", None, {q.id: q.input for q in user.queries}, None)
        if "rag" in methods:
            run("rag", None, {q.id: build_prompt(q.input, rag[q.id]) for q in user.queries}, rag)
        if "prior" in methods:
            rec["out"]["prior"] = [_prior(task, user, q.input, 1.0) for q in user.queries]
        if "prior_recency" in methods:
            rec["out"]["prior_recency"] = [_prior(task, user, q.input, cfg.eval.recency_decay) for q in user.queries]
        if self.label_mode and "label_field" in task_info(task):
            rec["log_prior"] = log_prior(task, user.profile, cfg.eval.recency_decay)
        samples = loo_samples(task, user.profile, 0, cfg.eval.seed, cfg.eval.history_k)
        if "oppu" in methods:
            t0 = time.perf_counter()  # OPPU's adaptation: training the user's own LoRA
            o_cfg = for_adapter(cfg.oppu, "oppu", user.user_id)
            st = self.host.train_new("oppu", samples, o_cfg, self.codec)
            sd = self.host.state_dict("oppu")
            rec["cost"]["oppu"] = {
                "seconds": time.perf_counter() - t0,
                "bytes": adapter_bytes(sd),
                "steps": st.step,
                "rel_update": peft_relative_update(self.host.model, sd, o_cfg.alpha / o_cfg.r),
            }
            run("oppu", ["oppu"], adapted, hist)
            self.host.remove("oppu")
        need_fused = {"fusion", "mta", "mta_prior"} & set(methods)
        if need_fused:
            t0 = time.perf_counter()  # a new user's full path: profile encoding, retrieval, merge
            emb = user_emb()
            fused = fuse(self.bank, emb, cfg.fusion)
            fuse_s = time.perf_counter() - t0
            rec["anchors"] = fused.record()
            rec["cost"]["fusion"] = {
                "seconds": fuse_s,
                "bytes": adapter_bytes({}, fused.record()),
                "merge_ms": fused.seconds * 1000,
            }
            if "fusion" in methods:
                self.host.load_fused(fused)
                run("fusion", ["fused"], adapted, hist)
            if {"mta", "mta_prior"} & set(methods):
                s_cfg = for_adapter(cfg.stacking, "stack", user.user_id)
                st = stack_user(self.host, fused, samples, s_cfg, self.codec)
                # st["seconds"] counts the merge once; the encoding + retrieval before it are added here
                rec["cost"]["mta"] = {
                    "seconds": st["seconds"] + fuse_s - fused.seconds,
                    "bytes": st["bytes"],
                    "steps": st["steps"],
                    "rel_update": peft_relative_update(
                        self.host.model, self.host.state_dict("stack"), s_cfg.alpha / s_cfg.r
                    ),
                }
                run("mta", ["fused", "stack"], adapted, hist)
                if cfg.eval.save_users:  # what serving needs of this user beyond the bank
                    write_record(
                        getattr(cfg, "users_dir", "runs/users"), user.user_id, bank_content_id(self.bank.manifest),
                        fused.anchor_ids, fused.weights, self.host.state_dict("stack"), s_cfg.r, s_cfg.alpha,
                    )  # fmt: skip
                self.host.remove("stack")
            self.host.remove("fused")
        if "mta_swept" in methods:  # the same path as mta under the sweep's fusion and stacking
            t0 = time.perf_counter()
            fused = fuse(self.bank, user_emb(), self.swept["fusion"])
            fuse_s = time.perf_counter() - t0
            rec["anchors_swept"] = fused.record()
            s_cfg = for_adapter(self.swept["stacking"], "stack", user.user_id)
            st = stack_user(self.host, fused, samples, s_cfg, self.codec)
            moved = peft_relative_update(self.host.model, self.host.state_dict("stack"), s_cfg.alpha / s_cfg.r)
            rec["cost"]["mta_swept"] = {
                "seconds": st["seconds"] + fuse_s - fused.seconds,
                "bytes": st["bytes"],
                "steps": st["steps"],
                "rel_update": moved,
            }
            run("mta_swept", ["fused", "stack"], adapted, hist)
            self.host.remove("stack")
            self.host.remove("fused")
        if "uniform" in methods:
            u_cfg = FusionConfig(**{**cfg.fusion.__dict__, "weighting": "uniform"})
            self.host.load_fused(
                fuse(self.bank, np.ones(self.bank.emb.shape[1]), u_cfg, idx=list(range(len(self.bank.ids))))
            )
            run("uniform", ["fused"], adapted, hist)
            self.host.remove("fused")
        if "random" in methods:
            rng = random.Random(f"{cfg.eval.seed}-{user.user_id}")
            idx = rng.sample(range(len(self.bank.ids)), min(cfg.fusion.top_k, len(self.bank.ids)))
            self.host.load_fused(fuse(self.bank, user_emb(), cfg.fusion, idx=idx))
            run("random", ["fused"], adapted, hist)
            self.host.remove("fused")
        self.host.deactivate()
        return rec

    def run(self, users: list[User], on_user=None, methods: list[str] | None = None) -> list[dict]:
        """Evaluate users without a matching record in the log (resume), append each as it finishes;
        records written under another configuration (`key`) are recomputed, never mixed in.
        `on_user(n)` is called after the n-th user of this run is logged."""

        log = self.out / self.log_name
        done = {r["user_id"]: r for r in read_jsonl(log, check_user_record) if r.get("key") == self.key}  # later win
        methods = methods or self.cfg.eval.methods

        def missing(u: User) -> list[str]:
            # a record logged by a run of other methods (selection runs one method) is completed,
            # not trusted: mta_prior is computed from mta's scores at summary time
            have = done.get(u.user_id, {}).get("out")
            if have is None:
                return list(methods)
            return [m for m in methods if ("mta" if m in LABEL_ONLY else m) not in have]

        todo = [(u, missing(u)) for u in users]
        todo = [(u, ms) for u, ms in todo if ms]
        for u, ms in tqdm(todo, desc=f"{self.task} users", disable=not self.cfg.eval.progress):
            rec = self.user_record(u, ms)
            old = done.get(u.user_id)
            if old is not None:  # the same key: the same inputs; add this run's methods to the record
                for part in ("out", "cf", "cost"):
                    rec[part] = {**old.get(part, {}), **rec[part]}
                rec = {**old, **rec}
            append_jsonl(log, rec)
            done[u.user_id] = rec
            if on_user:
                on_user(len(done))
        return [done[u.user_id] for u in users]


def anchor_overlap(task: str, users: list[User], anchors: list[User]) -> dict[str, bool]:
    """Query id -> whether the query item's content (e.g. the movie description) occurs in some
    anchor's profile: a fused adapter may then carry another user's item->label knowledge."""
    seen = {" ".join(item_content(task, it).lower().split()) for a in anchors for it in a.profile}
    seen.discard("")
    return {q.id: " ".join(query_content(task, q.input).lower().split()) in seen for u in users for q in u.queries}


def load_users(cfg: MTAConfig, split: str, anchor_ids: list[str] | None = None) -> tuple[list[User], Path]:
    """Users of `split` and the questions file they came from. Users of the train split are the
    anchor candidates: anchors are dropped (their adapters are in the bank) and the rest are cut to
    their newest `select_profile_cap` items, so they look like the few-shot users evaluated."""

    d = cfg.data
    users = load_task_split(d.task, split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url)
    path = (
        resolve_task_dir(d.task, split, d.root or None, download=d.download, scheme=d.scheme, base_url=d.base_url)
        / f"{split}_questions.json"
    )
    if split == d.train_split:
        skip = set(anchor_ids or [])
        users = [few_shot_view(u, d.select_profile_cap) for u in users if u.user_id not in skip]
    return users, path
