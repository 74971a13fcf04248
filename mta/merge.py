"""Pure tensor math for LoRA fusion: weightings and merge methods in two small registries.
No I/O, no models: inputs are tensors and floats, outputs are tensors.

A LoRA module contributes ΔW_i = s_i · B_i A_i (A_i: r×in, B_i: out×r, s_i = alpha_i / r_i).
The target of fusion is ΔW = Σ_i w_i s_i B_i A_i.

Merges (each returns factors (A, B) and a scale s with s · B A the merged update):
- `cat`  exact: A = [√c_i A_i] stacked by rows, B = [√c_i B_i] by columns, c_i = w_i s_i, rank Σ r_i.
         Concatenation of low-rank factors; cf. "LoRA Soups" (Prabhakar et al., 2024) and peft's
         `add_weighted_adapter(combination_type="cat")`.
- `svd`  the exact sum re-factored to rank `rank` by a truncated SVD (Eckart–Young optimal), computed
         through QR of the concatenated factors so the full out×in matrix is never formed.
- `ref_avg` the MTA reference code (arXiv 2511.20072, repo): A = Σ w_i A_i, B = Σ w_i B_i. NOT the
         weighted sum: B A = Σ_ij w_i w_j B_i A_j has cross terms (peft issue #3004). Ablation only.

Weightings map similarities (sorted, most similar first) to weights summing to 1:
- `similarity` w ∝ max(s, 0); `softmax` w = softmax(s / T); `uniform`;
- `reference_inverted` the MTA reference for k = 2: a = s1/(s1+s2) and the MOST similar anchor
  gets 1 - a, i.e. the smaller weight (proportional weights assigned in reverse order for k > 2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

WEIGHTINGS: dict[str, Callable[..., np.ndarray]] = {}
MERGES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, float]]] = {}


def register(registry: dict, name: str):
    def deco(fn):
        registry[name] = fn
        return fn

    return deco


def _proportional(s: np.ndarray) -> np.ndarray:
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, None)
    return np.full(len(s), 1.0 / len(s)) if s.sum() <= 0 else s / s.sum()


@register(WEIGHTINGS, "similarity")
def similarity_weights(sims: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return _proportional(sims)


@register(WEIGHTINGS, "softmax")
def softmax_weights(sims: np.ndarray, temperature: float = 0.1) -> np.ndarray:
    if temperature <= 0:
        raise ValueError("softmax temperature must be > 0")
    z = np.asarray(sims, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


@register(WEIGHTINGS, "uniform")
def uniform_weights(sims: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.full(len(sims), 1.0 / len(sims))


@register(WEIGHTINGS, "reference_inverted")
def reference_inverted_weights(sims: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    order = np.argsort(-np.asarray(sims), kind="stable")
    p = _proportional(np.asarray(sims)[order])
    w = np.empty_like(p)
    w[order] = p[::-1]
    return w


def weights(name: str, sims: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; known: {sorted(WEIGHTINGS)}")
    if len(sims) == 0:
        raise ValueError("no anchors to weight")
    return WEIGHTINGS[name](np.asarray(sims, dtype=np.float64), temperature)


def _cat_factors(As, Bs, coefs):
    rows, cols = [], []
    for A, B, c in zip(As, Bs, coefs):
        root = float(np.sqrt(abs(c)))
        rows.append(A * (root * (1.0 if c >= 0 else -1.0)))
        cols.append(B * root)
    return torch.cat(rows, 0), torch.cat(cols, 1)


@register(MERGES, "cat")
def merge_cat(As, Bs, scales, w, rank: int = 0):
    A, B = _cat_factors(As, Bs, [wi * si for wi, si in zip(w, scales)])
    return A, B, 1.0


@register(MERGES, "svd")
def merge_svd(As, Bs, scales, w, rank: int = 0):
    A_cat, B_cat = _cat_factors(As, Bs, [wi * si for wi, si in zip(w, scales)])
    dtype = A_cat.dtype
    A_cat, B_cat = A_cat.double(), B_cat.double()
    rank = rank or As[0].shape[0]
    qb, rb = torch.linalg.qr(B_cat)  # B = Qb Rb
    qa, ra = torch.linalg.qr(A_cat.T)  # Aᵀ = Qa Ra  ⇒  B A = Qb (Rb Raᵀ) Qaᵀ
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    rank = min(rank, s.shape[0])
    root = s[:rank].sqrt()
    B = (qb @ u[:, :rank]) * root
    A = root[:, None] * (vh[:rank] @ qa.T)
    return A.to(dtype), B.to(dtype), 1.0


@register(MERGES, "ref_avg")
def merge_ref_avg(As, Bs, scales, w, rank: int = 0):
    if len({A.shape for A in As}) != 1 or len({round(s, 12) for s in scales}) != 1:
        raise ValueError("ref_avg needs anchors of one rank and one scale (as in the reference)")
    A = sum(wi * Ai for wi, Ai in zip(w, As))
    B = sum(wi * Bi for wi, Bi in zip(w, Bs))
    return A, B, float(scales[0])


def merge_module(method: str, As, Bs, scales, w, rank: int = 0):
    if method not in MERGES:
        raise ValueError(f"unknown merge {method!r}; known: {sorted(MERGES)}")
    return MERGES[method](As, Bs, scales, w, rank)


def delta(A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """The dense update s · B A (for tests and the in-RAM merge)."""
    return scale * (B.double() @ A.double())
