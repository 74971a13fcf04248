"""MTA and its baselines evaluated on one LaMP task (library code: no Ray, no W&B, no argparse).

For each evaluation user, in one pass: base (no history), RAG (BM25 top-k items in the prompt),
the profile priors (no model; `prior_recency` weights newer items more), OPPU (a full r=8 LoRA
trained per user), fusion (fused anchors, no stacking), MTA (fusion + stacked LoRA), `mta_prior`
(MTA's calibrated label scores + lambda * log p_user(label)), uniform (all anchors, uniform
weights) and random anchors. Per-user raw results (label scores of each query and of its
content-free twin) are appended to `per_user.jsonl` under a hash of the configuration, so an
interrupted run resumes where it stopped and a changed configuration never reuses old records;
calibration, lambda and statistics are applied once all users are in.
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from mta.adapters import AdapterHost
from mta.anchors import AnchorConfig, user_embeddings
from mta.bank import LoadedBank, bank_content_id
from mta.data import (
    TASKS,
    User,
    build_prompt,
    item_content,
    load_task_split,
    query_content,
    render_item,
    resolve_task_dir,
    save_outputs,
    task_info,
)
from mta.diagnostics import peft_relative_update
from mta.evaluate import (
    CALIBRATIONS,
    METHOD_INDEPENDENT,
    calibrate,
    content_free_input,
    generate,
    label_logprobs,
    per_query_scores,
    primary_metric,
    score_task,
)
from mta.fusion import FusionConfig, fuse
from mta.stacking import StackConfig, adapter_bytes, stack_user
from mta.training import LoraTrainConfig, for_adapter, history_for, loo_samples
from mta.users import write_record
from suite.config import ConfigError, opt
from suite.device import current as current_device
from suite.device import dtype_for
from suite.io import append_jsonl, json_digest, read_jsonl, sha256_file
from suite.lexical import BM25Index
from suite.models import ModelConfig, TextCodec, model_identity
from suite.provenance import code_version
from suite.stats import compare, deciding_test, describe

MIN_SELECT_USERS = 32  # an experiment's choices rest on at least this many train users ...
MIN_CANDIDATES = 4  # ... among at least this many candidates per trained method
ALL_METHODS = ["base", "rag", "prior", "prior_recency", "oppu", "fusion", "mta", "mta_prior", "uniform", "random"]
LABEL_ONLY = {"mta_prior"}  # methods that need label scores (classification / rating tasks)


@dataclass
class DataConfig:
    task: str = opt("LaMP_2", "LaMP task: LaMP_1,2,3,4,5,7")
    root: str = opt(
        "", "data folder (holding LaMP_k/ or the split files); empty = ../shared/data/lamp_like, then download"
    )
    train_split: str = opt("train", "split whose users are anchor candidates")
    eval_split: str = opt("dev", "split whose users are evaluated (`train`: the train users that are not anchors)")
    scheme: Literal["user", "time"] = opt("user", "user | time (official download layout)")
    max_eval_users: int = opt(0, "evaluate the first N users (0 = all)")
    max_train_users: int = opt(0, "anchor candidates kept (0 = all)")
    select_users: int = opt(
        32,
        "train users (not anchors) on which every trained method's settings are chosen (0 = none); "
        f"an experiment needs >= {MIN_SELECT_USERS}",
    )
    select_profile_cap: int = opt(
        10, "newest profile items kept for train users used as few-shot users (selection, sweeps on eval_split=train)"
    )
    download: bool = opt(True, "download the official files when not found locally")
    base_url: str = opt("https://ciir.cs.umass.edu/downloads/LaMP", "official LaMP host")


@dataclass
class EvalConfig:
    methods: list[str] = opt(help="methods to run", factory=lambda: list(ALL_METHODS))
    inference: Literal["auto", "label", "generate"] = opt(
        "auto", "auto (label scoring for classification/rating, else greedy) | label | generate"
    )
    calibration: Literal["auto", "base_content_free", "none"] = opt(
        "auto",
        "primary label-score calibration, the same for every method: auto (base_content_free for "
        "classification, none for rating) | base_content_free (the base model's label scores on the "
        "content-free prompt, no adapter, no history) | none. adapter_content_free and batch are "
        "always reported beside; they depend on the method and never order methods",
    )
    adapter_twin: bool = opt(
        False,
        "also score each method's content-free twin (its own adapter and history, input blanked) to "
        "report the adapter_content_free calibration beside; doubles label scoring",
    )
    rag_k: int = opt(1, "BM25 items in the RAG prompt")
    history_k: int = opt(1, "BM25 items in adapter-method prompts (as in training)")
    max_new_tokens: int = opt(32, "greedy decoding length")
    seed: int = opt(0, "random-anchor baseline seed")
    recency_decay: float = opt(
        0.8, "prior_recency / mta_prior: an item's weight is decay**(its age rank, newest 0)", lo=0, lo_open=True, hi=1
    )
    prior_lambda: float = opt(1.0, "mta_prior: weight of log p_user(label); < 0 = chosen from lambda_grid", lo=None)
    lambda_grid: list[float] = opt(
        help="mta_prior: lambdas tried on the selection users when prior_lambda < 0", factory=list
    )
    stacking_grid: list[dict] = opt(
        help="stacking settings tried on the selection users (train users, never dev), "
        "e.g. [{max_steps: 2, lr: 5e-4}, {r: 2, max_steps: 8}]; the best by the "
        "task's main metric replaces `stacking` (empty = use `stacking`)",
        factory=list,
    )
    oppu_grid: list[dict] = opt(
        help="OPPU settings tried on the same selection users, e.g. [{lr: 1e-4, epochs: 3}, {lr: 1e-3}]; "
        "the best replaces `oppu` (empty = use `oppu`). Every trained method gets the same number of "
        "candidates (a fixed setting counts as one): unequal budgets are refused when the config is read",
        factory=list,
    )
    save_users: bool = opt(
        False, "write each evaluated user's record (anchors, weights, stacked LoRA) to users_dir, as ray_jobs.adapt"
    )
    bootstrap: int = opt(10000, "bootstrap resamples for the paired intervals")
    purpose: Literal["experiment", "pipeline_check"] = opt(
        "experiment",
        "experiment | pipeline_check (a run too small to compare methods, e.g. the demo: "
        "its table is printed without comparisons and the summary says so)",
    )
    progress: bool = opt(True, "progress bar over users")
    backend: Literal["local", "ray"] = opt(
        "local", "local (in the driver) | ray (one Ray task, re-executed from the resume log if its worker dies)"
    )
    cpus: float = opt(2.0, "ray backend: CPUs reserved by the evaluation task", lo=0, lo_open=True)
    gpus: float = opt(0.0, "ray backend: GPUs reserved by the evaluation task")
    max_retries: int = opt(3, "ray backend: re-executions after the task's worker dies")
    fail_at: dict = opt(
        help="fault injection for tests: {after_users: N, marker: PATH} kills the task's worker "
        "once, after its N-th user",
        factory=dict,
    )

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"eval.methods: {unknown or 'empty'} not among {ALL_METHODS}")

    def budgets(self, label_task: bool = True) -> dict[str, int]:
        """Candidates each trained method chooses among on the selection users (fixed = 1);
        `mta_prior` exists only on label-scored tasks."""
        out = {}
        if "oppu" in self.methods:
            out["oppu"] = len(self.oppu_grid) or 1
        if {"mta", "mta_prior"} & set(self.methods):
            out["mta (stack)"] = len(self.stacking_grid) or 1
        if "mta_prior" in self.methods and label_task:
            out["mta_prior (lambda)"] = len(self.lambda_grid) if self.prior_lambda < 0 else 1
        return out


@dataclass
class MTAConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: str = opt("minilm", "user/anchor encoder: minilm | hashing | hub id / path")
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    anchor_train: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    stacking: StackConfig = field(default_factory=StackConfig)
    oppu: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):  # one tuning budget for every trained method, on train users only
        e = self.eval
        label_task = _uses_labels(self.data.task, e.inference) if self.data.task in TASKS else True
        if e.prior_lambda < 0 and not e.lambda_grid:
            raise ConfigError("eval.prior_lambda < 0 asks for a choice among eval.lambda_grid, which is empty")
        grids = e.oppu_grid or e.stacking_grid or (e.prior_lambda < 0 and label_task)
        if grids and self.data.select_users <= 0:
            raise ConfigError("eval.*_grid / prior_lambda < 0 choose on train users: data.select_users must be > 0")
        b = e.budgets(label_task)
        if grids and e.purpose == "experiment":  # enough evidence for each choice, checked before any work
            if self.data.select_users < MIN_SELECT_USERS:
                raise ConfigError(
                    f"data.select_users={self.data.select_users}: an experiment chooses its settings on at least "
                    f"{MIN_SELECT_USERS} train users (or set eval.purpose=pipeline_check)"
                )
            few = {m: n for m, n in b.items() if n < MIN_CANDIDATES}
            if few:
                raise ConfigError(
                    f"{few} candidates: an experiment chooses among at least {MIN_CANDIDATES} per trained "
                    "method (eval.oppu_grid, eval.stacking_grid, eval.lambda_grid), or set eval.purpose=pipeline_check"
                )
        if len(set(b.values())) > 1:
            raise ConfigError(
                "unequal tuning budgets: "
                + ", ".join(f"{m}: {n}" for m, n in b.items())
                + " candidates; give every trained method the same number (eval.oppu_grid, "
                "eval.stacking_grid, eval.lambda_grid)"
            )


def _uses_labels(task: str, mode: str) -> bool:
    kind = task_info(task)["kind"]
    return mode == "label" or (mode == "auto" and kind in ("classification", "rating"))


def resolve_calibration(task: str, mode: str) -> str:
    """`auto`: the base model's content-free scores for classification; none for ratings, where
    subtracting the label prior pushes predictions away from the 5 stars most users give (LaMP_3).
    Both are the same for every method."""
    if mode != "auto":
        return mode
    return "none" if task_info(task)["kind"] == "rating" else "base_content_free"


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


def by_recency(profile: list[dict]) -> list[dict]:
    """Profile items oldest first: by `date` when every item has one, else in file order."""
    if profile and all(it.get("date") not in (None, "") for it in profile):
        return [it for _, it in sorted(enumerate(profile), key=lambda p: (str(p[1]["date"]), p[0]))]
    return list(profile)


def label_weights(task: str, profile: list[dict], decay: float) -> dict[str, float]:
    """Recency-weighted label counts of a profile (decay 1 = plain counts)."""
    field_ = task_info(task)["label_field"]
    items = by_recency(profile)
    w: dict[str, float] = {}
    for age, it in enumerate(reversed(items)):
        w[str(it[field_])] = w.get(str(it[field_]), 0.0) + decay**age
    return w


def log_prior(task: str, profile: list[dict], decay: float) -> list[float]:
    """log p_user(label) over the task's labels, recency-weighted, add-one smoothed."""
    labels = task_info(task)["labels"]
    w = label_weights(task, profile, decay)
    tot = sum(w.values()) + len(labels)
    return [float(np.log((w.get(l, 0.0) + 1.0) / tot)) for l in labels]


def _prior(task: str, user: User, query_input: str, decay: float = 1.0) -> str:
    """Model-free profile prior. Classification: the most frequent label, ties broken by the newest
    item (decay 1) or recency-weighted counts (decay < 1); rating: the (recency-weighted) mean
    score; generation: the output of the BM25 top-1 profile item."""
    info = task_info(task)
    if info["kind"] == "classification":
        w = label_weights(task, user.profile, decay)
        newest = {str(it[info["label_field"]]): age for age, it in enumerate(reversed(by_recency(user.profile)))}
        return max(w, key=lambda l: (round(w[l], 9), -newest[l]))
    if info["kind"] == "rating":
        items = by_recency(user.profile)
        ws = np.array([decay**age for age in range(len(items))][::-1])
        return f"{np.average([float(it['score']) for it in items], weights=ws):.2f}"
    hist = [user.profile[i] for i in _bm25_idx(task, user, query_input, 1)]
    return str(hist[0][info["output_field"]]) if hist else ""


def _bm25_idx(task, user, text, k):
    return BM25Index([render_item(task, it) for it in user.profile]).top(query_content(task, text), k)


def few_shot_view(user: User, cap: int) -> User:
    """A train user seen as a few-shot user: only the newest `cap` profile items (0 = all)."""
    if not cap or len(user.profile) <= cap:
        return user
    return User(user.user_id, by_recency(user.profile)[-cap:], user.queries)


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


def _label_scores(records: list[dict], m: str, calibration: str) -> np.ndarray | None:
    outs = [o for r in records for o in r["out"].get(m, [])]
    cfs = [o for r in records for o in r.get("cf", {}).get(m, [])]
    if not outs:
        return None
    base = next((r["cf_base"] for r in records if r.get("cf_base") is not None), None)
    return calibrate(
        np.asarray(outs, dtype=np.float64),
        calibration,
        np.asarray(cfs, dtype=np.float64) if len(cfs) == len(outs) else None,
        np.asarray(base, dtype=np.float64) if base is not None else None,
    )


def mta_prior_scores(records: list[dict], calibration: str, lam: float) -> np.ndarray | None:
    """MTA's calibrated label scores + lambda * log p_user(label)."""
    s = _label_scores(records, "mta", calibration)
    if s is None or any("log_prior" not in r for r in records):
        return None
    lp = np.asarray([r["log_prior"] for r in records for _ in r["queries"]], dtype=np.float64)
    return s + lam * lp


def choose_lambda(task: str, records: list[dict], calibration: str, grid: list[float]) -> tuple[float, dict]:
    """The lambda of mta_prior with the best main metric on `records` (train users, never dev);
    ties → the smallest lambda."""
    labels = task_info(task)["labels"]
    golds = [g for r in records for g in r["golds"]]
    metric, mode = primary_metric(task)
    scores = {}
    for lam in grid:
        s = mta_prior_scores(records, calibration, lam)
        if s is None:
            return 0.0, {}
        scores[lam] = score_task(task, [labels[i] for i in s.argmax(1)], golds)[metric]
    best = (max if mode == "max" else min)(scores.values())
    return min(l for l, v in scores.items() if v == best), {str(k): v for k, v in scores.items()}


def predictions(
    task: str, records: list[dict], methods: list[str], label_mode: bool, calibration: str, lam: float = 0.0
) -> dict[str, list[str]]:
    labels = task_info(task).get("labels", [])
    n = sum(len(r["queries"]) for r in records)
    out = {}
    for m in methods:
        if m == "mta_prior":
            s = mta_prior_scores(records, calibration, lam) if label_mode else None
            if s is not None:
                out[m] = [labels[i] for i in s.argmax(1)]
            continue
        outs = [o for r in records for o in r["out"].get(m, [])]
        if len(outs) != n or not outs:
            continue
        if label_mode and not m.startswith("prior"):
            out[m] = [labels[i] for i in _label_scores(records, m, calibration).argmax(1)]
        else:
            out[m] = [str(o) for o in outs]
    return out


def require_both_calibrations(primary: dict, uncalibrated: dict) -> None:
    """An order must hold under every calibration shown: where the uncalibrated test's verdict
    differs from the primary one, the verdict becomes "n.s." with `calibration_dependent: true`
    (the primary verdict is kept as `verdict_primary`). Mutates `primary`'s rows."""
    for m, v in primary.items():
        other = uncalibrated.get(m, {}).get("verdict", "n.s.")
        v["verdict_primary"] = v["verdict"]
        v["verdict_uncalibrated"] = other
        v["calibration_dependent"] = other != v["verdict"]
        if v["calibration_dependent"]:
            v["verdict"] = "n.s."


def summarize(
    task: str,
    records: list[dict],
    methods: list[str],
    label_mode: bool,
    calibration: str,
    out_dir: str | Path | None = None,
    lam: float = 0.0,
    n_boot: int = 10000,
    reference: str = "mta",
    overlap: dict[str, bool] | None = None,
) -> dict:
    """Turn per-user records into the summary block of one task (and write predictions): metrics
    per method under the primary calibration (the same for every method), the other calibrations
    beside, exact paired tests of every method against MTA with Holm's correction (`vs_mta`; users
    are the resampled unit), the same tests without calibration (an order holds only when both
    agree), costs, each trained adapter's relative update, and results split by whether the query
    item occurs in an anchor's profile (`overlap`: query id -> bool)."""
    calibration = resolve_calibration(task, calibration)
    qids = [q for r in records for q in r["queries"]]
    golds = [g for r in records for g in r["golds"]]
    users = [r["user_id"] for r in records for _ in r["queries"]]
    res: dict = {
        "n_users": len(records),
        "n_queries": len(qids),
        "methods": {},
        "inference": "label_scoring" if label_mode else "greedy",
        "calibration": calibration if label_mode else None,
    }
    preds = predictions(task, records, methods, label_mode, calibration, lam)
    per_q, binary, higher = {}, False, True
    for m, p in preds.items():
        res["methods"][m] = score_task(task, p, golds)
        per_q[m], binary, higher = per_query_scores(task, p, golds)
        if out_dir is not None:
            save_outputs(Path(out_dir) / "predictions" / task / f"{m}.json", task, dict(zip(qids, p)))
    if "mta_prior" in preds:
        res["mta_prior_lambda"] = lam

    def table(pq: dict, ref: str) -> dict:
        return compare(pq, ref, binary, higher, n_boot, clusters=users)

    res["vs_mta"] = table(per_q, reference)
    pr_keys = ("prior_recency", "mta", "mta_prior")
    if "prior_recency" in per_q:  # the stretch target: does the model add anything to the best model-free prior?
        res["vs_prior_recency"] = table({m: per_q[m] for m in pr_keys if m in per_q}, "prior_recency")
    if label_mode and calibration != "none":  # an order of methods must not be made by the calibration
        none_q = {
            m: per_query_scores(task, p, golds)[0]
            for m, p in predictions(task, records, methods, True, "none", lam).items()
        }
        res["vs_mta_uncalibrated"] = table(none_q, reference)
        require_both_calibrations(res["vs_mta"], res["vs_mta_uncalibrated"])
        if "vs_prior_recency" in res:
            res["vs_prior_recency_uncalibrated"] = table(
                {m: none_q[m] for m in pr_keys if m in none_q}, "prior_recency"
            )
            require_both_calibrations(res["vs_prior_recency"], res["vs_prior_recency_uncalibrated"])
    res["vs_mta_note"] = (
        "diff = method - MTA on the per-query "
        + primary_metric(task)[0]
        + ("" if higher else " (absolute error: lower is better)")
        + "; "
        + describe(binary, "users", deciding_test(res["vs_mta"]))
        + (f"; primary calibration {calibration}, the same for every method" if label_mode else "")
    )
    if label_mode:
        res["calibration_alternatives"] = {
            c: {
                m: score_task(task, p, golds)
                for m, p in predictions(task, records, methods, True, c, lam).items()
                if not m.startswith("prior")
            }
            for c in CALIBRATIONS
            if c != calibration and (c != "adapter_content_free" or all(r.get("cf") for r in records))
        }
        res["calibration_alternatives_note"] = (
            f"{', '.join(METHOD_INDEPENDENT)} are the same for every method; adapter_content_free and "
            "batch depend on the method (or on the other evaluated users) and never order methods"
        )
    if "mta" in preds and "fusion" in preds:  # is stage 3 exercised at all?
        res["mta_differs_from_fusion"] = float(np.mean([a != b for a, b in zip(preds["mta"], preds["fusion"])]))
    cost = lambda key, f: [r["cost"][key][f] for r in records if f in r.get("cost", {}).get(key, {})]  # noqa: E731
    res["bytes_per_user"] = {k: float(np.mean(cost(k, "bytes"))) for k in ("oppu", "fusion", "mta") if cost(k, "bytes")}
    res["adapt_s_per_user"] = {
        k: float(np.mean(cost(k, "seconds"))) for k in ("oppu", "fusion", "mta") if cost(k, "seconds")
    }
    res["rel_update"] = {
        name: float(np.mean(cost(k, "rel_update")))
        for k, name in (("oppu", "oppu"), ("mta", "stack"))
        if cost(k, "rel_update")
    }
    ms = cost("fusion", "merge_ms")
    if ms:
        res["merge_ms_per_user"] = float(np.mean(ms))
    o, m_ = res["bytes_per_user"].get("oppu"), res["bytes_per_user"].get("mta")
    a_o, a_m = res["adapt_s_per_user"].get("oppu"), res["adapt_s_per_user"].get("mta")
    if o and m_:
        res["ratios"] = {"bytes_mta_over_oppu": m_ / o}
        if a_o and a_m:
            res["ratios"]["adapt_s_mta_over_oppu"] = a_m / a_o
    if overlap is not None:
        res["by_overlap"] = {}
        for side, want in (("overlap", True), ("no_overlap", False)):
            idx = [i for i, q in enumerate(qids) if overlap.get(q) is want]
            res["by_overlap"][side] = {
                "n": len(idx),
                "methods": {m: score_task(task, [p[i] for i in idx], [golds[i] for i in idx]) for m, p in preds.items()}
                if idx
                else {},
            }
        res["by_overlap"]["note"] = "overlap: the query item's content occurs in some anchor's training profile"
    return res


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
