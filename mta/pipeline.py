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
from mta.bank import LoadedBank
from mta.data import User, build_prompt, load_task_split, render_item, resolve_task_dir, save_outputs, task_info
from mta.evaluate import (
    CALIBRATIONS,
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
from suite.config import ConfigError, opt
from suite.io import append_jsonl, json_digest, read_jsonl
from suite.lexical import BM25Index
from suite.models import ModelConfig, TextCodec, model_identity
from suite.stats import compare

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
    select_users: int = opt(16, "train users (not anchors) on which mta_prior's lambda is chosen (0 = none)")
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
    calibration: Literal["auto", "content_free", "batch", "none"] = opt(
        "auto",
        "label-score calibration: auto (content_free for classification, none for "
        "rating) | content_free (no test inputs) | batch (transductive) | none",
    )
    rag_k: int = opt(1, "BM25 items in the RAG prompt")
    history_k: int = opt(1, "BM25 items in adapter-method prompts (as in training)")
    max_new_tokens: int = opt(32, "greedy decoding length")
    seed: int = opt(0, "random-anchor baseline seed")
    recency_decay: float = opt(0.8, "prior_recency / mta_prior: an item's weight is decay**(its age rank, newest 0)")
    prior_lambda: float = opt(-1.0, "mta_prior: weight of log p_user(label); < 0 = chosen on the selection users")
    lambda_grid: list[float] = opt(
        help="mta_prior: lambdas tried on the selection users", factory=lambda: [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    )
    stacking_grid: list[dict] = opt(
        help="stacking settings tried on the selection users (train users, never dev), "
        "e.g. [{max_steps: 2, lr: 5e-4}, {r: 2, max_steps: 8}]; the best by the "
        "task's main metric replaces `stacking` (empty = use `stacking`)",
        factory=list,
    )
    bootstrap: int = opt(10000, "bootstrap resamples for the paired intervals")
    progress: bool = opt(True, "progress bar over users")
    backend: Literal["local", "ray"] = opt(
        "local", "local (in the driver) | ray (one Ray task, re-executed from the resume log if its worker dies)"
    )
    cpus: float = opt(2.0, "ray backend: CPUs reserved by the evaluation task")
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


def _uses_labels(task: str, mode: str) -> bool:
    kind = task_info(task)["kind"]
    return mode == "label" or (mode == "auto" and kind in ("classification", "rating"))


def resolve_calibration(task: str, mode: str) -> str:
    """`auto`: content-free for classification; none for ratings, where subtracting the label prior
    pushes predictions away from the 5 stars most users give (LaMP_3)."""
    if mode != "auto":
        return mode
    return "none" if task_info(task)["kind"] == "rating" else "content_free"


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
    return BM25Index([render_item(task, it) for it in user.profile]).top(text, k)


def few_shot_view(user: User, cap: int) -> User:
    """A train user seen as a few-shot user: only the newest `cap` profile items (0 = all)."""
    if not cap or len(user.profile) <= cap:
        return user
    return User(user.user_id, by_recency(user.profile)[-cap:], user.queries)


def record_key(cfg: MTAConfig, data_sha: str, bank_sig: str) -> str:
    """Hash of everything a per-user record depends on: a record is reused on resume only when this
    matches (calibration and mta_prior's lambda are applied at summary time and are not part of it)."""

    e = cfg.eval
    key = {
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
            for k in ("methods", "inference", "rag_k", "history_k", "max_new_tokens", "seed", "recency_decay")
        },
    }
    return json_digest(key)


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
        hist = {q.id: history_for(task, user.profile, q.input, cfg.eval.history_k) for q in user.queries}
        rag = {q.id: history_for(task, user.profile, q.input, cfg.eval.rag_k) for q in user.queries}

        def run(name: str, names: list[str] | None, prompts: dict[str, str], cf_hist: dict[str, list[str]] | None):
            rec["out"][name] = [self._with(names, prompts[q.id]) for q in user.queries]
            if self.label_mode:  # the same prompt, input blanked: the adapter's own label prior
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
            self.host.train_new("oppu", samples, for_adapter(cfg.oppu, "oppu", user.user_id), self.codec)
            rec["cost"]["oppu"] = {
                "seconds": time.perf_counter() - t0,
                "bytes": adapter_bytes(self.host.state_dict("oppu")),
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
                st = stack_user(self.host, fused, samples, for_adapter(cfg.stacking, "stack", user.user_id), self.codec)
                # st["seconds"] counts the merge once; the encoding + retrieval before it are added here
                rec["cost"]["mta"] = {
                    "seconds": st["seconds"] + fuse_s - fused.seconds,
                    "bytes": st["bytes"],
                    "steps": st["steps"],
                }
                run("mta", ["fused", "stack"], adapted, hist)
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
        done = {r["user_id"]: r for r in read_jsonl(log) if r.get("key") == self.key}
        methods = methods or self.cfg.eval.methods
        for u in tqdm(
            [u for u in users if u.user_id not in done], desc=f"{self.task} users", disable=not self.cfg.eval.progress
        ):
            rec = self.user_record(u, methods)
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
    return calibrate(
        np.asarray(outs, dtype=np.float64),
        calibration,
        np.asarray(cfs, dtype=np.float64) if len(cfs) == len(outs) else None,
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
) -> dict:
    """Turn per-user records into the summary block of one task (and write predictions): metrics
    per method under the chosen calibration, the other calibrations beside, paired intervals and
    tests of every method against MTA (`vs_mta`), costs."""
    calibration = resolve_calibration(task, calibration)
    qids = [q for r in records for q in r["queries"]]
    golds = [g for r in records for g in r["golds"]]
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
    res["vs_mta"] = compare(per_q, reference, binary, higher, n_boot)
    if "prior_recency" in per_q:  # the stretch target: does the model add anything to the best model-free prior?
        res["vs_prior_recency"] = compare(
            {m: per_q[m] for m in ("prior_recency", "mta", "mta_prior") if m in per_q},
            "prior_recency",
            binary,
            higher,
            n_boot,
        )
    res["vs_mta_note"] = (
        "diff = method - MTA on the per-query "
        + primary_metric(task)[0]
        + ("" if higher else " (absolute error: lower is better)")
        + "; ci95 = paired bootstrap; p = "
        + ("exact McNemar" if binary else "paired permutation")
        + "; verdict 'tie' when the interval contains 0"
    )
    if label_mode:
        res["calibration_alternatives"] = {
            c: {
                m: score_task(task, p, golds)
                for m, p in predictions(task, records, methods, True, c, lam).items()
                if not m.startswith("prior")
            }
            for c in CALIBRATIONS
            if c != calibration
        }
    cost = lambda key, f: [r["cost"][key][f] for r in records if key in r.get("cost", {})]  # noqa: E731
    res["bytes_per_user"] = {k: float(np.mean(cost(k, "bytes"))) for k in ("oppu", "fusion", "mta") if cost(k, "bytes")}
    res["adapt_s_per_user"] = {
        k: float(np.mean(cost(k, "seconds"))) for k in ("oppu", "fusion", "mta") if cost(k, "seconds")
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
    return res


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
