"""Embedding cache over the shared encoders (`suite.encoders`): a unit text is embedded once per
encoder, whatever the method, run or sweep trial that asks for it."""

from __future__ import annotations

import hashlib
import threading

import numpy as np

from suite.encoders import Encoder, load_encoder  # noqa: F401  (re-exported for memgas users)


class CachedEncoder:
    def __init__(self, encoder: Encoder, batch_size: int = 64):
        self.encoder, self.batch_size = encoder, batch_size
        self.name, self.dim = encoder.name, encoder.dim
        self._cache: dict[str, np.ndarray] = {}
        self.encoded = 0  # texts actually sent to the model
        self._lock = threading.Lock()  # the store encodes from several threads at once

    @staticmethod
    def key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()

    def encode(self, texts: list[str], batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        keys = [self.key(t) for t in texts]
        todo = {k: t for k, t in zip(keys, texts) if k not in self._cache}
        if todo:
            emb = self.encoder.encode(list(todo.values()), batch_size or self.batch_size, progress)
            with self._lock:
                self._cache.update(zip(todo, emb.astype(np.float32)))
                self.encoded += len(todo)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[k] for k in keys])
