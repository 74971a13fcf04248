"""BM25 over a small corpus (bm25s, sparse scores), shared by MTA's history retrieval and
MemGAS's lexical baselines and router granularity."""

from __future__ import annotations

import numpy as np


def _tok(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class BM25Index:
    def __init__(self, texts: list[str]):
        import bm25s

        self.n = len(texts)
        toks = _tok(texts)
        # bm25s cannot index a corpus of only-stopword docs; a placeholder token keeps shapes.
        toks = [t if t else ["\u2205"] for t in toks]
        self.r = bm25s.BM25()
        self.r.index(toks, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        q = _tok([query])[0]
        if not q or self.n == 0:
            return np.zeros(self.n, dtype=np.float32)
        return np.asarray(self.r.get_scores(q), dtype=np.float32)

    def top(self, query: str, k: int, exclude: set[int] | None = None) -> list[int]:
        s = self.scores(query)
        order = np.argsort(-s, kind="stable")
        out = [int(i) for i in order if not exclude or int(i) not in exclude]
        return out[:k]
