"""Paired statistics on constructed examples with known answers."""

import numpy as np
import pytest

from suite.stats import compare, mcnemar_exact, paired_bootstrap_ci, paired_permutation


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


def test_compare_verdicts_follow_the_interval():
    ref = [1, 0] * 50
    better = [1] * 100  # +0.5 on every other query: clearly better
    same = [0, 1] * 50  # same mean, different queries: a tie
    res = compare({"mta": ref, "better": better, "same": same}, "mta", binary=True)
    assert res["better"]["verdict"] == "better" and res["better"]["diff"] == pytest.approx(0.5)
    assert res["same"]["verdict"] == "tie" and res["same"]["ci95"][0] < 0 < res["same"]["ci95"][1]
    # lower-is-better metrics (absolute error): a smaller error is "better"
    err = compare({"mta": [1.0] * 30, "low": [0.0] * 30}, "mta", binary=False, higher_is_better=False)
    assert err["low"]["verdict"] == "better"
