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
    """Mutation caught: dropping Holm's running maximum (b would get 2 * 0.04 = 0.08 < c's 0.09)."""
    adj = holm({"a": 0.01, "b": 0.04, "c": 0.03, "d": 0.2})
    # sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1, made monotone
    assert adj == pytest.approx({"a": 0.04, "c": 0.09, "b": 0.09, "d": 0.2})
    assert holm({"x": 0.6, "y": 0.7}) == pytest.approx({"x": 1.0, "y": 1.0})
    # a family of two: each p alone would pass at 0.05, corrected only the first does
    res = compare({"ref": [0.0] * 40, "strong": [1.0] * 40, "weak": [0.05] * 3 + [0.0] * 37}, "ref", binary=False)
    assert res["strong"]["verdict"] == "better" and res["strong"]["p_holm"] >= res["strong"]["p"]
    assert res["weak"]["p"] == pytest.approx(0.25) and res["weak"]["verdict"] == "n.s."


def test_cluster_bootstrap_on_two_clusters_with_a_known_answer():
    """Two clusters cannot establish anything. Mutation caught: a per-question test on clustered
    data (20 questions all one way in cluster A would give p ~ 2e-6 and "better")."""
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
    # cluster means [1, 0]: t = 0.5 / (0.707 / sqrt 2) = 1 on 1 df, p = 0.5
    assert res["test"] == "paired t on 2 cluster means (df 1)" and res["p"] == pytest.approx(0.5)
    assert res["verdict"] == "n.s."
    with pytest.raises(ValueError):
        paired_bootstrap_ci(a, b, clusters=["A"])


def _clustered(effects, per=50, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    d = np.concatenate([e + rng.normal(0, noise, per) for e in effects])
    clusters = np.repeat([f"c{i}" for i in range(len(effects))], per)
    return d, list(clusters)


def test_six_clusters_sharing_an_effect_are_not_significant():
    """6 conversations whose questions share a cluster effect: the test works on the 6 cluster means
    and finds nothing. Mutation caught: flipping signs per question inside clusters (the 300
    questions as independent give p ~ 1e-4, "better", on the second family)."""
    d, cl = _clustered([0.3, -0.3, 0.2, -0.2, 0.25, -0.25])
    ref = np.zeros_like(d)
    res = compare({"ref": ref, "m": ref + d}, "ref", binary=False, clusters=cl)["m"]
    assert res["verdict"] == "n.s." and res["n_clusters"] == 6
    # most clusters favour m, but the clusters disagree: 6 units cannot establish it
    d, cl = _clustered([0.6, 0.5, 0.4, -0.3, 0.3, -0.2])
    fam = {"ref": ref, "m": ref + d, **{f"o{i}": ref + 0.0 for i in range(17)}}  # 18 comparisons, as LoCoMo's table
    res = compare(fam, "ref", binary=False, clusters=cl)["m"]
    assert res["test"] == "paired t on 6 cluster means (df 5)"
    assert res["p"] > 0.1 and res["verdict"] == "n.s."
    assert paired_permutation(ref + d, ref) < 0.001  # what the per-question test would have claimed


def test_thirty_consistent_clusters_are_significant_by_the_cluster_sign_flip():
    """30 clusters all shifted one way: 2 / 2^30 passes Holm's strictest threshold, so the cluster
    sign-flip decides (Monte-Carlo above 20 clusters) and finds the effect. Mutation caught: using the t-test (or the
    per-question test) regardless of the number of clusters changes `test`."""
    d, cl = _clustered(list(np.linspace(0.05, 0.3, 30)), per=5)
    ref = np.zeros_like(d)
    fam = {"ref": ref, "m": ref + d, **{f"o{i}": ref + 0.0 for i in range(17)}}
    res = compare(fam, "ref", binary=False, clusters=cl)["m"]
    assert res["test"] == "sign-flip over 30 cluster means (200,000 random flips)"
    assert res["p"] == pytest.approx(1 / 200_001) and res["verdict"] == "better"
    res = compare({k: v[:60] for k, v in fam.items()}, "ref", binary=False, clusters=cl[:60])["m"]
    assert res["test"] == "exact sign-flip over 12 cluster means" and res["p"] == pytest.approx(2 / 2**12)


def test_the_per_question_tests_are_never_called_when_questions_share_clusters(monkeypatch):
    """Mutation caught: any path of `compare` that reaches McNemar or the per-pair permutation for
    clustered questions."""
    import suite.stats as st

    def refuse(*a, **k):
        raise AssertionError("a per-question test was used for questions that share a cluster")

    monkeypatch.setattr(st, "paired_permutation", refuse)
    monkeypatch.setattr(st, "mcnemar_exact", refuse)
    d, cl = _clustered([0.1] * 12, per=3)
    for binary in (False, True):
        res = st.compare({"ref": np.zeros_like(d), "m": d}, "ref", binary=binary, clusters=cl)["m"]
        assert "cluster means" in res["test"]
    # clusters of one pair each (a LaMP user with one query) are pairs: the exact pair tests apply
    monkeypatch.undo()
    res = compare({"ref": [0, 0, 0, 0], "m": [1, 1, 1, 1]}, "ref", binary=True, clusters=["a", "b", "c", "d"])["m"]
    assert res["test"] == "exact McNemar over 4 pairs" and res["p"] == pytest.approx(2 * 0.5**4)


def test_cluster_sign_flip_is_exact_on_known_values():
    from suite.stats import cluster_signflip, cluster_test, cluster_ttest

    assert cluster_signflip([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)
    assert cluster_signflip([1.0, -1.0]) == 1.0 and cluster_signflip([0.0, 0.0]) == 1.0
    # 6 clusters can reach 2/64 = 0.031: enough for a family of 1, not for 18 (0.05 / 18 = 0.0028)
    assert cluster_test(6, 1) == "signflip" and cluster_test(6, 18) == "t" and cluster_test(10, 18) == "signflip"
    assert cluster_ttest([0.0, 0.0, 0.0]) == 1.0 and cluster_ttest([0.2, 0.2, 0.2]) == pytest.approx(2 / 8)
