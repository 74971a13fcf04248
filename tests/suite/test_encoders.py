import numpy as np

from memgas.encoders import CachedEncoder
from suite.encoders import HashingEncoder, MeanPoolEncoder, load_encoder, minilm_path


def test_mean_pool_encoder_from_a_local_folder(tmp_path):
    """A hub-style encoder folder (Contriever path): attention-masked mean pooling, no normalisation."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = load_encoder(str(tmp_path))
    assert isinstance(enc, MeanPoolEncoder) and enc.dim == 16
    e = enc.encode(["a short one", "a much longer sentence with several more words in it"], batch_size=2)
    alone = enc.encode(["a short one"])
    np.testing.assert_allclose(e[0], alone[0], rtol=1e-4, atol=1e-5)  # padding does not leak into the mean
    assert not np.allclose(np.linalg.norm(e, axis=1), 1.0)


def test_cache_embeds_each_text_once():
    c = CachedEncoder(HashingEncoder(64))
    a = c.encode(["x y", "z", "x y"])
    b = c.encode(["z", "w"])
    assert c.encoded == 3 and np.array_equal(a[1], b[0]) and np.array_equal(a[0], a[2])
