"""Embedding cache over the shared encoders (`suite.encoders`): a unit text is embedded once per
encoder, whatever the method, run or sweep trial that asks for it."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

from suite.encoders import Encoder, load_encoder  # noqa: F401  (re-exported for memgas users)


class CachedEncoder:
    """Embeddings by text hash, least recently used first out past `max_items` (bounded memory);
    `forget` drops deleted texts."""

    def __init__(self, encoder: Encoder, batch_size: int = 64, max_items: int = 200_000):
        self.encoder, self.batch_size = encoder, batch_size
        self.name, self.dim = encoder.name, encoder.dim
        self.max_items = max_items
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0  # texts actually sent to the model
        self._lock = threading.Lock()  # the store encodes from several threads at once

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    def encode(self, texts: list[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        with self._lock:
            have = {k: self._cache[k] for k in keys if k in self._cache}
            for k in have:
                self._cache.move_to_end(k)
        todo = {k: t for k, t in zip(keys, texts) if k not in have}
        if todo:
            emb = self.encoder.encode(list(todo.values()), batch_size or self.batch_size, progress)
            fresh = dict(zip(todo, emb.astype(np.float32)))
            have.update(fresh)
            with self._lock:
                self._cache.update(fresh)
                self.encoded += len(todo)
                while len(self._cache) > self.max_items:
                    self._cache.popitem(last=False)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([have[k] for k in keys])

    def forget(self, texts) -> None:
        """Drop the embeddings of deleted texts (a text another session shares is simply re-encoded)."""
        with self._lock:
            for t in texts:
                self._cache.pop(self.key(t), None)
