"""Profile priors with recency, mta_prior's lambda chosen on given records."""

import numpy as np
import pytest

from mta.calibration import choose_lambda, mta_prior_scores
from mta.data import User
from mta.priors import _prior, by_recency, log_prior


def _user(tags, dates=None):
    prof = [{"id": str(i), "tag": t, "description": "d"} for i, t in enumerate(tags)]
    if dates:
        for it, d in zip(prof, dates):
            it["date"] = d
    return User("u", prof)


def test_prior_breaks_ties_by_the_newest_item():
    u = _user(["comedy", "sci-fi", "comedy", "sci-fi"])  # file order = time order: sci-fi is newest
    assert _prior("LaMP_2", u, "", 1.0) == "sci-fi"
    # dates override file order when every item has one: comedy is now the newest
    u = _user(["comedy", "sci-fi", "comedy", "sci-fi"], ["2020-01-04", "2020-01-01", "2020-01-03", "2020-01-02"])
    assert [it["tag"] for it in by_recency(u.profile)][-1] == "comedy"
    assert _prior("LaMP_2", u, "", 1.0) == "comedy"


def test_recency_weighting_can_overturn_counts():
    u = _user(["comedy", "comedy", "comedy", "sci-fi", "sci-fi"])
    assert _prior("LaMP_2", u, "", 1.0) == "comedy"
    assert _prior("LaMP_2", u, "", 0.3) == "sci-fi"  # 1 + .3 > .09 + .027 + .0081
    assert float(
        _prior(
            "LaMP_3", User("u", [{"id": "1", "text": "t", "score": 1}, {"id": "2", "text": "t", "score": 5}]), "", 0.5
        )
    ) == pytest.approx((1 * 0.5 + 5 * 1) / 1.5, abs=0.005)


def test_log_prior_is_a_smoothed_distribution():
    lp = np.exp(log_prior("LaMP_2", _user(["comedy"] * 3).profile, 1.0))
    assert lp.sum() == pytest.approx(1.0) and lp.argmax() == 2  # "comedy" is label 2


def test_lambda_is_chosen_where_the_prior_helps():
    labels_n = 15
    recs = []
    for i in range(10):  # model scores are uninformative (all equal); the prior points at the gold
        gold = i % labels_n
        lp = np.full(labels_n, -5.0)
        lp[gold] = -0.1
        out = np.zeros(labels_n)
        out[(gold + 1) % labels_n] = 1.0  # the model prefers a wrong label by a margin of 1
        from mta.data import TASKS

        recs.append(
            {
                "queries": [f"q{i}"],
                "golds": [TASKS["LaMP_2"]["labels"][gold]],
                "out": {"mta": [out.tolist()]},
                "cf": {"mta": [np.zeros(labels_n).tolist()]},
                "log_prior": lp.tolist(),
            }
        )
    lam, grid = choose_lambda("LaMP_2", recs, "adapter_content_free", [0.0, 0.1, 1.0])
    assert grid["0.0"] == 0.0 and grid["1.0"] == 1.0 and lam == 1.0
    assert mta_prior_scores(recs, "adapter_content_free", 0.0).argmax(1).tolist() == [(i + 1) % 15 for i in range(10)]
