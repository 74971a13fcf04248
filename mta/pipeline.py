"""MTA and its baselines evaluated on one LaMP task (library code: no Ray, no W&B, no argparse).

For each evaluation user, in one pass: base (no history), RAG (BM25 top-k items in the prompt),
the profile prior (no model), OPPU (a full r=8 LoRA trained per user), fusion (fused anchors, no
stacking), MTA (fusion + stacked LoRA), uniform (all anchors, uniform weights) and random anchors.
Per-user raw results are appended to `per_user.jsonl`, so an interrupted run resumes where it
stopped; classification scores are calibrated and scored once all users are in.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mta.adapters import AdapterHost
from mta.anchors import AnchorConfig, user_embeddings
from mta.bank import LoadedBank
from mta.data import User, build_prompt, most_frequent, render_item, save_outputs, task_info
from mta.evaluate import calibrate, generate, label_logprobs, score_task
from mta.fusion import FusionConfig, fuse
from mta.models import ModelConfig
from mta.stacking import StackConfig, adapter_bytes, stack_user
from mta.training import LoraTrainConfig, history_for, loo_samples
from suite.config import opt
from suite.io import append_jsonl, read_jsonl

ALL_METHODS = ["base", "rag", "prior", "oppu", "fusion", "mta", "uniform", "random"]


@dataclass
class DataConfig:
    task: str = opt("LaMP_2", "LaMP task: LaMP_1,2,3,4,5,7")
    root: str = opt("", "data folder (holding LaMP_k/ or the split files); empty = ../shared/data/lamp_like, then download")
    train_split: str = opt("train", "split whose users are anchor candidates")
    eval_split: str = opt("dev", "split whose users are evaluated")
    scheme: str = opt("user", "user | time (official download layout)")
    max_eval_users: int = opt(0, "evaluate the first N users (0 = all)")
    max_train_users: int = opt(0, "anchor candidates kept (0 = all)")
    download: bool = opt(True, "download the official files when not found locally")
    base_url: str = opt("https://ciir.cs.umass.edu/downloads/LaMP", "official LaMP host")


@dataclass
class EvalConfig:
    methods: list[str] = opt(help="methods to run", factory=lambda: list(ALL_METHODS))
    inference: str = opt("auto", "auto (label scoring for classification/rating, else greedy) | label | generate")
    calibration: str = opt("batch", "label-score calibration: batch (subtract each label's mean) | none")
    rag_k: int = opt(1, "BM25 items in the RAG prompt")
    history_k: int = opt(1, "BM25 items in adapter-method prompts (as in training)")
    max_new_tokens: int = opt(32, "greedy decoding length")
    seed: int = opt(0, "random-anchor baseline seed")
    progress: bool = opt(True, "progress bar over users")
    backend: str = opt("local", "local (in the driver) | ray (one Ray task, re-executed from the resume log if its worker dies)")
    cpus: float = opt(2.0, "ray backend: CPUs reserved by the evaluation task")
    gpus: float = opt(0.0, "ray backend: GPUs reserved by the evaluation task")
    max_retries: int = opt(3, "ray backend: re-executions after the task's worker dies")
    fail_at: dict = opt(help="fault injection for tests: {after_users: N, marker: PATH} kills the task's worker "
                             "once, after its N-th user", factory=dict)


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


def _prior(task: str, user: User, query_input: str) -> str:
    info = task_info(task)
    if info["kind"] == "classification":
        return most_frequent([str(it[info["label_field"]]) for it in user.profile])
    if info["kind"] == "rating":
        return f"{np.mean([float(it['score']) for it in user.profile]):.2f}"
    hist = [user.profile[i] for i in _bm25_idx(task, user, query_input, 1)]
    return str(hist[0][info["output_field"]]) if hist else ""


def _bm25_idx(task, user, text, k):
    from suite.lexical import BM25Index

    return BM25Index([render_item(task, it) for it in user.profile]).top(text, k)


class Evaluator:
    def __init__(self, cfg: MTAConfig, bank: LoadedBank, model, tok, encoder, out_dir: str | Path):
        self.cfg, self.bank, self.tok, self.encoder = cfg, bank, tok, encoder
        self.out = Path(out_dir)
        self.task = cfg.data.task
        self.labels = task_info(self.task).get("labels", [])
        self.label_mode = _uses_labels(self.task, cfg.eval.inference)
        self.host = AdapterHost(model, cfg.anchor_train.target_modules)
        self.use_chat = cfg.model.chat_template

    def _infer(self, prompt: str):
        m = self.host.model
        if self.label_mode:
            return label_logprobs(m, self.tok, prompt, self.labels, self.use_chat, self.cfg.model.max_length).tolist()
        return generate(m, self.tok, prompt, self.cfg.eval.max_new_tokens, self.use_chat, self.cfg.model.max_length)

    def _with(self, names: list[str] | None, prompt: str):
        if names:
            self.host.activate(names)
            return self._infer(prompt)
        with self.host.model.disable_adapter():
            return self._infer(prompt)

    def user_record(self, user: User, methods: list[str]) -> dict:
        """Everything one user contributes: raw outputs per method and query, costs."""
        cfg, task = self.cfg, self.task
        rec: dict = {"user_id": user.user_id, "queries": [q.id for q in user.queries],
                     "golds": [q.gold for q in user.queries], "out": {}, "cost": {}}
        hist = {q.id: history_for(task, user.profile, q.input, cfg.eval.history_k) for q in user.queries}
        rag = {q.id: history_for(task, user.profile, q.input, cfg.eval.rag_k) for q in user.queries}
        adapted = lambda names: [self._with(names, build_prompt(q.input, hist[q.id])) for q in user.queries]  # noqa: E731
        if "base" in methods:
            rec["out"]["base"] = [self._with(None, q.input) for q in user.queries]
        if "rag" in methods:
            rec["out"]["rag"] = [self._with(None, build_prompt(q.input, rag[q.id])) for q in user.queries]
        if "prior" in methods:
            rec["out"]["prior"] = [_prior(task, user, q.input) for q in user.queries]
        samples = loo_samples(task, user.profile, 0, cfg.eval.seed, cfg.eval.history_k)
        if "oppu" in methods:
            t0 = time.perf_counter()
            self.host.train_new("oppu", samples, cfg.oppu, self.tok, max_length=cfg.model.max_length, use_chat=self.use_chat)
            rec["cost"]["oppu"] = {"seconds": time.perf_counter() - t0, "bytes": adapter_bytes(self.host.state_dict("oppu"))}
            rec["out"]["oppu"] = adapted(["oppu"])
            self.host.remove("oppu")
        need_fused = {"fusion", "mta"} & set(methods)
        if need_fused:
            emb = user_embeddings([user], task, self.encoder)[0]
            fused = fuse(self.bank, emb, cfg.fusion)
            rec["anchors"] = fused.record()
            rec["cost"]["fusion_ms"] = fused.seconds * 1000
            if "fusion" in methods:
                self.host.load_fused(fused)
                rec["out"]["fusion"] = adapted(["fused"])
            if "mta" in methods:
                st = stack_user(self.host, fused, samples, cfg.stacking, self.tok, cfg.model.max_length, self.use_chat)
                rec["cost"]["mta"] = {"seconds": st["seconds"], "bytes": st["bytes"], "steps": st["steps"]}
                rec["out"]["mta"] = adapted(["fused", "stack"])
                self.host.remove("stack")
            self.host.remove("fused")
        if "uniform" in methods:
            u_cfg = FusionConfig(**{**cfg.fusion.__dict__, "weighting": "uniform"})
            self.host.load_fused(fuse(self.bank, np.ones(self.bank.emb.shape[1]), u_cfg, idx=list(range(len(self.bank.ids)))))
            rec["out"]["uniform"] = adapted(["fused"])
            self.host.remove("fused")
        if "random" in methods:
            rng = random.Random(f"{cfg.eval.seed}-{user.user_id}")
            idx = rng.sample(range(len(self.bank.ids)), min(cfg.fusion.top_k, len(self.bank.ids)))
            emb = user_embeddings([user], task, self.encoder)[0]
            self.host.load_fused(fuse(self.bank, emb, cfg.fusion, idx=idx))
            rec["out"]["random"] = adapted(["fused"])
            self.host.remove("fused")
        self.host.deactivate()
        return rec

    def run(self, users: list[User], on_user=None) -> list[dict]:
        """Evaluate users not yet in per_user.jsonl (resume), append each as it finishes;
        `on_user(n)` is called after the n-th user of this run is logged."""
        from tqdm.auto import tqdm

        log = self.out / "per_user.jsonl"
        done = {r["user_id"]: r for r in read_jsonl(log)}
        methods = self.cfg.eval.methods
        for u in tqdm([u for u in users if u.user_id not in done], desc=f"{self.task} users",
                      disable=not self.cfg.eval.progress):
            rec = self.user_record(u, methods)
            append_jsonl(log, rec)
            done[u.user_id] = rec
            if on_user:
                on_user(len(done))
        return [done[u.user_id] for u in users]


def summarize(task: str, records: list[dict], methods: list[str], label_mode: bool, calibration: str,
              out_dir: str | Path | None = None) -> dict:
    """Turn per-user records into the summary block of one task (and write predictions)."""
    labels = task_info(task).get("labels", [])
    qids = [q for r in records for q in r["queries"]]
    golds = [g for r in records for g in r["golds"]]
    res: dict = {"n_users": len(records), "n_queries": len(qids), "methods": {},
                 "inference": ("label_scoring" if label_mode else "greedy") + (f"+{calibration}_calibration" if label_mode else "")}
    for m in methods:
        outs = [o for r in records for o in r["out"].get(m, [])]
        if len(outs) != len(qids):
            continue
        if m != "prior" and label_mode:
            s = calibrate(np.asarray(outs, dtype=np.float64), calibration)
            preds = [labels[i] for i in s.argmax(1)]
        else:
            preds = [str(o) for o in outs]
        res["methods"][m] = score_task(task, preds, golds)
        if out_dir is not None:
            save_outputs(Path(out_dir) / "predictions" / task / f"{m}.json", task, dict(zip(qids, preds)))
    cost = lambda key, f: [r["cost"][key][f] for r in records if key in r.get("cost", {})]  # noqa: E731
    res["bytes_per_user"] = {k: float(np.mean(cost(k, "bytes"))) for k in ("oppu", "mta") if cost(k, "bytes")}
    res["adapt_s_per_user"] = {k: float(np.mean(cost(k, "seconds"))) for k in ("oppu", "mta") if cost(k, "seconds")}
    fms = [r["cost"]["fusion_ms"] for r in records if "fusion_ms" in r.get("cost", {})]
    if fms:
        res["fusion_ms_per_user"] = float(np.mean(fms))
    return res
