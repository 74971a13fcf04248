"""Paired statistics on constructed examples with known answers."""

import numpy as np
import pytest

from suite.stats import compare, holm, mcnemar_exact, paired_bootstrap_ci, paired_permutation


def test_mcnemar_exact_known_values():
    a = [1] * 6 + [0] * 4
    b = [0] * 6 + [0] * 4  # 6 discordant pairs, all favouring a: p = 2 * 0.5**6
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(a, a) == 1.0
    # 3 vs 3 discordant: perfectly balanced, p = 1
    assert mcnemar_exact([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]) == 1.0


def test_permutation_exact_small_sample():
    # all 4 differences equal +1: only the all-plus and all-minus sign vectors reach |mean| = 1 → 2/16
    assert paired_permutation([1, 1, 1, 1], [0, 0, 0, 0]) == pytest.approx(2 / 16)
    assert paired_permutation([0.5, 0.2], [0.5, 0.2]) == 1.0
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, 200)
    assert paired_permutation(a, a - 0.5) < 0.001  # large sample: Monte-Carlo branch


def test_bootstrap_interval_contains_the_truth_and_collapses_on_constant_differences():
    d, lo, hi = paired_bootstrap_ci([2.0] * 10, [1.0] * 10)
    assert d == lo == hi == 1.0
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 400)
    b = a - 0.3 + rng.normal(0, 0.2, 400)
    d, lo, hi = paired_bootstrap_ci(a, b)
    assert lo < 0.3 < hi and hi - lo < 0.1
    with pytest.raises(ValueError):
        paired_bootstrap_ci([1, 2], [1])


def test_compare_verdicts_follow_the_corrected_exact_test():
    ref = [1, 0] * 50
    better = [1] * 100  # +0.5 on every other query: 50 discordant pairs, all one way
    same = [0, 1] * 50  # same mean, different queries: the test cannot tell them apart
    res = compare({"mta": ref, "better": better, "same": same}, "mta", binary=True)
    assert res["better"]["verdict"] == "better" and res["better"]["diff"] == pytest.approx(0.5)
    assert res["same"]["verdict"] == "n.s." and res["same"]["ci95"][0] < 0 < res["same"]["ci95"][1]
    # lower-is-better metrics (absolute error): a smaller error is "better"
    err = compare({"mta": [1.0] * 30, "low": [0.0] * 30}, "mta", binary=False, higher_is_better=False)
    assert err["low"]["verdict"] == "better"


def test_the_bootstrap_alone_never_decides():
    # 4 discordant users, all one way: the bootstrap interval excludes 0, McNemar p = 0.125 → n.s.
    ref = [0] * 4 + [1] * 20
    m = [1] * 4 + [1] * 20
    res = compare({"mta": ref, "m": m}, "mta", binary=True)["m"]
    assert res["ci95"][0] > 0 and res["p"] == pytest.approx(0.125) and res["verdict"] == "n.s."


def test_holm_on_known_pvalues():
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2})
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, made monotone
    assert adj == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.2})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})
    # a family of two: each p alone would pass at 0.05, corrected only the first does
    res = compare({"ref": [0.0] * 40, "strong": [1.0] * 40, "weak": [0.05] * 3 + [0.0] * 37}, "ref", binary=False)
    assert res["strong"]["verdict"] == "better" and res["strong"]["p_holm"] >= res["strong"]["p"]
    assert res["weak"]["p"] == pytest.approx(0.25) and res["weak"]["verdict"] == "n.s."


def test_cluster_bootstrap_on_two_clusters_with_a_known_answer():
    # cluster A: every difference 1, cluster B: every difference 0. Resampling the two clusters gives
    # AA (1.0), AB/BA (0.5), BB (0.0) with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1];
    # resampling the 20 questions as independent would claim a tight interval around 0.5.
    a = [1.0] * 10 + [0.0] * 10
    b = [0.0] * 20
    clusters = ["A"] * 10 + ["B"] * 10
    d, lo, hi = paired_bootstrap_ci(a, b, n_boot=4000, clusters=clusters)
    assert d == 0.5 and lo == 0.0 and hi == 1.0
    _, lo_q, hi_q = paired_bootstrap_ci(a, b, n_boot=4000)
    assert 0.2 < lo_q and hi_q < 0.8
    res = compare({"ref": b, "m": a}, "ref", binary=False, clusters=clusters)["m"]
    assert res["n_clusters"] == 2 and res["ci95"] == [0.0, 1.0]
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, b, clusters=["A"])
