"""Paired statistics for method comparisons (pure numpy/scipy, no I/O).

Every difference the suite reports between two methods evaluated on the same queries comes with
- an effect size: mean(a - b) and its 95% percentile bootstrap interval, resampling the unit that
  is independent (a query, or with `clusters` a whole cluster such as a LoCoMo conversation whose
  questions share one memory: cluster bootstrap);
- a paired test at the SAME independent unit as the interval. Without clusters (or when every
  cluster holds one pair): McNemar's exact test for per-query correctness (0/1), an exact sign-flip
  permutation test for real-valued scores (ROUGE, absolute error, recall). With clusters that hold
  several pairs (a LoCoMo conversation's questions share one memory), the test works on the
  per-cluster mean differences: an exact cluster sign-flip when there are enough clusters for its
  smallest attainable p (2 / 2^C) to pass the strictest Holm threshold of the family
  (alpha / family size), otherwise a paired t-test on the cluster means (df = C - 1). A
  per-question test is never used for questions that share a cluster;
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
from scipy.stats import t as student_t

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


def cluster_means(d, clusters) -> np.ndarray:
    """Per-cluster mean of the paired differences `d` (one value per independent unit)."""
    d = np.asarray(d, dtype=np.float64)
    return np.array([d[g].mean() for g in _cluster_index(clusters, d.size)])


def cluster_signflip(dc) -> float:
    """Two-sided sign-flip p-value of mean(dc) over cluster means: exact (every sign vector) up to
    20 non-zero clusters, else 200,000 random flips (Monte-Carlo, +1 correction)."""
    dc = np.asarray(dc, dtype=np.float64)
    dc = dc[dc != 0]
    if dc.size == 0:
        return 1.0
    obs = abs(dc.mean())
    if dc.size <= 20:
        signs = 1.0 - 2.0 * ((np.arange(2**dc.size)[:, None] >> np.arange(dc.size)) & 1)
        return float(np.mean(np.abs(signs @ dc) / dc.size >= obs - 1e-12))
    rng = np.random.default_rng(0)
    signs = rng.choice([-1.0, 1.0], size=(200_000, dc.size))
    return float((np.sum(np.abs(signs @ dc) / dc.size >= obs - 1e-12) + 1) / 200_001)


def cluster_ttest(dc) -> float:
    """Two-sided paired t-test of mean(dc) = 0 on cluster means (df = clusters - 1). Zero spread:
    p = 1 when every mean is 0, else the exact sign-flip p (a t of infinity claims too much)."""
    dc = np.asarray(dc, dtype=np.float64)
    if dc.size < 2:
        return 1.0
    sd = dc.std(ddof=1)
    if sd <= 1e-12 * max(1.0, abs(dc.mean())):  # equal means (up to rounding)
        return 1.0 if dc.mean() == 0 else cluster_signflip(dc)
    t = dc.mean() / (sd / math.sqrt(dc.size))
    return float(min(1.0, 2 * student_t.sf(abs(t), dc.size - 1)))


def min_signflip_p(n_clusters: int) -> float:
    """The smallest p an exact two-sided sign-flip over `n_clusters` can give."""
    return 2.0 / 2**n_clusters if n_clusters else 1.0


def cluster_test(n_clusters: int, family: int, alpha: float = ALPHA) -> str:
    """Which test decides at the cluster level: `signflip` when its smallest attainable p can pass
    Holm's strictest threshold (alpha / family), else `t`."""
    return "signflip" if min_signflip_p(n_clusters) < alpha / max(1, family) else "t"


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

    Returns {method: {"diff": mean(method - reference), "ci95": [lo, hi], "p": raw p of the
    deciding test, "p_holm": Holm-adjusted over the family, "verdict": better | worse | n.s.,
    "n": pairs, "n_clusters": independent units, "test": the test that decided}}. With clusters
    holding several pairs, interval and test both work on clusters (see the module docstring)."""
    if reference not in per_query:
        return {}
    ref = per_query[reference]
    others = [m for m, s in per_query.items() if m != reference and len(s) == len(ref)]
    groups = _cluster_index(clusters, len(ref))
    shared = groups is not None and any(len(g) > 1 for g in groups)  # some questions share a unit
    kind = cluster_test(len(groups), len(others)) if shared else None
    out = {}
    for m in others:
        s = per_query[m]
        diff, lo, hi = paired_bootstrap_ci(s, ref, n_boot, seed, clusters=clusters)
        n_cl = len(groups) if groups is not None else len(s)
        if shared:
            dc = cluster_means(np.asarray(s, dtype=np.float64) - np.asarray(ref, dtype=np.float64), clusters)
            p = cluster_signflip(dc) if kind == "signflip" else cluster_ttest(dc)
            if kind == "t":
                test = f"paired t on {n_cl} cluster means (df {n_cl - 1})"
            elif n_cl <= 20:
                test = f"exact sign-flip over {n_cl} cluster means"
            else:
                test = f"sign-flip over {n_cl} cluster means (200,000 random flips)"
        else:
            p = mcnemar_exact(s, ref) if binary else paired_permutation(s, ref, seed=seed)
            test = f"exact McNemar over {len(s)} pairs" if binary else f"sign-flip permutation over {len(s)} pairs"
        out[m] = {"diff": diff, "ci95": [lo, hi], "p": p, "n": len(s), "n_clusters": n_cl, "test": test}
    adj = holm({m: v["p"] for m, v in out.items()})
    for m, v in out.items():
        v["p_holm"] = adj[m]
        v["verdict"] = verdict(v["diff"], adj[m], higher_is_better)
    return out


def deciding_test(table: dict[str, dict]) -> str:
    """The test named in a comparison table's note ("" for an empty table)."""
    tests = sorted({v.get("test", "") for v in table.values()})
    return "; ".join(t for t in tests if t)


def describe(binary: bool, clusters: str | None = None, test: str = "") -> str:
    """The note every comparison table carries; `test`: what `deciding_test` says of the table."""
    unit = f"clusters ({clusters}) resampled" if clusters else "pairs resampled"
    default = "exact McNemar" if binary else "sign-flip permutation (exact for <= 16 non-zero pairs)"
    return (
        f"ci95 = percentile bootstrap, {unit}; p = {test or default}; p_holm = Holm-corrected over the table; "
        "verdict better/worse only when p_holm < 0.05, else n.s. (not established, not equality)"
    )
