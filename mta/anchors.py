"""Stage 1a — anchor selection (SPEC §1): mean-pooled item embeddings per user, KMeans over the
candidate users, and per cluster the member with the longest profile (kept if > min_items)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans

from mta.data import User, render_item
from suite.config import opt


@dataclass
class AnchorConfig:
    n_clusters: int = opt(50, "KMeans clusters over candidate users (reference 50)", lo=1)
    min_items: int = opt(10, "an anchor needs more than this many profile items")
    seed: int = opt(0, "KMeans random_state")
    max_items_embedded: int = opt(200, "cap on items embedded per user (newest kept)")


def user_embeddings(users: list[User], task: str, encoder, max_items: int = 200, progress: bool = False) -> np.ndarray:
    """One vector per user: the mean of its rendered items' embeddings, L2-normalised."""
    texts, owner = [], []
    for i, u in enumerate(users):
        for it in u.profile[-max_items:]:
            texts.append(render_item(task, it))
            owner.append(i)
    emb = encoder.encode(texts, progress=progress)
    out = np.zeros((len(users), emb.shape[1]), dtype=np.float32)
    np.add.at(out, np.asarray(owner), emb)
    out /= np.bincount(owner, minlength=len(users))[:, None].clip(min=1)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def select_anchors(users: list[User], emb: np.ndarray, cfg: AnchorConfig) -> list[int]:
    """Indices of the anchor users, ordered by cluster id. Deterministic for a seed."""
    eligible = [i for i, u in enumerate(users) if len(u.profile) > cfg.min_items]
    if not eligible:
        raise ValueError(f"no candidate user has more than {cfg.min_items} profile items")
    k = min(cfg.n_clusters, len(users))
    labels = KMeans(n_clusters=k, random_state=cfg.seed, n_init=10).fit_predict(emb)
    anchors = []
    for c in range(k):
        members = [i for i in np.flatnonzero(labels == c) if len(users[i].profile) > cfg.min_items]
        if members:  # longest profile; ties → the earliest user
            anchors.append(max(members, key=lambda i: (len(users[i].profile), -i)))
    return anchors
