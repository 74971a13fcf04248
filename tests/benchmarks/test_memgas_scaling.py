"""`benchmarks/memgas_scaling.py --preencode`: the saved vectors resume a killed run exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from suite.encoders import HashingEncoder

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "memgas_scaling.py"
_spec = importlib.util.spec_from_file_location("memgas_scaling", _PATH)
scaling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(scaling)


class _Refuse:
    name, dim = "hashing", 64

    def encode(self, texts, batch_size=64, progress=False):
        raise AssertionError(f"asked to encode {len(texts)} texts the table holds")


def test_preencode_resumes_from_saved_chunks(tmp_path):
    enc = HashingEncoder(64)
    texts = [f"memory {i} " * (i % 5 + 1) for i in range(50)]
    first = scaling._Primed(enc)
    r = scaling._preencode(first, texts, tmp_path, chunk=16)
    assert r["texts"] == 50 and len(list(tmp_path.glob("chunk_*.npz"))) == 4
    np.testing.assert_allclose(first.encode(texts), enc.encode(texts), atol=1e-6)

    resumed = scaling._Primed(_Refuse())  # everything comes from disk: the model is never called
    assert scaling._preencode(resumed, texts, tmp_path, chunk=16)["texts"] == 50
    np.testing.assert_allclose(resumed.encode(texts), enc.encode(texts), atol=1e-6)
    with pytest.raises(AssertionError):
        resumed.encode(["a text nobody encoded"])


def test_a_lost_chunk_is_encoded_again_without_overwriting_another(tmp_path):
    enc = HashingEncoder(64)
    texts = [f"turn {i} " * (i % 3 + 1) for i in range(40)]
    scaling._preencode(scaling._Primed(enc), texts, tmp_path, chunk=10)
    (tmp_path / "chunk_00001.npz").unlink()  # a middle chunk lost
    before = {f.name: f.read_bytes() for f in tmp_path.glob("chunk_*.npz")}
    again = scaling._Primed(enc)
    scaling._preencode(again, texts, tmp_path, chunk=10)
    after = {f.name: f.read_bytes() for f in tmp_path.glob("chunk_*.npz")}
    assert all(after[k] == v for k, v in before.items())  # nothing already saved is rewritten
    assert len(after) == 4
    np.testing.assert_allclose(again.encode(texts), enc.encode(texts), atol=1e-6)
