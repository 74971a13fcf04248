"""Paired statistics for method comparisons (pure numpy/scipy, no I/O).

Every difference the suite reports between two methods evaluated on the same queries comes with
- an effect size: mean(a - b) and its 95% percentile bootstrap interval, resampling the unit that
  is independent (a query, or with `clusters` a whole cluster such as a LoCoMo conversation whose
  questions share one memory: cluster bootstrap);
- an exact paired test: McNemar's exact test (binomial on the discordant pairs) for per-query
  correctness (0/1), a sign-flip permutation test for real-valued scores (ROUGE, absolute error,
  recall). A sign flip swaps the two methods' scores on one query, which stays in its cluster, so
  the permutation is within clusters;
- Holm's step-down correction across every comparison of one table (`compare` corrects the whole
  family it is given).
The verdict is "better"/"worse" only when the Holm-corrected p < `alpha`; otherwise "n.s." (the test
cannot establish a difference; that is not evidence of equality, so never "tie").
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.stats import binom

ALPHA = 0.05


def _cluster_index(clusters, n: int) -> list[np.ndarray] | None:
    if clusters is None:
        return None
    c = np.asarray(clusters, dtype=object)
    if c.shape != (n,):
        raise ValueError(f"clusters must label each of the {n} pairs, got shape {c.shape}")
    _, inv = np.unique(c.astype(str), return_inverse=True)
    return [np.flatnonzero(inv == k) for k in range(inv.max() + 1)] if n else []


def paired_bootstrap_ci(
    a, b, n_boot: int = 10000, seed: int = 0, level: float = 0.95, clusters=None
) -> tuple[float, float, float]:
    """mean(a - b) and its percentile bootstrap interval, resampling pairs (kept together), or,
    with `clusters`, resampling whole clusters (the mean is over the pairs of the drawn clusters)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and equally long, got {a.shape} and {b.shape}")
    d = a - b
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = _cluster_index(clusters, d.size)
    means = np.empty(n_boot)
    if groups is None:
        for s in range(0, n_boot, 1000):  # chunks bound memory for large query sets
            m = min(1000, n_boot - s)
            means[s : s + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(1)
    else:
        sums = np.array([d[g].sum() for g in groups])
        sizes = np.array([len(g) for g in groups], dtype=np.float64)
        draw = rng.integers(0, len(groups), size=(n_boot, len(groups)))
        means = sums[draw].sum(1) / sizes[draw].sum(1)
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


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values (family-wise error control over all of `pvalues`)."""
    items = sorted(pvalues.items(), key=lambda kv: kv[1])
    m, out, running = len(items), {}, 0.0
    for i, (k, p) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def verdict(diff: float, p_adj: float, higher_is_better: bool = True, alpha: float = ALPHA) -> str:
    if math.isnan(diff) or not p_adj < alpha or diff == 0:
        return "n.s."
    return "better" if (diff > 0) == higher_is_better else "worse"


def compare(
    per_query: dict[str, list[float]],
    reference: str,
    binary: bool,
    higher_is_better: bool = True,
    n_boot: int = 10000,
    seed: int = 0,
    clusters=None,
) -> dict[str, dict]:
    """Every method against `reference` on paired per-query scores, as one family of tests.

    Returns {method: {"diff": mean(method - reference), "ci95": [lo, hi], "p": raw exact p,
    "p_holm": Holm-adjusted over the family, "verdict": better | worse | n.s., "n": pairs,
    "n_clusters": independent units resampled}}."""
    if reference not in per_query:
        return {}
    ref = per_query[reference]
    out = {}
    for m, s in per_query.items():
        if m == reference or len(s) != len(ref):
            continue
        diff, lo, hi = paired_bootstrap_ci(s, ref, n_boot, seed, clusters=clusters)
        p = mcnemar_exact(s, ref) if binary else paired_permutation(s, ref, seed=seed)
        n_cl = len(set(map(str, clusters))) if clusters is not None else len(s)
        out[m] = {"diff": diff, "ci95": [lo, hi], "p": p, "n": len(s), "n_clusters": n_cl}
    adj = holm({m: v["p"] for m, v in out.items()})
    for m, v in out.items():
        v["p_holm"] = adj[m]
        v["verdict"] = verdict(v["diff"], adj[m], higher_is_better)
    return out


def describe(binary: bool, clusters: str | None = None) -> str:
    """The note every comparison table carries."""
    unit = f"clusters ({clusters}) resampled" if clusters else "pairs resampled"
    test = "exact McNemar" if binary else "sign-flip permutation (exact for <= 16 non-zero pairs)"
    return (
        f"ci95 = percentile bootstrap, {unit}; p = {test}; p_holm = Holm-corrected over the table; "
        "verdict better/worse only when p_holm < 0.05, else n.s. (not established, not equality)"
    )
