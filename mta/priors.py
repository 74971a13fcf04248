"""The model-free profile priors (most frequent label, recency-weighted) and the few-shot view of
a train user."""

from __future__ import annotations

import numpy as np

from mta.data import (
    User,
    query_content,
    render_item,
    task_info,
)
from suite.lexical import BM25Index


def by_recency(profile: list[dict]) -> list[dict]:
    """Profile items oldest first: by `date` when every item has one, else in file order."""
    if profile and all(it.get("date") not in (None, "") for it in profile):
        return [it for _, it in sorted(enumerate(profile), key=lambda p: (str(p[1]["date"]), p[0]))]
    return list(profile)


def label_weights(task: str, profile: list[dict], decay: float) -> dict[str, float]:
    """Recency-weighted label counts of a profile (decay 1 = plain counts)."""
    field_ = task_info(task)["label_field"]
    items = by_recency(profile)
    w: dict[str, float] = {}
    for age, it in enumerate(reversed(items)):
        w[str(it[field_])] = w.get(str(it[field_]), 0.0) + decay**age
    return w


def log_prior(task: str, profile: list[dict], decay: float) -> list[float]:
    """log p_user(label) over the task's labels, recency-weighted, add-one smoothed."""
    labels = task_info(task)["labels"]
    w = label_weights(task, profile, decay)
    tot = sum(w.values()) + len(labels)
    return [float(np.log((w.get(l, 0.0) + 1.0) / tot)) for l in labels]


def _prior(task: str, user: User, query_input: str, decay: float = 1.0) -> str:
    """Model-free profile prior. Classification: the most frequent label, ties broken by the newest
    item (decay 1) or recency-weighted counts (decay < 1); rating: the (recency-weighted) mean
    score; generation: the output of the BM25 top-1 profile item."""
    info = task_info(task)
    if info["kind"] == "classification":
        w = label_weights(task, user.profile, decay)
        newest = {str(it[info["label_field"]]): age for age, it in enumerate(reversed(by_recency(user.profile)))}
        return max(w, key=lambda l: (round(w[l], 9), -newest[l]))
    if info["kind"] == "rating":
        items = by_recency(user.profile)
        ws = np.array([decay**age for age in range(len(items))][::-1])
        return f"{np.average([float(it['score']) for it in items], weights=ws):.2f}"
    hist = [user.profile[i] for i in _bm25_idx(task, user, query_input, 1)]
    return str(hist[0][info["output_field"]]) if hist else ""


def _bm25_idx(task, user, text, k):
    return BM25Index([render_item(task, it) for it in user.profile]).top(query_content(task, text), k)


def few_shot_view(user: User, cap: int) -> User:
    """A train user seen as a few-shot user: only the newest `cap` profile items (0 = all)."""
    if not cap or len(user.profile) <= cap:
        return user
    return User(user.user_id, by_recency(user.profile)[-cap:], user.queries)
