"""LaMP metrics (official scoring rules, SPEC §1) and inference: label log-likelihood scoring with
calibration for classification tasks, greedy decoding otherwise."""

from __future__ import annotations

import math
import re

import numpy as np
import torch
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score

from mta.data import ITEM_AS_QUERY, task_info
from suite.device import model_device
from suite.models import TextCodec, generate  # noqa: F401  (generate: re-exported for mta users)

# ----------------------------------------------------------------------------------------- metrics


def parse_label(pred: str, labels: list[str]) -> int:
    """Index of the predicted label, or -1 (counts as wrong, label -1 for F1)."""
    p = pred.strip().strip(".").strip().lower()
    low = [l.lower() for l in labels]
    if p in low:
        return low.index(p)
    hits = [i for i, l in enumerate(low) if l in p]
    return max(hits, key=lambda i: len(low[i])) if hits else -1


def parse_rating(pred: str) -> float | None:
    m = re.search(r"[1-5](?:\.\d+)?", pred.strip())
    return float(m.group(0)) if m else None


def classification_metrics(preds: list[str], golds: list[str], labels: list[str]) -> dict[str, float]:
    p = [parse_label(x, labels) for x in preds]
    g = [parse_label(x, labels) for x in golds]
    return {
        "accuracy": float(accuracy_score(g, p)),
        "f1": float(f1_score(g, p, labels=list(range(len(labels))), average="macro", zero_division=0)),
    }


def rating_metrics(preds: list[str], golds: list[str]) -> dict[str, float]:
    """MAE/RMSE; an unparsable prediction counts as the farthest of 1 and 5 from the gold."""
    errs = []
    for p, g in zip(preds, golds):
        gv = float(g)
        pv = parse_rating(p)
        if pv is None:
            pv = 1.0 if abs(1.0 - gv) > abs(5.0 - gv) else 5.0
        errs.append(abs(pv - gv))
    e = np.asarray(errs, dtype=np.float64)
    return {"mae": float(e.mean()), "rmse": float(math.sqrt((e**2).mean()))}


def rouge_metrics(preds: list[str], golds: list[str]) -> dict[str, float]:
    sc = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    r1, rl = [], []
    for p, g in zip(preds, golds):
        s = sc.score(g, p)
        r1.append(s["rouge1"].fmeasure)
        rl.append(s["rougeL"].fmeasure)
    return {"rouge1": float(np.mean(r1)), "rougeL": float(np.mean(rl))}


def score_task(task: str, preds: list[str], golds: list[str]) -> dict[str, float]:
    info = task_info(task)
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} golds")
    if info["kind"] == "classification":
        return classification_metrics(preds, golds, info["labels"])
    if info["kind"] == "rating":
        return rating_metrics(preds, golds)
    return rouge_metrics(preds, golds)


def per_query_scores(task: str, preds: list[str], golds: list[str]) -> tuple[list[float], bool, bool]:
    """Per-query values of the task's main metric, for paired statistics: (scores, binary,
    higher_is_better) — correctness (0/1), absolute rating error, or ROUGE-1 F."""
    info = task_info(task)
    if info["kind"] == "classification":
        labels = info["labels"]
        return [float(parse_label(p, labels) == parse_label(g, labels) != -1) for p, g in zip(preds, golds)], True, True
    if info["kind"] == "rating":
        out = []
        for p, g in zip(preds, golds):
            gv, pv = float(g), parse_rating(p)
            if pv is None:
                pv = 1.0 if abs(1.0 - gv) > abs(5.0 - gv) else 5.0
            out.append(abs(pv - gv))
        return out, False, False

    sc = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return [float(sc.score(g, p)["rouge1"].fmeasure) for p, g in zip(preds, golds)], False, True


PRIMARY = {"classification": ("accuracy", "max"), "rating": ("mae", "min"), "generation": ("rouge1", "max")}


def primary_metric(task: str) -> tuple[str, str]:
    return PRIMARY[task_info(task)["kind"]]


# --------------------------------------------------------------------------------------- inference


@torch.inference_mode()
def label_logprobs(model, codec: TextCodec, prompt: str, labels: list[str]) -> np.ndarray:
    """Sum of log-probabilities of each label's tokens after the prompt. The prompt is run once and
    its KV cache shared by all labels (batched)."""
    p_ids = codec.prompt_ids(prompt, reserve=16)  # room for the longest label
    l_ids = [codec.ids(l) for l in labels]
    dev = model_device(model)
    prompt_t = torch.tensor([p_ids], device=dev)
    out = model(input_ids=prompt_t, use_cache=True)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    first = first.cpu()
    scores = np.array([float(first[ids[0]]) for ids in l_ids])
    # continuation inputs ids[:-1] predict ids[1:]
    rest = [ids[:-1] for ids in l_ids]
    n_rest = max(len(r) for r in rest)
    if n_rest == 0:
        return scores
    L, P = len(labels), len(p_ids)
    pkv = out.past_key_values
    pkv.batch_repeat_interleave(L)
    pad = codec.pad_id
    ids = torch.full((L, n_rest), pad, dtype=torch.long)
    mask = torch.zeros((L, P + n_rest), dtype=torch.long)
    mask[:, :P] = 1
    for i, r in enumerate(rest):
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, P : P + len(r)] = 1
    pos = torch.arange(P, P + n_rest).unsqueeze(0).expand(L, -1)
    logits = model(
        input_ids=ids.to(dev), attention_mask=mask.to(dev), past_key_values=pkv, position_ids=pos.to(dev)
    ).logits.float()
    lp = torch.log_softmax(logits, -1).cpu()
    for i, full in enumerate(l_ids):
        for j in range(1, len(full)):
            scores[i] += float(lp[i, j - 1, full[j]])
    return scores


@torch.inference_mode()
def label_logprobs_naive(model, codec: TextCodec, prompt: str, labels: list[str]) -> np.ndarray:
    """Reference implementation (one full forward per label) used to test the cached one."""
    p_ids = codec.prompt_ids(prompt, reserve=16)
    out = []
    for l in labels:
        ids = codec.ids(l)
        x = torch.tensor([p_ids + ids], device=model_device(model))
        lp = torch.log_softmax(model(input_ids=x).logits[0].float(), -1).cpu()
        out.append(sum(float(lp[len(p_ids) + j - 1, t]) for j, t in enumerate(ids)))
    return np.array(out)


CALIBRATIONS = ("base_content_free", "adapter_content_free", "batch", "none")
# the calibrations that do not depend on the method being calibrated: only these may order methods
METHOD_INDEPENDENT = ("base_content_free", "none")


def content_free_input(task: str) -> str:
    """The task's query with its content replaced by "N/A" (Zhao et al., 2021, "Calibrate before
    use"): scoring the labels after it measures the model's label prior for that prompt alone."""

    info = task_info(task)
    fields = {f: "N/A" for f in info["fields"]}
    return ITEM_AS_QUERY[task].format(labels=", ".join(info.get("labels", [])), **fields)


def calibrate(
    scores: np.ndarray,
    mode: str = "base_content_free",
    cf_scores: np.ndarray | None = None,
    base_cf: np.ndarray | None = None,
) -> np.ndarray:
    """Label-score calibration.
    - `base_content_free` (primary; the same for every method): subtract the label scores of the
      base model — no adapter, no history — on the content-free prompt (`base_cf`, one vector).
      It removes the fixed prompt's label bias (Zhao et al. calibrate a fixed prompt) and keeps
      every shift a method's adapter, history or retrieval brings;
    - `adapter_content_free` (kept beside, not for ordering methods): subtract the same method's
      scores on its content-free twin, which keeps the user's adapter and retrieved history
      (`cf_scores`, one row per query): it subtracts the very evidence a method adds;
    - `batch` (transductive, kept for comparison): subtract each label's mean over the queries scored
      together — every prediction then depends on the other evaluated queries;
    - `none`."""
    scores = np.asarray(scores, dtype=np.float64)
    if mode == "none":
        return scores
    if mode == "base_content_free":
        if base_cf is None:
            raise ValueError("base_content_free calibration needs the base model's content-free scores")
        return scores - np.asarray(base_cf, dtype=np.float64).reshape(1, -1)
    if mode == "adapter_content_free":
        if cf_scores is None:
            raise ValueError("adapter_content_free calibration needs each method's content-free scores")
        return scores - np.asarray(cf_scores, dtype=np.float64)
    if mode == "batch":
        return scores - scores.mean(0, keepdims=True) if len(scores) >= 2 else scores
    raise ValueError(f"unknown calibration {mode!r}; expected one of {CALIBRATIONS}")
