"""Stage 2 — adaptive LoRA fusion: retrieve the top-k anchors for a user by cosine similarity of
profile embeddings, weight them, merge their LoRAs. The fused adapter is a pure, deterministic
function of (bank, user embedding, config): built on demand, never stored per user."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from mta import merge
from mta.bank import LoadedBank
from suite.config import ConfigError, opt


@dataclass
class FusionConfig:
    top_k: int = opt(2, "anchors retrieved per user (reference 2)", lo=1)
    weighting: str = opt("similarity", "similarity | softmax | uniform | reference_inverted")
    temperature: float = opt(0.1, "softmax temperature", lo=0, lo_open=True)
    merge: str = opt("cat", "cat (exact) | svd (exact, re-factored to svd_rank) | ref_avg (reference, inexact)")
    svd_rank: int = opt(0, "rank of the svd merge (0 = the anchors' rank)")

    def __post_init__(self):  # registry names, checked at parse time (before any bank is trained)
        if self.merge not in merge.MERGES:
            raise ConfigError(f"fusion.merge: {self.merge!r} is not one of {sorted(merge.MERGES)}")
        if self.weighting not in merge.WEIGHTINGS:
            raise ConfigError(f"fusion.weighting: {self.weighting!r} is not one of {sorted(merge.WEIGHTINGS)}")
        if self.top_k < 1:
            raise ConfigError(f"fusion.top_k: {self.top_k} must be >= 1")


@dataclass
class FusedAdapter:
    anchor_ids: list[str]
    weights: list[float]
    sims: list[float]
    state_dict: dict[str, torch.Tensor]
    r: int
    alpha: float
    target_modules: list[str]
    seconds: float = 0.0

    def lora_kwargs(self) -> dict:
        return {"r": self.r, "lora_alpha": self.alpha, "target_modules": self.target_modules, "lora_dropout": 0.0}

    def record(self) -> dict:
        """What MTA stores per user besides the stacked LoRA: anchor ids and weights."""
        return {"anchors": self.anchor_ids, "weights": [round(w, 6) for w in self.weights]}


def retrieve(anchor_emb: np.ndarray, user_emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and cosine similarities of the top-k anchors, most similar first (stable ties)."""
    a = anchor_emb / np.maximum(np.linalg.norm(anchor_emb, axis=1, keepdims=True), 1e-12)
    u = user_emb / max(float(np.linalg.norm(user_emb)), 1e-12)
    sims = a @ u
    idx = np.argsort(-sims, kind="stable")[: min(k, len(sims))]
    return idx, sims[idx]


def merge_adapters(bank: LoadedBank, idx: list[int], w: np.ndarray, method: str, svd_rank: int = 0):
    """Merge the chosen anchors module by module. Returns (state_dict, rank, alpha)."""
    groups: dict[str, dict[str, list]] = defaultdict(lambda: {"A": [], "B": []})
    for i in idx:
        for key, t in bank.adapters[i].items():
            if ".lora_A." in key:
                groups[key.replace(".lora_A.weight", "")]["A"].append(t)
            elif ".lora_B." in key:
                groups[key.replace(".lora_B.weight", "")]["B"].append(t)
    scales = [bank.scales[i] for i in idx]
    out, rank, scale = {}, None, 1.0
    for mod, f in groups.items():
        if len(f["A"]) != len(idx) or len(f["B"]) != len(idx):
            raise ValueError(f"module {mod} is missing from some anchors")
        A, B, scale = merge.merge_module(method, f["A"], f["B"], scales, list(w), svd_rank)
        out[f"{mod}.lora_A.weight"], out[f"{mod}.lora_B.weight"] = A.contiguous(), B.contiguous()
        rank = A.shape[0]
    # merged updates carry scale 1 (cat/svd fold it in), ref_avg keeps the anchors' alpha / r
    return out, int(rank), float(scale * rank)


def fuse(bank: LoadedBank, user_emb: np.ndarray, cfg: FusionConfig, idx: list[int] | None = None) -> FusedAdapter:
    """Build a user's fused adapter. `idx` overrides retrieval (uniform/random baselines)."""
    t0 = time.perf_counter()
    if idx is None:
        chosen, sims = retrieve(bank.emb, user_emb, cfg.top_k)
    else:
        chosen = np.asarray(idx)
        a = bank.emb[chosen]
        sims = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (user_emb / np.linalg.norm(user_emb))
    w = merge.weights(cfg.weighting, sims, cfg.temperature)
    sd, r, alpha = merge_adapters(bank, [int(i) for i in chosen], w, cfg.merge, cfg.svd_rank)
    targets = sorted(set(bank.configs[int(chosen[0])]["target_modules"]))
    return FusedAdapter(
        [bank.ids[int(i)] for i in chosen],
        [float(x) for x in w],
        [float(s) for s in sims],
        sd,
        r,
        alpha,
        targets,
        time.perf_counter() - t0,
    )


def fuse_chosen(bank: LoadedBank, anchor_ids: list[str], weights: list[float], cfg: FusionConfig) -> FusedAdapter:
    """The fused adapter of a stored choice (a per-user record's anchors and weights), rebuilt
    exactly from the bank without retrieving again."""
    t0 = time.perf_counter()
    pos = {a: i for i, a in enumerate(bank.ids)}
    missing = [a for a in anchor_ids if a not in pos]
    if missing:
        raise ValueError(f"anchors {missing[:3]} are not in this bank")
    idx = [pos[a] for a in anchor_ids]
    sd, r, alpha = merge_adapters(bank, idx, np.asarray(weights, dtype=np.float64), cfg.merge, cfg.svd_rank)
    targets = sorted(set(bank.configs[idx[0]]["target_modules"]))
    return FusedAdapter(list(anchor_ids), list(weights), [], sd, r, alpha, targets, time.perf_counter() - t0)
