"""Paired statistics for method comparisons (pure numpy/scipy, no I/O).

Every difference the suite reports between two methods evaluated on the same queries comes with
a 95% paired bootstrap interval and a paired test:
- McNemar's exact test (binomial on the discordant pairs) for per-query correctness (0/1);
- a paired sign-flip permutation test for real-valued per-query scores (ROUGE, absolute error).
A difference whose interval contains 0 is a tie, and reports say so (`verdict`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import binom


def paired_bootstrap_ci(a, b, n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a - b) and its percentile bootstrap interval, resampling queries (pairs kept together)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and equally long, got {a.shape} and {b.shape}")
    d = a - b
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for s in range(0, n_boot, 1000):  # chunks bound memory for large query sets
        m = min(1000, n_boot - s)
        means[s : s + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(1)
    lo, hi = np.percentile(means, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def mcnemar_exact(correct_a, correct_b) -> float:
    """Two-sided exact McNemar p-value for paired 0/1 outcomes."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    n01, n10 = int(np.sum(~a & b)), int(np.sum(a & ~b))
    n = n01 + n10
    if n == 0:
        return 1.0

    return float(min(1.0, 2 * binom.cdf(min(n01, n10), n, 0.5)))


def paired_permutation(a, b, n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided sign-flip permutation p-value of mean(a - b); exact when there are <= 16 pairs."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    obs = abs(d.mean())
    if d.size <= 16:
        signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d.size)))
        stats = np.abs((signs * d).mean(1))
        return float(np.mean(stats >= obs - 1e-12))
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(n_perm, d.size))
    stats = np.abs((signs * d).mean(1))
    return float((np.sum(stats >= obs - 1e-12) + 1) / (n_perm + 1))


def compare(
    per_query: dict[str, list[float]],
    reference: str,
    binary: bool,
    higher_is_better: bool = True,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict[str, dict]:
    """Every method against `reference` on paired per-query scores.

    Returns {method: {"diff": mean(method - reference), "ci95": [lo, hi], "p": p, "verdict"}}; the
    verdict is "tie" when the interval contains 0, else "better"/"worse" for the method (taking
    `higher_is_better` into account)."""
    if reference not in per_query:
        return {}
    ref = per_query[reference]
    out = {}
    for m, s in per_query.items():
        if m == reference or len(s) != len(ref):
            continue
        diff, lo, hi = paired_bootstrap_ci(s, ref, n_boot, seed)
        p = mcnemar_exact(s, ref) if binary else paired_permutation(s, ref, seed=seed)
        if math.isnan(diff) or lo <= 0 <= hi:
            verdict = "tie"
        else:
            verdict = "better" if (diff > 0) == higher_is_better else "worse"
        out[m] = {"diff": diff, "ci95": [lo, hi], "p": p, "verdict": verdict, "n": len(s)}
    return out
