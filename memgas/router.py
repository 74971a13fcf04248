"""Entropy router (SPEC §2): granularity g gets p_g = softmax(q·E_g / T) over its nodes and entropy
H_g = -Σ p log p; a sharper distribution (lower entropy) earns a larger weight.

- `reference`: w_g = (1 - H_g) / Σ_h (1 - H_h), as in the MemGAS code. Once H > 1 (the usual case
  with more than e nodes) the numerators are negative and the weights near-uniform or negative.
- `corrected` (default): w_g = max(1e-6, 1 - H_g / log N_g), renormalised: entropy relative to its
  maximum, so weights stay in [0, 1] whatever the number of nodes.
- `uniform`: 1 / G (ablation).
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def router_weights(
    scores: dict[str, np.ndarray], temperature: float = 0.2, formula: str = "corrected"
) -> dict[str, float]:
    names = [g for g in scores if len(scores[g])]
    if not names:
        return {}
    if formula == "uniform":
        return {g: 1.0 / len(names) for g in names}
    H = {g: entropy(softmax(scores[g], temperature)) for g in names}
    if formula == "reference":
        num = {g: 1.0 - H[g] for g in names}
        tot = sum(num.values())
        return {g: num[g] / tot if abs(tot) > 1e-12 else 1.0 / len(names) for g in names}
    if formula == "corrected":
        num = {g: max(1e-6, 1.0 - (H[g] / np.log(len(scores[g])) if len(scores[g]) > 1 else 0.0)) for g in names}
        tot = sum(num.values())
        return {g: num[g] / tot for g in names}
    raise ValueError(f"unknown router formula {formula!r}: reference | corrected | uniform")
