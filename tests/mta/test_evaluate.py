import math

import numpy as np
import pytest

from mta import evaluate as E
from mta.data import TASKS


def test_classification_invalid_label_counts_as_wrong():
    labels = TASKS["LaMP_2"]["labels"]
    preds = ["comedy", "Action.", "a western movie", "romance"]
    golds = ["comedy", "action", "comedy", "comedy"]
    m = E.classification_metrics(preds, golds, labels)
    assert m["accuracy"] == pytest.approx(0.5)
    # per-label F1: comedy: tp=1, fp=0, fn=2 → 0.5; action: 1.0; romance: 0 (fp); others absent → 0
    assert m["f1"] == pytest.approx((0.5 + 1.0) / 15)


def test_parse_label_prefers_longest_match():
    labels = TASKS["LaMP_2"]["labels"]
    assert labels[E.parse_label("It is a dark comedy", labels)] == "dark comedy"
    assert E.parse_label("none of these", labels) == -1


def test_rating_unparsable_counts_as_farthest():
    m = E.rating_metrics(["5", "three", "2.5", "no idea"], ["4", "2", "2", "5"])
    errs = [1, 3, 0.5, 4]  # "three" for gold 2 → 5 (farther than 1); "no idea" for 5 → 1
    assert m["mae"] == pytest.approx(np.mean(errs))
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean(np.square(errs))))


def test_rouge_with_stemming():
    m = E.rouge_metrics(["the cats running"], ["the cat runs fast"])
    # stemmed unigrams: the, cat, run vs the, cat, run, fast → P=1, R=3/4
    assert m["rouge1"] == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert E.score_task("LaMP_4", ["a b"], ["a b"]) == {"rouge1": 1.0, "rougeL": 1.0}


def test_cached_label_scoring_matches_naive(tiny):
    model, codec = tiny
    labels = TASKS["LaMP_2"]["labels"]
    a = E.label_logprobs(model, codec, "Which tag? description: space robots", labels)
    b = E.label_logprobs_naive(model, codec, "Which tag? description: space robots", labels)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batch_calibration_removes_label_prior():
    s = np.array([[0.0, 5.0], [2.0, 5.0], [4.0, 5.5]])  # label 1 always wins uncalibrated
    assert list(s.argmax(1)) == [1, 1, 1]
    # label means (2, 5.1667) subtracted: rows become (-2, -.17), (0, -.17), (2, .33)
    assert list(E.calibrate(s, "batch").argmax(1)) == [1, 0, 0]
    np.testing.assert_array_equal(E.calibrate(s, "none"), s)
    with pytest.raises(ValueError):
        E.calibrate(s, "weird")


def test_generate_is_greedy_and_deterministic(tiny):
    model, codec = tiny
    a = E.generate(model, codec, "hello", max_new_tokens=6)
    assert a == E.generate(model, codec, "hello", max_new_tokens=6)


def test_adapter_content_free_calibration_uses_only_the_query_own_twin():
    s = np.array([[0.0, 5.0], [2.0, 5.0]])
    cf = np.array([[0.0, 6.0], [0.0, 0.0]])
    np.testing.assert_array_equal(E.calibrate(s, "adapter_content_free", cf), s - cf)
    # row 0's calibrated scores do not change when other rows change (no test inputs shared)
    np.testing.assert_array_equal(E.calibrate(s[:1], "adapter_content_free", cf[:1]), (s - cf)[:1])
    assert not np.array_equal(E.calibrate(s[:1], "batch"), E.calibrate(s, "batch")[:1])
    with pytest.raises(ValueError):
        E.calibrate(s, "adapter_content_free")
    with pytest.raises(ValueError):
        E.calibrate(s, "base_content_free")
    cfi = E.content_free_input("LaMP_2")
    assert "description: N/A" in cfi and "sci-fi" in cfi


def test_per_query_scores_match_the_aggregate_metric():
    preds, golds = ["comedy", "sci-fi", "nonsense"], ["comedy", "comedy", "comedy"]
    s, binary, higher = E.per_query_scores("LaMP_2", preds, golds)
    assert s == [1.0, 0.0, 0.0] and binary and higher
    s, binary, higher = E.per_query_scores("LaMP_3", ["5", "x", "2"], ["4", "1", "2"])
    assert s == [1.0, 4.0, 0.0] and not binary and not higher
    assert np.mean(s) == E.score_task("LaMP_3", ["5", "x", "2"], ["4", "1", "2"])["mae"]


def test_primary_calibration_keeps_the_shift_an_adapter_brings():
    """A method whose adapter shifts every label score towards the user's label: the per-adapter
    content-free twin carries the same shift and cancels it; the primary calibration (the base
    model's content-free scores, one vector for every method) keeps it."""
    from mta.calibration import predictions
    from mta.data import TASKS

    labels = TASKS["LaMP_2"]["labels"]
    base_cf = np.linspace(0.0, 1.4, 15)  # the fixed prompt's label bias
    recs = []
    for i in range(6):
        gold = i % 15
        base = base_cf + np.where(np.arange(15) == (gold + 3) % 15, 2.0, 0.0)  # base prefers a wrong label
        shift = np.where(np.arange(15) == gold, 5.0, 0.0)  # what the adapter learnt from the user
        recs.append(
            {
                "queries": [f"q{i}"],
                "golds": [labels[gold]],
                "out": {"base": [base.tolist()], "oppu": [(base + shift).tolist()]},
                "cf": {"base": [base_cf.tolist()], "oppu": [(base_cf + shift).tolist()]},
                "cf_base": base_cf.tolist(),
            }
        )
    golds = [r["golds"][0] for r in recs]
    primary = predictions("LaMP_2", recs, ["base", "oppu"], True, "base_content_free")
    assert primary["oppu"] == golds  # the adapter's evidence survives
    assert all(p != g for p, g in zip(primary["base"], golds))
    twin = predictions("LaMP_2", recs, ["base", "oppu"], True, "adapter_content_free")
    assert twin["oppu"] == twin["base"] and all(p != g for p, g in zip(twin["oppu"], golds))  # cancelled
